"""Readers for the paired and clean image layouts in ``../shared/data``, and patch sampling.

Images are returned as RGB ``uint8`` arrays (H x W x 3). Pairs are matched by name; a rainy
image without its clean twin (or the reverse) is an error, never a silent skip.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import click
import cv2
import numpy as np

from training.rain import rain_layer

#: ``../shared/data`` beside the checkout, found from this file so that it does not depend on
#: the working directory
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"

#: the ``--data-root`` option of every training command that reads the shared data
data_root_option = click.option(
    "--data-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_DATA_ROOT,
    show_default=True,
)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class DatasetError(Exception):
    """A dataset folder is missing, empty, or its pairs do not match."""


@dataclass(frozen=True)
class Pair:
    """A rainy image and its clean ground truth."""

    rainy: Path
    clean: Path


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, in natural order (``2.png`` before ``10.png``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=natural_key)


def natural_key(path: Path) -> list[object]:
    """Sorts ``2.png`` before ``10.png``: camera and frame dumps number without leading zeros."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _match(rainy: dict[str, Path], clean: dict[str, Path], folder: Path) -> list[Pair]:
    missing_clean = sorted(set(rainy) - set(clean))
    missing_rainy = sorted(set(clean) - set(rainy))
    if missing_clean or missing_rainy:
        parts = []
        if missing_clean:
            parts.append(f"no clean image for {', '.join(missing_clean[:5])}")
        if missing_rainy:
            parts.append(f"no rainy image for {', '.join(missing_rainy[:5])}")
        raise DatasetError(f"{folder}: pairs do not match: {'; '.join(parts)}")
    if not rainy:
        raise DatasetError(f"{folder}: no image pairs found")
    return [Pair(rainy[k], clean[k]) for k in sorted(rainy, key=lambda k: natural_key(Path(k)))]


def _by_key(files: Sequence[Path], prefix: str = "") -> dict[str, Path]:
    """Files whose stem starts with ``prefix``, keyed by what follows it (so a rainy JPEG pairs
    with a clean PNG); two of one key are refused, not one of them dropped."""
    keyed: dict[str, Path] = {}
    for p in files:
        if p.stem.startswith(prefix):
            key = p.stem[len(prefix) :]
            if key in keyed:
                raise DatasetError(
                    f"{p.parent}: {keyed[key].name} and {p.name}: one pair, two images"
                )
            keyed[key] = p
    return keyed


def find_pairs(folder: str | Path) -> list[Pair]:
    """Pairs in any of the published layouts.

    - ``rain-N`` beside ``norain-N`` (RainTrainL, RainTrainH);
    - ``rain/`` and ``norain/`` sharing file names, whatever the format (JORDER);
    - ``input/`` and ``target/`` sharing file names, whatever the format (PCNet);
    - clean ``norain-N`` at the top, rainy ``rainy/rain-N`` (PReNet's Rain100L test).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    for rainy_dir, clean_dir in (("rain", "norain"), ("input", "target")):
        if (folder / rainy_dir).is_dir() and (folder / clean_dir).is_dir():
            rainy, clean = (_by_key(list_images(folder / d)) for d in (rainy_dir, clean_dir))
            return _match(rainy, clean, folder)
    top = list_images(folder)
    if (folder / "rainy").is_dir():
        rainy = _by_key(list_images(folder / "rainy"), "rain-")
        return _match(rainy, _by_key(top, "norain-"), folder)
    if any(p.stem.startswith("rain-") for p in top):
        return _match(_by_key(top, "rain-"), _by_key(top, "norain-"), folder)
    raise DatasetError(
        f"{folder}: no known pair layout (rain-N/norain-N, rain/norain, input/target)"
    )


def read_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """An image file as RGB uint8, optionally shrunk so its longer side is at most ``max_side``."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: not a readable image")
    return shrink(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), max_side)


def shrink(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` made smaller (area-averaged) until its longer side is at most ``max_side``."""
    if max_side is None or max(image.shape[:2]) <= max_side:
        return image
    scale = max_side / max(image.shape[:2])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    rainy, clean = read_rgb(pair.rainy), read_rgb(pair.clean)
    if rainy.shape != clean.shape:
        raise DatasetError(
            f"{pair.rainy}: size {rainy.shape} differs from {pair.clean} {clean.shape}"
        )
    return rainy, clean


def read_layer(pair: Pair) -> np.ndarray:
    """The rain layer of an aligned pair (``rainy - clean``), refused by name if not aligned."""
    try:
        return rain_layer(*read_pair(pair))
    except ValueError as exc:
        raise DatasetError(f"{pair.rainy}: {exc}") from None


def find_clean_images(folder: str | Path) -> list[Path]:
    """Every image under ``folder`` (clean pictures, or a clean video's frame folders)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"{folder}: no images")
    return files


def pixel_digest(image: str | Path | np.ndarray) -> str:
    """A digest of an image's pixels (a file's, or an RGB array's): the same picture in two
    files (or formats) gives one digest."""
    pixels = image if isinstance(image, np.ndarray) else read_rgb(image)
    return hashlib.sha1(pixels.tobytes()).hexdigest()


def hold_out(pairs: Sequence[Pair], names: Sequence[str]) -> tuple[list[Pair], list[Pair]]:
    """(kept, held out): the pairs whose rainy file is named in ``names`` are held out."""
    missing = sorted(set(names) - {p.rainy.name for p in pairs})
    if missing:
        raise DatasetError(f"no pair named {', '.join(missing)} to hold out")
    held = [p for p in pairs if p.rainy.name in names]
    return [p for p in pairs if p.rainy.name not in names], held


def without_pictures_of(pairs: Sequence[Pair], banned: set[str]) -> list[Pair]:
    """``pairs`` less any with a picture (rainy or clean) whose :func:`pixel_digest` is
    ``banned``, under any file name.

    The shared sets overlap (RainTrainH_min's pairs are also in jorder-small), so a held-out
    pair is recognised by its pixels, not its path."""
    return [p for p in pairs if not {pixel_digest(p.clean), pixel_digest(p.rainy)} & banned]


def augment(
    rng: np.random.Generator, rainy: np.ndarray, clean: np.ndarray, patch: int
) -> tuple[np.ndarray, np.ndarray]:
    """The paper's augmentation on a crop already cut: resize to ``patch``, flip, rotate."""
    rainy = cv2.resize(rainy, (patch, patch), interpolation=cv2.INTER_AREA)
    clean = cv2.resize(clean, (patch, patch), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        rainy, clean = rainy[:, ::-1], clean[:, ::-1]
    angle = int(rng.integers(-30, 30))
    if angle:
        m = cv2.getRotationMatrix2D(((patch - 1) / 2, (patch - 1) / 2), angle, 1.0)
        rainy = cv2.warpAffine(np.ascontiguousarray(rainy), m, (patch, patch))
        clean = cv2.warpAffine(np.ascontiguousarray(clean), m, (patch, patch))
    return np.ascontiguousarray(rainy), np.ascontiguousarray(clean)


def draw_thin_structures(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` with 2-6 long, thin, near-vertical bars drawn into it: fence bars, poles,
    railings, cables. They go into the clean picture as well as the rainy one, so a network
    learns that a line which is long, straight and opaque is scene, however much it looks like
    a streak (real heavy-rain training teaches it to erase them otherwise)."""
    out = image.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(2, 7))):
        x = float(rng.uniform(0, w))
        tilt = float(np.tan(np.radians(rng.uniform(-20, 20))))
        y0 = float(rng.uniform(-0.2, 0.3)) * h
        y1 = y0 + float(rng.uniform(0.6, 1.2)) * h
        grey = float(rng.uniform(20, 235))
        colour = tuple(float(np.clip(grey + rng.normal(0, 12), 0, 255)) for _ in range(3))
        cv2.line(
            out,
            (round(x), round(y0)),
            (round(x + tilt * (y1 - y0)), round(y1)),
            colour,
            int(rng.integers(1, 4)),
            cv2.LINE_AA,
        )
    return out


def draw_fence(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` seen through a faint fence: 6 or more parallel bars, 1-2 px wide and 3-12 px
    apart, within 12 degrees of vertical, sometimes with rails across, slightly blurred, mixed
    into the picture at 20-70% opacity and partly hidden behind it (random blobs of the picture
    stay in front).

    Why: real fence bars (NTURain ra1, behind the plants) are grey on grey, evenly spaced and
    half hidden by leaves, and every heavy-rain model here erases them; the opaque isolated bars
    of :func:`draw_thin_structures` did not teach otherwise (stage 4d).
    """
    h, w = image.shape[:2]
    bars = np.zeros((h, w), np.float32)
    one = 16  # cv2.line's sub-pixel unit at shift=4
    spacing = float(rng.uniform(3, 12))
    width = int(rng.integers(1, 3))
    tilt = float(np.tan(np.radians(rng.uniform(-12, 12))))
    x0 = float(rng.uniform(-0.2, 0.5)) * w
    x1 = x0 + max(float(rng.uniform(0.4, 1.2)) * w, 6 * spacing)
    y0 = float(rng.uniform(-0.2, 0.3)) * h
    y1 = y0 + float(rng.uniform(0.6, 1.2)) * h
    point = lambda x, y: (round(x * one), round(y * one))  # noqa: E731
    for x in np.arange(x0, x1, spacing):
        cv2.line(bars, point(x, y0), point(x + tilt * (y1 - y0), y1), 1.0, width, cv2.LINE_AA, 4)
    for _ in range(int(rng.integers(0, 3))):
        y = float(rng.uniform(y0, y1))
        cv2.line(bars, point(x0, y), point(x1, y), 1.0, int(rng.integers(2, 5)), cv2.LINE_AA, 4)
    cells = int(rng.integers(3, 9))
    blobs = cv2.resize(rng.random((cells, cells)).astype(np.float32), (w, h), cv2.INTER_CUBIC)
    bars *= blobs >= float(rng.uniform(0.0, 0.4))
    bars = cv2.GaussianBlur(bars, (0, 0), float(rng.uniform(0.3, 1.2)))  # out of focus, moving
    grey = float(rng.uniform(30, 230))
    colour = np.clip(grey + rng.normal(0, 10, 3), 0, 255).astype(np.float32)
    alpha = (bars * float(rng.uniform(0.2, 0.7)))[..., None]
    out = image.astype(np.float32) * (1 - alpha) + colour * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def crop_box(
    rng: np.random.Generator, shape: tuple[int, ...], patch: int
) -> tuple[int, int, int, int]:
    """A random crop of ``patch`` +- patch/4 on each side (64 +- 16 in the paper), inside ``shape``."""
    jitter = patch // 4
    h = min(shape[0], patch + int(rng.integers(-jitter, jitter + 1)))
    w = min(shape[1], patch + int(rng.integers(-jitter, jitter + 1)))
    y = int(rng.integers(0, shape[0] - h + 1))
    x = int(rng.integers(0, shape[1] - w + 1))
    return y, x, h, w
