"""Writes frames to a video file (PyAV) or a folder of images, safely.

The output goes to a temporary file beside the target and is renamed into place when it is
closed, so an existing file is untouched until there is something to replace it with, and an
interrupted run still leaves a playable file holding what was done.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import av
import cv2
import numpy as np

from streamderain.decoder import VideoInfo
from streamderain.errors import OutputError
from streamderain.frames import Batch, Frame

log = logging.getLogger(__name__)

# container suffix -> (FFmpeg format, default video codec)
CONTAINERS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
}
# Audio/subtitle codecs each container takes as they are (others are left out, with a warning).
COPYABLE: dict[str, set[str] | None] = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac", "mov_text"},
    "mov": {"aac", "mp3", "ac3", "alac", "pcm_s16le", "pcm_s24le", "mov_text"},
    "matroska": None,
    "webm": {"opus", "vorbis", "webvtt"},
}
# Visually lossless defaults: CRF 18 for H.264, 30 for VP9 (constant quality mode).
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 30}
DEFAULT_PRESET = "fast"


def is_folder_target(path: str | Path) -> bool:
    """An output with no suffix (or an existing folder) is a folder of PNG frames."""
    p = Path(path)
    return p.is_dir() or str(path).endswith(os.sep) or p.suffix == ""


def check_target(path: str | Path) -> None:
    """Refuse an output name whose container is unknown, before any work is done."""
    if is_folder_target(path):
        return
    if Path(path).suffix.lower() not in CONTAINERS:
        known = ", ".join(sorted(CONTAINERS))
        raise OutputError(f"{path}: unknown output container (use one of {known}, or a folder)")


def compose(original: np.ndarray, derained: np.ndarray, mode: str) -> np.ndarray:
    """Before and after in one picture: ``side-by-side`` or ``stacked``."""
    axis = 1 if mode == "side-by-side" else 0
    return np.concatenate([original, derained], axis=axis)


class _StreamCopier:
    """Copies a source file's audio and subtitle packets into the output, in time with the video."""

    def __init__(
        self,
        source: str,
        output: av.container.OutputContainer,
        fmt: str,
        start: float,
        end: float | None,
        offset: float,
    ) -> None:
        self.input = av.open(source)
        self.start, self.end, self.offset = start, end, offset
        allowed = COPYABLE[fmt]
        self.map: dict[int, av.stream.Stream] = {}
        for s in [*self.input.streams.audio, *self.input.streams.subtitles]:
            name = s.codec_context.name if s.codec_context else "unknown"
            if allowed is not None and name not in allowed:
                log.warning(
                    "%s stream %d (%s) does not fit %s: left out", s.type, s.index, name, fmt
                )
                continue
            self.map[s.index] = output.add_stream_from_template(s)
        self._packets = (
            self.input.demux(*[self.input.streams[i] for i in self.map]) if self.map else iter(())
        )
        self._held: av.Packet | None = None
        self.output = output

    def copy_until(self, seconds: float | None) -> None:
        """Mux every packet that starts before ``seconds`` of output time (all, if None)."""
        while True:
            packet = self._held or next(self._packets, None)
            self._held = None
            if packet is None:
                return
            if packet.dts is None or packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            if (self.start > 0 and t < self.start - 1e-9) or (
                self.end is not None and t >= self.end
            ):
                continue
            if seconds is not None and t - self.offset > seconds:
                self._held = packet
                return
            shift = round(self.offset / packet.time_base)
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = self.map[packet.stream.index]
            self.output.mux(packet)

    def close(self) -> None:
        self.input.close()


class Encoder:
    """The pipeline's last stage: sets itself up from the first frame and rejects any that differ.

    Args:
        target: output file (its suffix picks the container) or folder.
        info: the source's properties, kept in the output (colour tags, aspect ratio).
        codec: video codec (default: H.264 for mp4/mov/mkv, VP9 for webm).
        crf: constant quality (default: visually lossless for the codec).
        preset: x264 speed preset.
        copy_streams_from: a source file whose audio and subtitles are copied over.
        start, end: the source time range being processed, in seconds.
        compare: ``side-by-side`` or ``stacked`` to write before and after together.
        options: extra codec options.
    """

    def __init__(
        self,
        target: str | Path,
        info: VideoInfo,
        *,
        codec: str | None = None,
        crf: int | None = None,
        preset: str | None = None,
        copy_streams_from: str | None = None,
        start: float = 0.0,
        end: float | None = None,
        compare: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        check_target(target)
        self.target = Path(target)
        self.info = info
        self.codec_name = codec
        self.crf, self.preset = crf, preset
        self.copy_from = copy_streams_from
        self.start, self.end = start, end
        self.compare = compare
        self.options = dict(options or {})
        self.frames_written = 0
        self._size: tuple[int, int] | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self._copier: _StreamCopier | None = None
        self._last_pts: int | None = None
        self._offset_pts: int | None = None
        self._tmp = self._temp_path()

    def _temp_path(self) -> Path:
        if is_folder_target(self.target):
            return self.target.with_name(f".{self.target.name}.partial")
        return self.target.with_name(f".{self.target.stem}.partial{self.target.suffix}")

    @property
    def folder(self) -> bool:
        return is_folder_target(self.target)

    def process(self, batch: Batch) -> list[Batch]:
        for frame in batch.frames:
            self.write(frame)
        return []

    def write(self, frame: Frame) -> None:
        image = frame.image
        if self.compare:
            if frame.original is None:
                raise OutputError("compare output needs the original frames")
            image = compose(frame.original, image, self.compare)
        if self._size is None:
            self._setup(frame, image)
        elif image.shape[:2] != self._size:
            raise OutputError(
                f"{self.target}: frame {frame.index} is {image.shape[1]}x{image.shape[0]}, "
                f"the output is {self._size[1]}x{self._size[0]} (size changes are not supported)"
            )
        if self.folder:
            path = self._tmp / f"frame-{self.frames_written + 1:06d}.png"
            if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise OutputError(f"{path}: cannot write image")
        else:
            self._encode(frame, image)
        self.frames_written += 1

    def _setup(self, frame: Frame, image: np.ndarray) -> None:
        self._size = image.shape[:2]
        try:
            if self.folder:
                self._tmp.mkdir(parents=True, exist_ok=True)
                return
            fmt, default_codec = CONTAINERS[self.target.suffix.lower()]
            self._container = av.open(str(self._tmp), mode="w", format=fmt)
            self._stream = self._add_video_stream(fmt, default_codec, frame, image)
            if self.copy_from:
                offset = 0.0 if frame.seconds is None or self.start <= 0 else frame.seconds
                self._copier = _StreamCopier(
                    self.copy_from, self._container, fmt, self.start, self.end, offset
                )
        except (av.error.FFmpegError, OSError) as exc:
            self._discard()
            raise OutputError(f"{self.target}: cannot create output ({exc})") from None

    def _add_video_stream(self, fmt: str, default_codec: str, frame: Frame, image: np.ndarray):
        codec = self.codec_name or default_codec
        h, w = image.shape[:2]
        stream = self._container.add_stream(codec, rate=self.info.rate or 25)
        ctx = stream.codec_context
        stream.width, stream.height = w, h
        odd = w % 2 or h % 2
        stream.pix_fmt = "yuv444p" if odd and codec in ("libx264", "libx265") else "yuv420p"
        stream.time_base = frame.time_base
        ctx.time_base = frame.time_base
        for tag in ("color_range", "colorspace", "color_primaries", "color_trc"):
            value = getattr(self.info, tag)
            if value:
                setattr(ctx, tag, value)
        if self.info.sample_aspect_ratio and not self.compare:
            ctx.sample_aspect_ratio = self.info.sample_aspect_ratio
        options = {}
        crf = self.crf if self.crf is not None else DEFAULT_CRF.get(codec)
        if crf is not None:
            options["crf"] = str(crf)
        if codec in ("libx264", "libx265"):
            options["preset"] = self.preset or DEFAULT_PRESET
        if codec == "libvpx-vp9":
            options.update({"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"})
        options.update(self.options)
        stream.options = options
        return stream

    def _encode(self, frame: Frame, image: np.ndarray) -> None:
        pts = frame.pts if frame.pts is not None else frame.index
        if self._offset_pts is None:
            self._offset_pts = pts if self.start > 0 else 0
        pts -= self._offset_pts
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        vf.pts = pts
        vf.time_base = frame.time_base
        self._mux(self._stream.encode(vf))
        if self._copier is not None:
            self._copier.copy_until(float(pts * frame.time_base))

    def _mux(self, packets) -> None:
        try:
            self._container.mux(packets)
        except OSError as exc:
            raise OutputError(f"{self.target}: cannot write ({exc.strerror or exc})") from None

    def finish(self) -> list[Batch]:
        """Flush, close and move the output into place; with no frame at all, leave nothing."""
        if self.frames_written == 0:
            self._discard()
            return []
        if self._container is not None:
            try:
                self._mux(self._stream.encode(None))
                if self._copier is not None:
                    self._copier.copy_until(None)
            finally:
                self._close_container()
        self._move_into_place()
        return []

    def abort(self) -> None:
        """After an error elsewhere: keep what was written as a playable file, if anything."""
        try:
            self.finish()
        except Exception:  # already failing: the first error is the one to report
            log.debug("could not finalize %s", self.target, exc_info=True)
            self._discard()

    def _close_container(self) -> None:
        if self._copier is not None:
            self._copier.close()
            self._copier = None
        if self._container is not None:
            container, self._container = self._container, None
            container.close()

    def _move_into_place(self) -> None:
        if self.folder:
            self.target.mkdir(parents=True, exist_ok=True)
            for f in sorted(self._tmp.iterdir()):
                os.replace(f, self.target / f.name)
            self._tmp.rmdir()
        else:
            os.replace(self._tmp, self.target)

    def _discard(self) -> None:
        try:
            self._close_container()
        except Exception:  # the file is being thrown away
            log.debug("closing a discarded output failed", exc_info=True)
        if self._tmp.is_dir():
            for f in self._tmp.iterdir():
                f.unlink()
            self._tmp.rmdir()
        elif self._tmp.exists():
            self._tmp.unlink()
