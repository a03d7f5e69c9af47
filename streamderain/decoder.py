"""Reads a video file, stream URL or folder of images into :class:`Frame`s, with PyAV."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from streamderain.errors import InputError
from streamderain.frames import Frame
from training.data import IMAGE_SUFFIXES, list_images

log = logging.getLogger(__name__)

IMAGE_FOLDER_RATE = Fraction(25)


@dataclass(frozen=True)
class VideoInfo:
    """What the encoder needs to know of the source to keep the output faithful to it."""

    width: int
    height: int
    time_base: Fraction
    rate: Fraction | None
    frames: int | None
    color_range: int = 0
    colorspace: int = 2
    color_primaries: int = 2
    color_trc: int = 2
    sample_aspect_ratio: Fraction | None = None


def is_image_folder(path: str | Path) -> bool:
    return Path(path).is_dir()


class Decoder:
    """A source of frames: ``with Decoder(src) as d: for frame in d: ...``.

    Args:
        source: a video file, a URL FFmpeg can open, or a folder of images.
        start: seconds to skip from the start.
        duration: seconds to read after ``start``.
        max_frames: frames to read at most.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        start: float | None = None,
        duration: float | None = None,
        max_frames: int | None = None,
    ) -> None:
        self.source = str(source)
        self.start = start or 0.0
        self.end = None if duration is None else self.start + duration
        self.max_frames = max_frames
        self.corrupt_packets = 0
        self._stop = threading.Event()
        self._container: av.container.InputContainer | None = None
        self._images: list[Path] | None = None
        self.info = self._open()

    def _open(self) -> VideoInfo:
        if is_image_folder(self.source):
            self._images = list_images(self.source)
            if not self._images:
                raise InputError(
                    f"{self.source}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            first = self._read_image(self._images[0])
            return VideoInfo(
                width=first.shape[1],
                height=first.shape[0],
                time_base=1 / IMAGE_FOLDER_RATE,
                rate=IMAGE_FOLDER_RATE,
                frames=len(self._images),
            )
        if not Path(self.source).exists() and "://" not in self.source:
            raise InputError(f"{self.source}: no such file")
        try:
            container = av.open(self.source, mode="r", timeout=(10.0, 10.0))
        except av.error.FFmpegError as exc:
            raise InputError(f"{self.source}: cannot open as video ({_reason(exc)})") from None
        if not container.streams.video:
            container.close()
            raise InputError(f"{self.source}: no video stream")
        self._container = container
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ctx = stream.codec_context
        if not ctx.width or not ctx.height:
            container.close()
            raise InputError(f"{self.source}: video stream has no frame size")
        return VideoInfo(
            width=ctx.width,
            height=ctx.height,
            time_base=stream.time_base or Fraction(1, 90_000),
            rate=stream.average_rate,
            frames=stream.frames or None,
            color_range=ctx.color_range,
            colorspace=ctx.colorspace,
            color_primaries=ctx.color_primaries,
            color_trc=ctx.color_trc,
            sample_aspect_ratio=ctx.sample_aspect_ratio,
        )

    def stop(self) -> None:
        """End iteration at the next frame (a clean stop: what was read is kept)."""
        self._stop.set()

    def __iter__(self) -> Iterator[Frame]:
        frames = self._image_frames() if self._images is not None else self._video_frames()
        for count, frame in enumerate(frames):
            if self._stop.is_set() or (self.max_frames is not None and count >= self.max_frames):
                return
            yield frame

    def _in_range(self, seconds: float | None) -> bool | None:
        """True to keep, False to skip, None when past the end."""
        if seconds is None:
            return True
        if self.end is not None and seconds >= self.end - 1e-9:
            return None
        return seconds >= self.start - 1e-9

    def _image_frames(self) -> Iterator[Frame]:
        tb = 1 / IMAGE_FOLDER_RATE
        index = 0
        for pts, path in enumerate(self._images or []):
            keep = self._in_range(float(pts * tb))
            if keep is None:
                return
            if keep:
                yield Frame(index, pts, tb, self._read_image(path))
                index += 1

    def _read_image(self, path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"{path}: not a readable image")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _video_frames(self) -> Iterator[Frame]:
        container = self._container
        assert container is not None
        stream = container.streams.video[0]
        if self.start > 0:
            container.seek(int(self.start / stream.time_base), stream=stream, backward=True)
        index = 0
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except (av.error.InvalidDataError, av.error.ValueError) as exc:
                self.corrupt_packets += 1
                log.debug("skipped a bad packet: %s", exc)
                continue
            for vf in decoded:
                keep = self._in_range(vf.time)
                if keep is None:
                    return
                if keep:
                    image = vf.to_ndarray(format="rgb24")
                    tb = vf.time_base or stream.time_base
                    yield Frame(index, vf.pts, tb, image, rotation=round(vf.rotation or 0))
                    index += 1
            if self._stop.is_set():
                return

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason(exc: Exception) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
