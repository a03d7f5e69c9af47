"""Reads a video file, a live stream or camera, or a folder of images into :class:`Frame`s.

Live sources reconnect here (backoff and deadline: :class:`streamderain.live.Outage`); what
retrying cannot fix (not found, unauthorized, not a video) fails at once. Frame times of a live
source are seconds since the run began, so they only ever grow: an outage is a gap, and a source
whose own clock jumps is followed by the wall clock from the jump. Its sound is read beside
(:class:`streamderain.sound.LiveSound`)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av

from streamderain import live
from streamderain.deinterlace import Deinterlacer
from streamderain.errors import CannotOpen, InputError, NoVideoStream, reason
from streamderain.frames import Frame, VideoInfo, chroma, decoded_frame, pixel_bits
from streamderain.options import DecodeOptions
from streamderain.pictures import PictureFolder
from streamderain.sound import LiveSound
from streamderain.streams import Continuity, file_origin, frame_rate, heard_audio, shown_video

log = logging.getLogger(__name__)

LIVE_TIME_BASE = Fraction(1, 90_000)


class Decoder:
    """A source of frames: ``with Decoder(src) as d: for frame in d: ...``.

    Args:
        source: a video file, a URL FFmpeg can open, a camera (``/dev/video0``), or a folder
            of images.
        options: what to read, and how long a live source may stay lost.
        open_timeout, read_timeout: seconds before a connection attempt or a read gives up,
            so a dead camera never hangs the process.
        stop: the caller's event that ends reading when set, also while a live source is
            still connecting; :meth:`stop` ends it without setting the caller's event.
    """

    def __init__(
        self,
        source: str | Path,
        options: DecodeOptions | None = None,
        *,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        stop: threading.Event | None = None,
    ) -> None:
        options = options or DecodeOptions()
        self.name = live.mask_url(str(source))
        # a local path made absolute: FFmpeg takes "rec-10:00.mp4" for the protocol "rec-10"
        self.source = str(source) if "://" in str(source) else str(Path(source).absolute())
        self.live = live.is_live(self.source)
        self.yields_cpu = not self.live  # a file waits; a camera's packets must be read in time
        self.start = options.start or 0.0
        self.end = None if options.duration is None else self.start + options.duration
        self.max_frames = options.max_frames
        self.rtsp_transport = options.rtsp_transport
        self.reconnect_timeout = options.reconnect_timeout
        self.timeouts = (open_timeout, read_timeout)
        self.corrupt_packets = self.reconnects = 0
        self.clock = live.LiveClock()
        self._stop = live.StopSignal(stop)  # the caller's event is watched, never set
        self._container: av.container.InputContainer | None = None
        self._folder: PictureFolder | None = None
        self._video_index = 0  # the stream read, of a file's or stream's (shown_video)
        self._audio_index: int | None = None  # a live source's sound (FFmpeg's best)
        self.info = self._open()
        self.sound = LiveSound(self.name) if self.live else None  # a file's is copied after

    def _open(self) -> VideoInfo:
        if Path(self.source).is_dir():
            self._folder = PictureFolder(Path(self.source), self.name)
            return self._folder.info
        if not self.live and "://" not in self.source and not Path(self.source).exists():
            raise InputError(f"{self.name}: no such file")
        if self.source.startswith("/dev/video") and not Path(self.source).exists():
            raise InputError(f"{self.name}: no such camera (is it plugged in?)")
        if self.live:
            live.check_escaped(self.source)
            outage = live.Outage(self.name, self.reconnect_timeout, self._stop)
            self._container = outage.connect(self._connect, self.timeouts[0])
        else:
            self._container = self._connect()
        if self._container is None:
            raise InputError(f"{self.name}: stopped before the source answered")
        stream = self._container.streams[self._video_index]
        ctx = stream.codec_context
        if ctx is None or not ctx.width or not ctx.height:
            self.close()
            why = "no decoder for its video stream" if not ctx else "video stream has no frame size"
            raise InputError(f"{self.name}: {why}")
        behind_address = self.source.lower().startswith(live.RECORDING_SCHEMES)
        if self.live and self._container.duration and behind_address:
            # a recording behind a web address (a file's, a finished HLS playlist's; live streams
            # report no length) is read once, as a file: live, its end would be a loss, played
            # again and again. (RTSP looping a file reports a length too: it stays live.)
            self.live, self.yields_cpu = False, True
        return VideoInfo(
            width=ctx.width,
            height=ctx.height,
            time_base=LIVE_TIME_BASE if self.live else stream.time_base or Fraction(1, 90_000),
            rate=frame_rate(stream),
            frames=None if self.live else stream.frames or None,
            color_range=ctx.color_range,
            colorspace=ctx.colorspace,
            color_primaries=ctx.color_primaries,
            color_trc=ctx.color_trc,
            sample_aspect_ratio=ctx.sample_aspect_ratio,
            live=self.live,
            bits=8 if self.live else pixel_bits(ctx.pix_fmt),
            chroma="420" if self.live else chroma(ctx.pix_fmt),
            origin=0.0 if self.live else file_origin(self._container),
        )

    def _connect(
        self, open_timeout: float | None = None, probe: str = "100000"
    ) -> av.container.InputContainer:
        """Open the source once; a source without video is an error. A live source is probed
        for 0.1 s (FFmpeg's default takes ~1 s), and for up to 5 s where that found no picture
        size (a camera joined mid-group of pictures, its sound's packets first)."""
        options, fmt = {}, None
        open_timeout, read_timeout = open_timeout or self.timeouts[0], self.timeouts[1]
        if self.source.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = self.rtsp_transport
            read_timeout /= 2  # a stall shows after two: the first yields the frame RTSP held
        elif live.is_hls(self.source):
            read_timeout += live.HLS_WAIT  # HLS waits at the live edge for a whole segment
        if self.live:
            options["analyzeduration"] = probe
        if self.source.startswith("/dev/video"):
            fmt = "v4l2"
        elif "://" not in self.source:  # "img%03d.jpg" is that file, not a numbered sequence
            options["pattern_type"] = "none"
        began = time.monotonic()
        try:
            container = av.open(
                self.source,
                mode="r",
                format=fmt,
                options=options,
                timeout=(open_timeout, read_timeout),
                metadata_errors="replace",  # junk tags in a damaged file are not fatal
            )
        except av.error.FFmpegError as exc:
            took = time.monotonic() - began
            # FFmpeg reports a source that never answers as whatever it was reading when the
            # timeout cut it off ("Invalid data found ..."): say what happened instead.
            why = f"no answer within {took:.0f} s" if took >= open_timeout - 0.5 else reason(exc)
            raise CannotOpen(self.name, why) from exc
        video = shown_video(container)
        if video is None:
            container.close()
            raise NoVideoStream(f"{self.name}: no video stream")
        if self.live and not video.codec_context.width and probe == "100000":
            container.close()
            return self._connect(open_timeout, probe="5000000")
        video.thread_type = "AUTO"
        self._video_index = video.index
        audio = heard_audio(container) if self.live else None
        self._audio_index = None if audio is None else audio.index
        return container

    @property
    def is_image_folder(self) -> bool:
        return self._folder is not None

    @property
    def duration(self) -> float | None:
        """The source's length in seconds, where it says (None for live sources)."""
        if self._folder is not None:
            return self._folder.duration
        if self._container is None or self.live or not self._container.duration:
            return None
        return self._container.duration / av.time_base

    def describe(self) -> str:
        """One line on what is read, for the banner of ``-v``."""
        if self._folder is not None:
            return self._folder.describe()
        i = self.info
        rate = f"{float(i.rate):.3g} fps" if i.rate else "no fixed rate"
        video = self._container.streams[self._video_index]
        bits = f" {i.bits}-bit" if i.bits > 8 else ""
        parts = [f"{video.codec_context.name}{bits} {i.width}x{i.height}, {rate}"]
        if i.frames:
            parts.append(f"{i.frames} frames")
        for a in self._container.streams.audio:
            parts.append(f"audio {getattr(a.codec_context, 'name', '?')} {a.rate or '?'} Hz")
        return f"{self.name}: " + ", ".join(parts) + (" (live)" if self.live else "")

    def stop(self) -> None:
        """End iteration at the next frame (a clean stop: what was read is kept)."""
        self._stop.set()

    def __iter__(self) -> Iterator[Frame]:
        if self._folder is not None:
            frames = self._folder.frames(self._in_range)
        elif self.live:
            frames = self._live_frames()
        else:
            frames = self._video_frames()
        if self.max_frames is not None:  # no frame past the last is read (nor waited for)
            frames = itertools.islice(frames, self.max_frames)
        for frame in frames:
            if self._stop.is_set():
                return
            yield frame

    def _in_range(self, seconds: float | None) -> bool | None:
        """True to keep, False to skip, None when past the end (``seconds`` from the start)."""
        if seconds is None:
            return True
        if self.end is not None and seconds >= self.end - 1e-9:
            return None
        # Without --start every frame is kept, also those a file shows before time 0 (the
        # encoder shifts the timeline, audio with it, as FFmpeg does).
        return self.start <= 0 or seconds >= self.start - 1e-9

    def _decoded(self, container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
        """Every frame that decodes; a corrupt packet is counted, then concealed, or left out
        where it is a file's last, cut short (fed, it lost the frames decoding in threads). A
        file whose container breaks mid-way ends there (with a warning), keeping what was
        decoded; a live source's read errors go up to the reconnect logic."""
        streams = [container.streams[self._video_index]]
        if self.sound is not None and self._audio_index is not None:
            streams.append(container.streams[self._audio_index])
            self.sound.connected(streams[1])
        packets = container.demux(*streams)
        held = None  # a file's packet flagged corrupt: decoded once a packet follows
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
            if held is not None and packet is not None and packet.size:  # damage mid-file
                yield from self._decode(held)
            held = None
            if packet is None:
                return
            if packet.stream.index == self._audio_index:
                if packet.size and self.sound is not None:
                    self.sound.hear(packet, self.clock)
                continue
            if packet.is_corrupt:  # flagged by the demuxer (a live source's: concealed)
                self.corrupt_packets += 1
                if not self.live:
                    held = packet
                    continue
            yield from self._decode(packet)
            if self._stop.is_set():
                return

    def _decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            return packet.decode()
        except (av.error.InvalidDataError, ValueError) as exc:
            self.corrupt_packets += 1
            log.debug("skipped a bad packet: %s", exc)
            return []

    def _from_start(self, origin: float) -> Iterator[av.VideoFrame]:
        """Decoded frames from a keyframe at or before ``--start``.

        MPEG-TS has no index: FFmpeg's seek lands on a packet near the time, and nothing
        decodes before the next keyframe, up to a GOP later (never, in a file of one GOP). A
        seek that lands after the start is redone further back, at last from the beginning."""
        if self.duration is not None and self.start >= self.duration:
            return  # past the end: the caller says so, without a read through the file
        target, margin = origin + self.start, 0.0
        while not self._stop.is_set():
            container = self._container
            assert container is not None
            stream = container.streams[self._video_index]
            if self.start > 0 and target - margin > origin:
                seek = (target - margin) / stream.time_base
                try:
                    container.seek(int(seek), stream=stream, backward=True)
                except (av.error.FFmpegError, OSError):  # no times to seek by (a raw .h264)
                    margin = target - origin  # from the beginning
                    continue
            elif margin:
                self.close()
                self._container = container = self._connect()
            corrupt = self.corrupt_packets
            frames = self._decoded(container)
            first = next(frames, None)
            late = first is None or (first.time is not None and first.time > target + 1e-6)
            if not late or self.start <= 0 or target - margin <= origin:
                if first is not None:
                    yield first
                yield from frames
                return
            frames.close()
            self.corrupt_packets = corrupt  # what a seek that landed late met is not counted
            margin = margin * 2 or 4.0

    def _video_frames(self) -> Iterator[Frame]:
        origin, deep, index = self.info.origin, self.info.bits > 8, 0
        frame_seconds, line = 1 / float(self.info.rate or 25), Continuity()
        for position, vf in enumerate(Deinterlacer().frames(self._from_start(origin))):
            # a frame without a time (a raw .h264's) is where the encoder puts it: at the rate
            late = 0.0 if vf.time is None else line.late(vf.time, frame_seconds)
            keep = self._in_range(
                position * frame_seconds if vf.time is None else vf.time + late - origin
            )
            if keep is None:
                return
            if keep:
                pts = None if vf.pts is None else vf.pts + round(late / vf.time_base)
                yield decoded_frame(vf, index, pts, vf.time_base or self.info.time_base, deep)
                index += 1

    def _live_frames(self) -> Iterator[Frame]:
        """Frames of a live source, reconnecting when it drops or stalls.

        A session that connects but gives no picture is one more failed try of the outage it
        is in: the same backoff, the same ``--reconnect-timeout`` as a refused connection."""
        index, last_pts, picture_at = 0, -1, time.monotonic()
        outage: live.Outage | None = None
        while self._container is not None and not self._stop.is_set():
            self.clock.new_session()
            session_start, timed = index, live.source_times(self._container)
            try:
                for vf in Deinterlacer().frames(self._decoded(self._container)):
                    seconds = self.clock.seconds(vf.time if timed else None)
                    pts = max(round(seconds / LIVE_TIME_BASE), last_pts + 1)
                    last_pts = pts
                    if self.end is not None and seconds >= self.end - self.start:
                        return
                    picture_at = time.monotonic()
                    yield decoded_frame(vf, index, pts, LIVE_TIME_BASE)
                    index += 1
                why = "the stream ended"
            except (av.error.FFmpegError, OSError) as exc:  # a read's timeout: FFmpeg's "exit"
                timed_out = isinstance(exc, av.error.ExitError)
                why = f"nothing came for {self.timeouts[1]:g} s" if timed_out else reason(exc)
            self.close()
            if self._stop.is_set():
                return
            if index > session_start or outage is None:
                outage = live.Outage(
                    self.name, self.reconnect_timeout, self._stop, after_picture=index > 0
                )
                log.warning("%s: lost (%s); reconnecting", self.name, why)
            elif not outage.retry(f"no picture ({why})"):
                return
            self._container = outage.connect(self._connect, self.timeouts[0])
            if self._container is not None:
                self.reconnects += 1
                away = time.monotonic() - picture_at  # from its last picture, not its loss's notice
                log.warning("%s: reconnected, %.1f s after its last picture", self.name, away)

    def close(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            container.close()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
