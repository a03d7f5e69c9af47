"""A folder of pictures read as a video (its files in natural order, at a nominal rate), and a
video's frames written as a folder of pictures.

Pictures of a folder are read one by one with OpenCV, each at its own size; they carry their
file name, which the output names its pictures after.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from streamderain.errors import InputError, OutputError
from streamderain.frames import Frame, VideoInfo, eight_bits
from streamderain.targets import VIDEO_SUFFIXES
from training.data import IMAGE_SUFFIXES, list_images

log = logging.getLogger(__name__)

IMAGE_FOLDER_RATE = Fraction(25)
# picture formats that hold 16 bits a channel, and those that hold transparency
DEEP_PICTURES = (".png", ".tif", ".tiff")
ALPHA_PICTURES = (".png", ".tif", ".tiff", ".webp")


def folder_pictures(folder: Path) -> list[Path]:
    """The pictures of ``folder``, in natural order: hidden files (a Mac's ``._001.jpg``) are
    not pictures."""
    return [p for p in list_images(folder) if not p.name.startswith(".")]


class PictureFolder:
    """The pictures of ``folder`` (:func:`folder_pictures`)."""

    def __init__(self, folder: Path, name: str) -> None:
        self.name = name
        self.files = folder_pictures(folder)
        videos = [p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES]
        if not self.files:
            if videos:
                raise InputError(
                    f"{name}: a folder of videos; derain them with: streamderain batch "
                    f"{name} -o OUT_DIR"
                )
            known = ", ".join(sorted(IMAGE_SUFFIXES))
            raise InputError(f"{name}: folder holds no images ({known})")
        if videos:
            log.warning(
                "%s: videos beside its pictures left out (%d; streamderain batch %s -o OUT_DIR "
                "derains them)",
                name,
                len(videos),
                name,
            )
        # each picture's name in the output: its stem, but "a.jpg" beside "a.png" is "a.jpg"
        # (an output "a.png" is the input "a.png"'s)
        stems = Counter(p.stem for p in self.files)
        self.names = {
            p: p.stem if stems[p.stem] == 1 or p.suffix.lower() == ".png" else p.name
            for p in self.files
        }
        first = None
        while self.files and (first := _readable(self.files[0])) is None:
            self.files.pop(0)
        if first is None:
            raise InputError(f"{name}: no picture in the folder could be read")
        self.info = VideoInfo(
            width=first.shape[1],
            height=first.shape[0],
            time_base=1 / IMAGE_FOLDER_RATE,
            rate=IMAGE_FOLDER_RATE,
            frames=len(self.files),
            # pictures are sRGB: a video made of them says BT.709 (limited range, HD's matrix,
            # sRGB's primaries) rather than nothing, which players of HD took for BT.709 and
            # showed red (200, 0, 0), written in BT.601, as (217, 12, 0)
            color_range=1,
            colorspace=1,
            color_primaries=1,
            color_trc=1,
            bits=16 if first.dtype == np.uint16 else 8,
        )

    @property
    def duration(self) -> float:
        return float(len(self.files) / IMAGE_FOLDER_RATE)

    def describe(self) -> str:
        return f"{self.name}: {len(self.files)} images, {self.info.width}x{self.info.height}"

    def frames(self, in_range: Callable[[float], bool | None]) -> Iterator[Frame]:
        """The pictures whose nominal time ``in_range`` keeps, up to the first past the end."""
        tb, index = 1 / IMAGE_FOLDER_RATE, 0
        for pts, path in enumerate(self.files):
            keep = in_range(float(pts * tb))
            if keep is None:
                return
            if keep and (image := _readable(path)) is not None:
                alpha = np.ascontiguousarray(image[..., 3]) if image.shape[2] == 4 else None
                image = np.ascontiguousarray(image[..., :3])
                deep = image if image.dtype == np.uint16 else None
                image = image if deep is None else eight_bits(deep)
                yield Frame(index, pts, tb, image, name=self.names[path], deep=deep, alpha=alpha)
                index += 1


def _readable(path: Path) -> np.ndarray | None:
    """The picture, or None, said, where it cannot be read: one truncated photo of a thousand
    failed the run and kept none of the others."""
    try:
        return read_picture(path)
    except InputError as exc:
        log.warning("%s: skipped", exc)
        return None


def read_picture(path: Path) -> np.ndarray:
    """A picture as RGB, 8 bits a channel, or 16 where it has them (a scan, a raw develop), and
    as RGBA where it is not opaque all over (a PNG, TIFF or WebP logo)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)  # turned by its EXIF
    if image is None:
        raise InputError(f"{path}: not a readable image")
    if image.dtype not in (np.uint8, np.uint16):  # a float TIFF or EXR
        raise InputError(f"{path}: {image.dtype} pixels; streamderain reads 8 or 16 bits")
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if path.suffix.lower() not in ALPHA_PICTURES:
        return rgb
    whole = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # the alpha, which IMREAD_COLOR drops
    if whole is None or whole.ndim != 3 or whole.shape != (*rgb.shape[:2], 4):
        return rgb
    alpha = whole[..., 3]
    if alpha.dtype != rgb.dtype or alpha.min() == np.iinfo(alpha.dtype).max:  # opaque all over
        return rgb
    return np.dstack([rgb, alpha])


def write_picture(path: Path, image: np.ndarray) -> None:
    """An RGB or RGBA picture, in the format its name says."""
    to_bgr = cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR
    if not cv2.imwrite(str(path), cv2.cvtColor(image, to_bgr)):
        raise OutputError(f"{path}: cannot write image")


class PictureWriter:
    """One frame as one picture, in the format its name says (``clean.jpg``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def write(
        self, image: np.ndarray, pts: int, time_base: Fraction, name: str | None = None
    ) -> None:
        self.count += 1
        if self.count > 1:
            raise OutputError(
                "a picture holds one frame: add --max-frames 1, or name a folder or a video"
            )
        write_picture(self.path, image)

    def close(self) -> None:
        pass


class FolderWriter:
    """One PNG per frame: named as its source picture (``001.jpg`` -> ``001.png``) where the
    input was a folder of images, else numbered from 1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        path.mkdir(parents=True, exist_ok=True)

    def write(
        self, image: np.ndarray, pts: int, time_base: Fraction, name: str | None = None
    ) -> None:
        self.count += 1
        target = self.path / f"{name}.png" if name else self.path / f"frame-{self.count:06d}.png"
        if name and target.exists():  # a.png and a.PNG in one folder
            target = self.path / f"{name}-{self.count}.png"
        write_picture(target, image)

    def close(self) -> None:
        pass
