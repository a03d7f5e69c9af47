"""The pipeline's last stage: writes frames to a file, a folder of images or a live URL, safely.

The output goes to a temporary file beside the target and is renamed into place when it is
closed, so an existing file is untouched until there is something to replace it with, and an
interrupted run still leaves a playable file holding what was done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from streamderain.errors import OutputError, reason
from streamderain.frames import (
    Batch,
    Frame,
    VideoInfo,
    resized,
    timeline_shift,
    upright,
    with_alpha,
    with_fine_bits,
)
from streamderain.live import mask_url
from streamderain.options import EncodeOptions
from streamderain.pictures import ALPHA_PICTURES, DEEP_PICTURES, FolderWriter, PictureWriter
from streamderain.pipeline import Stage
from streamderain.sound import LiveSound
from streamderain.streams import has_sound
from streamderain.targets import (
    check_muxer,
    check_target,
    format_and_codec,
    is_folder_target,
    is_picture_target,
    keep_killed_run,
    live_target_format,
    lock_partial,
    mark_redoable,
    partial_path,
    remove_partial,
    replace_folder,
)
from streamderain.writers import (
    X26X,
    FFmpegWriter,
    OutputSettings,
    PyAVWriter,
    Writer,
    muxer_options,
    pixel_format,
    video_options,
)

log = logging.getLogger(__name__)

#: seconds a write to a live receiver may hang before the run ends (PyAV's writer takes no I/O
#: timeout, and one that stopped reading without closing held the run forever)
LIVE_STALL_SECONDS = 20.0
#: why ffmpeg's writer leaves a source's sound out of a live output or a live source's recording
SOUND_WRITER = "PyAV's writer, --encoder pyav, takes it; srt:// goes through ffmpeg's"


class Encoder(Stage):
    """The pipeline's last stage: sets itself up from the first frame, and scales a video's
    frames of another size to it.

    A live output (``rtsp://``, ``rtmp://``, ``udp://``, ``srt://``) is published as frames
    come, with low-latency settings, paced by the source timestamps when the source is a file.

    Args:
        target: output file (its suffix picks the container), folder, or live URL.
        info: the source's properties, kept in the output (colour tags, aspect ratio).
        options: codec, quality and which writer (``options.compare`` is the compose stage's).
        copy_streams_from: a source file whose audio and subtitles are copied over.
        sound: a live source's sound, recorded or published beside the picture.
        start, end: the source time range being processed, seconds from the file's start.
    """

    def __init__(
        self,
        target: str | Path,
        info: VideoInfo,
        options: EncodeOptions | None = None,
        *,
        copy_streams_from: str | None = None,
        sound: LiveSound | None = None,
        start: float = 0.0,
        end: float | None = None,
    ) -> None:
        check_target(target)
        self.options = options or EncodeOptions()
        if str(target).lower().startswith("srt://"):  # PyAV's FFmpeg has no SRT
            self.options = dataclasses.replace(self.options, encoder="ffmpeg")
        self.live_format = live_target_format(target)
        self.name = mask_url(str(target)) if self.live_format else str(target)  # in messages
        self.target = Path(os.path.abspath(target))  # "." has a name
        self.info = info
        self.copy_from, self.sound = copy_streams_from, sound
        self.start, self.end = start, end
        self.frames_written = 0
        self.folder = not self.live_format and is_folder_target(target)
        self.picture = not self.folder and is_picture_target(target)  # "shots.png/" is a folder
        o, live_rtsp = self.options, self.live_format == "rtsp"  # RTSP's muxer needs a server
        if (o.codec or o.crf is not None) and not (self.folder or self.picture or live_rtsp):
            fmt, codec = self._format_and_codec()
            options = video_options(codec, o.crf, o.preset)  # a crf off the codec's scale
            if o.encoder == "pyav":
                check_muxer(fmt, codec, options, pixel_format(codec, 64, 64))
        # A file from a file can wait for the model's spare CPU; anything live keeps its pace.
        self.yields_cpu = not (self.live_format or info.live)
        self._writing_since: float | None = None  # a live output's write under way, since
        self._pace: tuple[float, float] | None = None  # (wall clock, source seconds) at start
        self._size: tuple[int, int] | None = None
        self._said: set[str] = set()  # warnings given once a run (:meth:`_say_once`)
        self._writer: Writer | None = None
        self._deep = False  # writing 10 bits a channel, from frames that carry their deep source
        self._last_pts: int | None = None
        self._offset_pts: int | None = None
        # absolute, as FFmpeg takes "clean-10:00.mp4" for the protocol "clean-10"
        self._tmp = None if self.live_format else partial_path(self.target.absolute(), self.folder)
        self._held: int | None = None  # the partial output file, open and locked while written
        if self._tmp is not None and self._tmp.exists():
            killed = self._lock()  # refused while another run writes it
            if not keep_killed_run(self._tmp, self.target, self.folder, self.info.live):
                self._discard()
            if killed is not None:
                os.close(killed)
        self._held = self._lock()
        if self._held is not None:
            mark_redoable(self._tmp, not info.live)

    def stalled(self) -> OutputError | None:
        since = self._writing_since
        if since is None or time.monotonic() - since < LIVE_STALL_SECONDS:
            return None
        return OutputError(
            f"{self.name}: the receiver has taken nothing for {LIVE_STALL_SECONDS:g} s "
            "(stalled); stopped"
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write to a live receiver, timed for :meth:`stalled` (a file's pace is not)."""
        if self.live_format:
            self._writing_since = time.monotonic()
        try:
            yield
        finally:
            self._writing_since = None

    def _lock(self) -> int | None:
        """The partial output file, open and locked: a second run to the same output refuses,
        instead of taking it for a killed run's and removing it. Folders go unlocked."""
        if self.folder or self._tmp is None:
            return None
        try:
            return lock_partial(self._tmp)
        except BlockingIOError:
            busy = f"{self.name}: another run is writing it; wait for it or choose another output"
            raise OutputError(busy) from None
        except OSError as exc:
            raise OutputError(f"{self.name}: cannot write ({reason(exc)})") from None

    def _unlock(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            os.close(held)

    def describe(self) -> str:
        """One line on what is written, for the banner of ``-v``."""
        o = self.options
        if self.folder or self.picture:
            return f"{self.name}: {'PNG images' if self.folder else 'a picture'}"
        fmt, codec = self._format_and_codec()
        quality = f", crf {o.crf}" if o.crf is not None else ""
        bits = ", 10 bits" if self._deep_output(codec) else ""
        return f"{self.name}: {fmt}, {codec}{bits}{quality}, written by {o.encoder}"

    def _format_and_codec(self) -> tuple[str, str]:
        return format_and_codec(self.target, self.live_format, self.options.codec, self.info.bits)

    def _deep_output(self, codec: str) -> bool:
        """Whether a video file is written at 10 bits a channel, as its source had more than 8."""
        return self.info.bits > 8 and not self.live_format and codec in X26X

    def process(self, batch: Batch) -> list[Batch]:
        for frame in batch.frames:
            self.write(frame)
        return []

    def write(self, frame: Frame) -> None:
        image = frame.image
        if self.live_format and frame.rotation:  # a live stream keeps no display rotation
            image = upright(image, frame.rotation)
        if self._writer is None:
            self._open(frame, image.shape[:2])
        elif image.shape[:2] != self._size and not self.folder:  # pictures keep their sizes
            image = self._fitted(frame, image)
        pts = frame.pts
        if pts is None:  # a frame of a source without timestamps: placed by its index
            pts = round(frame.index / (float(self.info.rate or 25) * frame.time_base))
        if self._offset_pts is None:
            shift = timeline_shift(self.start, self.info.origin, float(pts * frame.time_base))
            self._offset_pts = round(shift / frame.time_base)
        pts -= self._offset_pts
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        if self.live_format and not self.info.live:
            self._wait_for(float(pts * frame.time_base))
        if self._deep and frame.deep is not None and frame.deep.shape == image.shape:
            image = with_fine_bits(image, frame.deep)
        if frame.alpha is not None:
            image = self._with_alpha(image, frame.alpha)
        if self.folder or self.picture:  # no display rotation: a phone's video turned upright
            image = upright(image, frame.rotation)
        try:
            with self._writing():
                self._writer.write(np.ascontiguousarray(image), pts, frame.time_base, frame.name)
        except OutputError as exc:
            raise OutputError(f"{self.name}: {exc}") from None
        self.frames_written += 1

    def _fitted(self, frame: Frame, image: np.ndarray) -> np.ndarray:
        """A video's frame of another size scaled to the output's, as FFmpeg's command line
        does (a broadcast recording's SD advert between HD programmes); a folder's picture of
        another size is refused, as a folder is no video."""
        (h, w), size = self._size, f"frame {frame.index} is {image.shape[1]}x{image.shape[0]}"
        if frame.name is not None:
            raise OutputError(
                f"{self.name}: {size}, the video is {w}x{h} (a video has one size; write "
                "pictures of several sizes to a folder)"
            )
        self._say_once("scaled", f"{size}, the video {w}x{h}: scaled to it from here on")
        return resized(image, (h, w))

    def _with_alpha(self, image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """The source's transparency kept where the output holds it (a folder's PNGs, a PNG,
        TIFF or WebP picture)."""
        keeps = self.folder or (self.picture and self.target.suffix.lower() in ALPHA_PICTURES)
        if keeps and alpha.shape == image.shape[:2]:
            return with_alpha(image, alpha)
        self._say_once("alpha", "the source's transparency is left out (PNG, TIFF, WebP keep it)")
        return image

    def _say_once(self, kind: str, warning: str) -> None:
        if kind not in self._said:
            self._said.add(kind)
            log.warning("%s: %s", self.name, warning)

    def _wait_for(self, seconds: float) -> None:
        """Publish a file's frames at the pace of their timestamps, as a camera would."""
        now = time.monotonic()
        if self._pace is None:
            self._pace = (now, seconds)
        delay = self._pace[0] + seconds - self._pace[1] - now
        if delay > 0:
            time.sleep(delay)

    def _open(self, first: Frame, size: tuple[int, int]) -> None:
        self._size = size
        try:
            o = self.options
            if self.folder or self.picture:
                if given := [f"--{k}" for k in ("codec", "crf", "preset") if getattr(o, k)]:
                    log.warning("%s: pictures take no %s (ignored)", self.name, ", ".join(given))
                self._writer = (FolderWriter if self.folder else PictureWriter)(self._tmp)
                # a 16-bit source picture stays 16 bits where the format holds them (PNG, TIFF)
                self._deep = self.folder or self.target.suffix.lower() in DEEP_PICTURES
                mark_redoable(self._tmp, not self.info.live)
                return
            fmt, codec = self._format_and_codec()
            if o.preset and codec not in X26X:
                log.warning("--preset is x264's and x265's; %s takes none (ignored)", codec)
            if codec in X26X and (size[0] % 2 or size[1] % 2) and self.info.chroma != "444":
                log.warning(  # their 4:2:0 needs even sides: the picture keeps its size
                    "%s: %s writes %dx%d in 4:4:4, which some players and hardware decoders "
                    "refuse; crop or scale the source to even sides for those",
                    *(self.name, codec, size[1], size[0]),
                )
            sar = self.info.sample_aspect_ratio
            if sar and sar != 1 and fmt in ("matroska", "webm") and codec not in X26X:
                log.warning(  # FFmpeg's Matroska takes it from a field PyAV cannot set
                    "%s: %s in %s keeps no pixel shape (the source's is %d:%d): players show "
                    "it squeezed; H.264 or HEVC keep it, or write .mp4",
                    *(self.name, codec, self.target.suffix, sar.numerator, sar.denominator),
                )
            self._deep = self._deep_output(codec)
            # ffmpeg's live output cannot be remuxed after, as its files are, for the sound
            live_ffmpeg = bool(self.live_format) and o.encoder != "pyav"
            if (o.encoder != "pyav" and self.sound is not None and self.sound.heard) or (
                live_ffmpeg and self.copy_from and has_sound(self.copy_from)
            ):
                log.warning("%s: the source's sound is left out (%s)", self.name, SOUND_WRITER)
            live_rate = float(self.info.rate or 25) if self.live_format else None
            recording = self.info.live and not self.live_format  # a live source to a file
            settings = OutputSettings(
                path=str(self._tmp or self.name),
                fmt=fmt,
                codec=codec,
                options=video_options(
                    codec, o.crf, o.preset, live_rate, zero_latency=recording, hdr=first.hdr
                ),
                muxer=muxer_options(fmt) if recording else {},
                info=self.info,
                size=size,
                time_base=first.time_base,
                rotation=0 if self.live_format else first.rotation,
                copy_from=None if live_ffmpeg else self.copy_from,
                sound=self.sound,
                start=self.start,
                end=self.end,
                first_seconds=first.seconds,
                bits=10 if self._deep else 8,
            )
            self._writer = (PyAVWriter if o.encoder == "pyav" else FFmpegWriter)(settings)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self._discard()
            raise OutputError(f"{self.name}: cannot create output ({reason(exc)})") from None

    def finish(self) -> list[Batch]:
        """Flush, close and move the output into place; with no frame at all, leave nothing."""
        if self.frames_written == 0:
            self._discard()
            return []
        try:
            with self._writing():
                self._writer.close()
        except Exception as exc:
            self._writer = None
            self._discard()
            if isinstance(exc, OutputError):
                raise OutputError(f"{self.name}: {exc}") from None
            raise OutputError(f"{self.name}: cannot finish the output ({reason(exc)})") from exc
        self._writer = None
        if self._tmp is None:
            return []
        if self.folder:
            replace_folder(self._tmp, self.target)
        else:
            os.replace(self._tmp, self.target)
        self._unlock()
        return []

    def abort(self, failed: bool = True) -> None:
        """The run stops early: keep what was written as a playable file, if anything, unless
        the run failed and the target holds something already (a failed run never replaces
        the user's file; a second Ctrl-C, ``failed=False``, is the user's choice)."""
        if self._writer is None and self.frames_written:
            return  # finished already
        if failed and self._tmp is not None and (self.target.exists() or self.picture):
            self._discard()  # a picture is all or nothing
            return
        try:
            self.finish()
        except Exception:  # already failing: the first error is the one to report
            log.debug("could not finalize %s", self.target, exc_info=True)
            self._discard()

    def _discard(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # the file is being thrown away
                log.debug("closing a discarded output failed", exc_info=True)
        if self._tmp is not None:
            remove_partial(self._tmp)
            self._unlock()
