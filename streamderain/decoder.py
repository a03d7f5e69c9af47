"""Reads a video file, a live stream or camera, or a folder of images into :class:`Frame`s.

Live sources reconnect here, with capped exponential backoff, until ``reconnect_timeout``;
what retrying cannot fix (not found, unauthorized, not a video) fails at once. Frame times of a
live source are seconds since the run began, so they only ever grow: an outage is a gap, and a
source whose own clock jumps is followed by the wall clock from the jump.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from streamderain.errors import InputError, reason
from streamderain.frames import Frame, rgb_image
from training.data import IMAGE_SUFFIXES, list_images

log = logging.getLogger(__name__)

IMAGE_FOLDER_RATE = Fraction(25)
LIVE_TIME_BASE = Fraction(1, 90_000)
# A live source's clock that jumps back further than this, or ahead of the wall clock by more,
# was reset (a looping restreamer, a camera reboot, MPEG-TS timestamps wrapping after 26.5 h):
# frame times then follow the wall clock from there, instead of piling up on one instant.
CLOCK_JUMP_BACK, CLOCK_JUMP_AHEAD = 0.5, 10.0
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "srt", "tcp")
# Errors that another try cannot mend: fail at once instead of reconnecting.
PERMANENT_ERRORS = (
    av.error.HTTPNotFoundError,
    av.error.HTTPUnauthorizedError,
    av.error.HTTPForbiddenError,
    av.error.DecoderNotFoundError,
    av.error.ProtocolNotFoundError,
    PermissionError,
)


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
    live: bool = False


def is_image_folder(path: str | Path) -> bool:
    return Path(path).is_dir()


def is_live(source: str) -> bool:
    """Network streams and cameras: sources that can drop, stall and come back."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    return scheme in LIVE_SCHEMES or source.startswith("/dev/video")


def mask_url(url: str) -> str:
    """The URL with its password replaced, for logs and messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


class LiveClock:
    """Seconds since a live run's first frame, following the source's own clock where it can.

    Each connection is anchored at its first frame's arrival; when the source's clock jumps, the
    anchor moves to the wall clock, so times only ever grow and never pile up on one instant.
    """

    def __init__(self) -> None:
        self.began: float | None = None  # monotonic time of the first frame
        self._anchor: tuple[float, float] | None = None  # (run seconds, source seconds)
        self._last = 0.0

    def new_session(self) -> None:
        """A reconnect: the source's clock starts again from anything."""
        self._anchor = None

    def seconds(self, source_time: float | None) -> float:
        now = time.monotonic()
        if self.began is None:
            self.began = now
        wall = now - self.began
        seconds = wall  # the arrival time, where the source has none (RTSP's first frame)
        if source_time is not None and self._anchor is not None:
            seconds = self._anchor[0] + source_time - self._anchor[1]
            if not self._last - CLOCK_JUMP_BACK <= seconds <= wall + CLOCK_JUMP_AHEAD:
                self._anchor = None
        if source_time is not None and self._anchor is None:
            seconds = max(wall, self._last)
            self._anchor = (seconds, source_time)
        self._last = seconds
        return seconds


class Decoder:
    """A source of frames: ``with Decoder(src) as d: for frame in d: ...``.

    Args:
        source: a video file, a URL FFmpeg can open, a camera (``/dev/video0``), or a folder
            of images.
        start: seconds to skip from the start.
        duration: seconds to read after ``start``.
        max_frames: frames to read at most.
        rtsp_transport: ``tcp`` (default: no losses) or ``udp`` for RTSP sources.
        reconnect_timeout: seconds a live source may stay lost before the run fails
            (0: never give up).
        open_timeout, read_timeout: seconds before a connection attempt or a read gives up,
            so a dead camera never hangs the process.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        start: float | None = None,
        duration: float | None = None,
        max_frames: int | None = None,
        rtsp_transport: str = "tcp",
        reconnect_timeout: float = 30.0,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
    ) -> None:
        self.source = str(source)
        self.name = mask_url(self.source)
        self.live = is_live(self.source)
        self.yields_cpu = not self.live  # a file waits; a camera's packets must be read in time
        self.start = start or 0.0
        self.end = None if duration is None else self.start + duration
        self.max_frames = max_frames
        self.rtsp_transport = rtsp_transport
        self.reconnect_timeout = reconnect_timeout
        self.timeouts = (open_timeout, read_timeout)
        self.corrupt_packets = 0
        self.reconnects = 0
        self.clock = LiveClock()
        self._stop = threading.Event()
        self._container: av.container.InputContainer | None = None
        self._images: list[Path] | None = None
        self.info = self._open()

    def _open(self) -> VideoInfo:
        if is_image_folder(self.source):
            return self._open_folder()
        if not self.live and not Path(self.source).exists():
            raise InputError(f"{self.name}: no such file")
        self._container = self._connect_until_deadline() if self.live else self._connect()
        stream = self._container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:
            self.close()
            raise InputError(f"{self.name}: no decoder for its video stream")
        if not ctx.width or not ctx.height:
            self.close()
            raise InputError(f"{self.name}: video stream has no frame size")
        return VideoInfo(
            width=ctx.width,
            height=ctx.height,
            time_base=LIVE_TIME_BASE if self.live else stream.time_base or Fraction(1, 90_000),
            rate=stream.average_rate or stream.guessed_rate,
            frames=None if self.live else stream.frames or None,
            color_range=ctx.color_range,
            colorspace=ctx.colorspace,
            color_primaries=ctx.color_primaries,
            color_trc=ctx.color_trc,
            sample_aspect_ratio=ctx.sample_aspect_ratio,
            live=self.live,
        )

    def _open_folder(self) -> VideoInfo:
        self._images = list_images(self.source)
        if not self._images:
            known = ", ".join(sorted(IMAGE_SUFFIXES))
            raise InputError(f"{self.source}: folder holds no images ({known})")
        first = self._read_image(self._images[0])
        return VideoInfo(
            width=first.shape[1],
            height=first.shape[0],
            time_base=1 / IMAGE_FOLDER_RATE,
            rate=IMAGE_FOLDER_RATE,
            frames=len(self._images),
        )

    def _connect(self) -> av.container.InputContainer:
        """Open the source once; a source without video is an error."""
        options, fmt = {}, None
        if self.source.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = self.rtsp_transport
        if self.live:
            # Probe 0.1 s instead of FFmpeg's default (~1 s buffered before the first frame).
            options["analyzeduration"] = "100000"
        if self.source.startswith("/dev/video"):
            fmt = "v4l2"
        try:
            container = av.open(
                self.source,
                mode="r",
                format=fmt,
                options=options,
                timeout=self.timeouts,
                metadata_errors="replace",  # junk tags in a damaged file are not fatal
            )
        except av.error.FFmpegError as exc:
            raise InputError(f"{self.name}: cannot open as video ({reason(exc)})") from exc
        if not container.streams.video:
            container.close()
            raise InputError(f"{self.name}: no video stream")
        container.streams.video[0].thread_type = "AUTO"
        return container

    def _connect_until_deadline(self) -> av.container.InputContainer | None:
        """Connect, retrying with capped backoff until the reconnect timeout; None if stopped."""
        began = time.monotonic()
        delay = 0.5
        while True:
            try:
                return self._connect()
            except InputError as exc:
                if isinstance(exc.__cause__, PERMANENT_ERRORS) or "no video stream" in str(exc):
                    raise
                waited = time.monotonic() - began
                if self.reconnect_timeout and waited >= self.reconnect_timeout:
                    raise InputError(
                        f"{self.name}: source lost; no connection within "
                        f"{self.reconnect_timeout:g} s ({reason(exc.__cause__ or exc)})"
                    ) from None
                log.debug("%s: connect failed (%s); retrying in %.1f s", self.name, exc, delay)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, 5.0)

    def stop(self) -> None:
        """End iteration at the next frame (a clean stop: what was read is kept)."""
        self._stop.set()

    def __iter__(self) -> Iterator[Frame]:
        if self._images is not None:
            frames = self._image_frames()
        elif self.live:
            frames = self._live_frames()
        else:
            frames = self._video_frames()
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

    def _decoded(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
        """Every frame that decodes; a corrupt packet is counted, then skipped or concealed.

        A file whose container breaks mid-way ends there (with a warning), keeping what was
        decoded; a live source's read errors go up to the reconnect logic.
        """
        stream = container.streams.video[0]
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets, None)
            except av.error.FFmpegError as exc:
                if self.live:
                    raise
                self.corrupt_packets += 1
                log.warning(
                    "%s: damaged from here on (%s); keeping what came before",
                    self.name,
                    reason(exc),
                )
                return
            if packet is None:
                return
            if packet.is_corrupt:  # flagged by the demuxer; the decoder conceals what it can
                self.corrupt_packets += 1
            try:
                decoded = packet.decode()
            except (av.error.InvalidDataError, ValueError) as exc:
                self.corrupt_packets += 1
                log.debug("skipped a bad packet: %s", exc)
                continue
            yield from decoded
            if self._stop.is_set():
                return

    def _video_frames(self) -> Iterator[Frame]:
        container = self._container
        assert container is not None
        stream = container.streams.video[0]
        if self.start > 0:
            container.seek(int(self.start / stream.time_base), stream=stream, backward=True)
        index = 0
        for vf in self._decoded(container):
            keep = self._in_range(vf.time)
            if keep is None:
                return
            if keep:
                tb = vf.time_base or stream.time_base
                image = rgb_image(vf)
                yield Frame(index, vf.pts, tb, image, rotation=round(vf.rotation or 0))
                index += 1

    def _live_frames(self) -> Iterator[Frame]:
        """Frames of a live source, reconnecting when it drops or stalls."""
        index, last_pts = 0, -1
        while self._container is not None and not self._stop.is_set():
            self.clock.new_session()
            try:
                for vf in self._decoded(self._container):
                    seconds = self.clock.seconds(vf.time)
                    pts = max(round(seconds / LIVE_TIME_BASE), last_pts + 1)
                    last_pts = pts
                    if self.end is not None and seconds >= self.end - self.start:
                        return
                    image = rgb_image(vf)
                    yield Frame(index, pts, LIVE_TIME_BASE, image)
                    index += 1
                why = "the stream ended"
            except (av.error.FFmpegError, OSError) as exc:
                why = reason(exc)
            self.close()
            if self._stop.is_set():
                return
            log.warning("%s: lost (%s); reconnecting", self.name, why)
            lost = time.monotonic()
            self._container = self._connect_until_deadline()
            if self._container is not None:
                self.reconnects += 1
                log.warning("%s: reconnected after %.1f s", self.name, time.monotonic() - lost)

    def close(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            container.close()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
