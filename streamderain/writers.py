"""Writers: PyAV's own FFmpeg or an ``ffmpeg`` binary (a folder of PNG images:
:class:`~streamderain.pictures.FolderWriter`).

Each takes pictures with their timestamps (:class:`Writer`) and knows nothing of where they
came from; the encoder stage picks one from the output's name and options.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from subprocess import PIPE, Popen, TimeoutExpired
from typing import Protocol

import av
import ffmpeg
import numpy as np

from streamderain.errors import OutputError, reason, refusals
from streamderain.frames import HdrLight, VideoInfo, timeline_shift, video_frame
from streamderain.live import mask_url
from streamderain.sound import LiveSound
from streamderain.streams import Beside, StreamCopier, remux


class Writer(Protocol):
    """Takes RGB pictures in order, with their timestamps, then closes the output."""

    def write(
        self, image: np.ndarray, pts: int, time_base: Fraction, name: str | None = None
    ) -> None:
        """``name``: the stem of the picture's source file, where frames came from files."""

    def close(self) -> None: ...


# Visually lossless defaults: CRF 18 for H.264, 30 for VP9 (constant quality mode).
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 30}
DEFAULT_PRESET = "fast"
# x264 and x265: they cannot subsample odd sizes, and they write 10 bits a channel.
X26X = ("libx264", "libx265")


def video_options(
    codec: str,
    crf: int | None,
    preset: str | None,
    live_rate: float | None = None,
    zero_latency: bool = False,
    hdr: HdrLight | None = None,
) -> dict[str, str]:
    """Quality settings that add no visible loss, whichever backend writes the file.

    ``zero_latency`` (a recording of a live source): x264/x265 hold no frame back (no look-ahead,
    no B-frames), so a recording cut short loses only what the muxer had not written yet
    (:func:`muxer_options`), not the encoder's 1 to 10 s of pending frames.
    With ``live_rate`` (a live publish): the same, a fast preset, and a keyframe every second so
    a viewer joining late waits at most that long. ``hdr``: the source's HDR10 metadata, which
    x265 writes into the stream (other encoders have no place for it).
    """
    if crf is not None and crf > 51 and codec in X26X:  # x264 would take 51 without a word
        raise OutputError(f"--crf {crf} is past {codec}'s scale (0 to 51; 63 is VP9's)")
    options = {}
    crf = crf if crf is not None else DEFAULT_CRF.get(codec)
    if crf is not None:
        options["crf"] = str(crf)
    if codec in X26X:
        options["preset"] = preset or DEFAULT_PRESET
    if codec == "libx265":  # quiet: x265 prints its settings otherwise
        options["x265-params"] = "log-level=error" + (f":{hdr.x265_params()}" if hdr else "")
    if codec == "libvpx-vp9":
        options.update({"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"})
    if (zero_latency or live_rate) and codec in X26X:
        options["tune"] = "zerolatency"
    if live_rate and codec in X26X:
        gop = str(max(1, round(live_rate)))
        options.update({"preset": preset or "veryfast", "g": gop, "bf": "0"})
    return options


def muxer_options(fmt: str) -> dict[str, str]:
    """For a recording of a live source: every packet goes to disk as it is written, and
    Matroska (which keeps a cluster in memory until it ends, 5 s by default) ends one every
    second, so a recording cut short the hard way keeps all but its last second. MP4 and MOV
    are written in 1-s fragments: a plain MP4 has its index only at the end, so one cut short
    plays nothing at all."""
    options = {"flush_packets": "1"}
    if fmt == "matroska":
        options["cluster_time_limit"] = "1000"
    if fmt in ("mp4", "mov"):
        options.update({"movflags": "+empty_moov+default_base_moof", "frag_duration": "1000000"})
    return options


def codec_tag(codec: str, fmt: str) -> str | None:
    """HEVC in MP4 and MOV as ``hvc1``, the tag Apple's players need (FFmpeg writes ``hev1``)."""
    return "hvc1" if codec == "libx265" and fmt in ("mp4", "mov") else None


def pixel_format(codec: str, width: int, height: int, bits: int = 8, chroma: str = "420") -> str:
    """4:2:0 plays everywhere; x264/x265 keep a source's 4:2:2 or 4:4:4 (as ffmpeg does), and
    cannot subsample odd sizes, so those are 4:4:4; ``bits`` > 8: the same at 10 bits."""
    odd = width % 2 or height % 2
    fmt = f"yuv{'444' if odd else chroma}p" if codec in X26X else "yuv420p"
    return f"{fmt}10le" if bits > 8 else fmt


@dataclass(frozen=True)
class OutputSettings:
    """How the video is written: the same for every backend.

    Args:
        path: the file (or live URL) written.
        fmt: FFmpeg format.
        codec: video codec.
        options: codec options.
        muxer: format options (:func:`muxer_options`).
        info: the source's properties, kept in the output (colour tags, aspect ratio).
        size: (height, width) of the pictures.
        time_base: the first frame's, kept for every frame.
        rotation: display rotation to stamp on the video, degrees.
        copy_from: a source file whose audio and subtitles are brought along.
        sound: a live source's sound, encoded beside the picture (PyAV's writer only).
        start, end: the source time range processed, seconds from the file's start.
        first_seconds: the first frame's source time (the audio is shifted with it).
        bits: bits a channel of the output's pixels (10 takes uint16 pictures).
    """

    path: str
    fmt: str
    codec: str
    options: dict[str, str]
    info: VideoInfo
    size: tuple[int, int]
    time_base: Fraction
    rotation: int = 0
    copy_from: str | None = None
    sound: LiveSound | None = None
    start: float = 0.0
    end: float | None = None
    first_seconds: float | None = None
    bits: int = 8
    muxer: dict[str, str] = field(default_factory=dict)

    @property
    def shift(self) -> float:
        return timeline_shift(self.start, self.info.origin, self.first_seconds)

    @property
    def frame_seconds(self) -> float:
        """How long a frame lasts, at the source's rate (25 frames/s where it has none)."""
        return 1 / float(self.info.rate or 25)

    @property
    def pix_fmt(self) -> str:
        return pixel_format(self.codec, self.size[1], self.size[0], self.bits, self.info.chroma)

    def beside(self, output: av.container.OutputContainer) -> Beside | None:
        """What brings the source's other streams into ``output``: a file's sound and
        subtitles, copied, or a live source's sound, encoded as it comes."""
        if self.copy_from:
            return StreamCopier(
                self.copy_from, output, self.fmt, self.start, self.end, self.shift, self.info.origin
            )
        return None if self.sound is None else self.sound.track(output, self.fmt)

    def video_frame(self, image: np.ndarray, pts: int, time_base: Fraction) -> av.VideoFrame:
        """The picture in the output's pixel format, colour matrix and range, at ``pts``."""
        vf = video_frame(image, self.pix_fmt, self.info.colorspace, self.info.color_range)
        vf.pts, vf.time_base = pts, time_base
        return vf


def live_publish_options(settings: OutputSettings) -> dict[str, str]:
    """RTSP over TCP, as PyAV's writer publishes it, and each write to a live receiver bounded
    (10 s, in microseconds): one that stalled without a TCP reset held ffmpeg forever."""
    if "://" not in settings.path:
        return {}
    bound = "timeout" if settings.fmt == "rtsp" else "rw_timeout"  # RTSP's socket option
    return {bound: "10000000", **({"rtsp_transport": "tcp"} if settings.fmt == "rtsp" else {})}


class PyAVWriter:
    """Encodes with PyAV's own FFmpeg, with the source's audio and subtitles (a file's, copied)
    or its sound (a live source's, encoded as it comes)."""

    def __init__(self, settings: OutputSettings) -> None:
        self.settings = settings
        options = {"rtsp_transport": "tcp"} if settings.fmt == "rtsp" else {}
        if settings.sound is not None or "://" in settings.path:
            # FFmpeg holds a stream's packets until the others have some, 10 s by default: a
            # sound that stops (a source's, a file's shorter sound) froze the live picture
            options["max_interleave_delta"] = "500000"
        options.update(settings.muxer)
        self.container = av.open(
            settings.path, mode="w", format=settings.fmt, options=options, timeout=10.0
        )
        self.copier: Beside | None = None
        self.video_end = 0.0  # output time where the last frame written ends (one frame on)
        try:
            self.stream = self._add_video(settings)
            self.copier = settings.beside(self.container)
        except BaseException:
            self.container.close()
            raise

    def _add_video(self, settings: OutputSettings) -> av.video.stream.VideoStream:
        h, w = settings.size
        stream = self.container.add_stream(settings.codec, rate=settings.info.rate or 25)
        stream.width, stream.height = w, h
        stream.pix_fmt = settings.pix_fmt
        stream.time_base = settings.time_base
        if tag := codec_tag(settings.codec, settings.fmt):
            stream.codec_tag = tag
        ctx = stream.codec_context
        ctx.time_base = settings.time_base
        for tag in ("color_range", "colorspace", "color_primaries", "color_trc"):
            value = getattr(settings.info, tag)
            if value:
                setattr(ctx, tag, value)
        if settings.info.sample_aspect_ratio:
            ctx.sample_aspect_ratio = settings.info.sample_aspect_ratio
        if settings.rotation:
            stream.set_display_rotation(settings.rotation)
        stream.options = settings.options
        return stream

    def write(
        self, image: np.ndarray, pts: int, time_base: Fraction, name: str | None = None
    ) -> None:
        try:
            packets = self.stream.encode(self.settings.video_frame(image, pts, time_base))
        except av.error.FFmpegError as exc:  # an encoder that opens on its first frame
            raise OutputError(
                f"{self.settings.codec} cannot encode this ({reason(exc)}); "
                "check --codec and --preset"
            ) from None
        t = float(pts * time_base)
        self.video_end = t + self.settings.frame_seconds
        with refusals():
            self.container.mux(packets)
            if self.copier is not None:  # the sound beside it, which a receiver may refuse too
                self.copier.copy_until(t)

    def close(self) -> None:
        try:
            with refusals():
                self.container.mux(self.stream.encode(None))
                if self.copier is not None:
                    self.copier.finish(self.video_end)
        finally:
            if self.copier is not None:
                self.copier.close()
            self.container.close()


#: ffmpeg's exit status after a SIGINT or SIGTERM it took (a service manager's stop sent to the
#: whole control group): it closed its file first, which plays up to there
FFMPEG_SIGNALLED = 255


class FFmpegWriter:
    """Pipes frames, with their timestamps, to an ``ffmpeg`` binary that encodes them.

    For encoders PyAV's own FFmpeg lacks (NVENC, VAAPI, ...). Frames travel as raw video in
    NUT, which keeps every timestamp, already in the output's pixel format and colour matrix.
    ffmpeg writes the video alone; the source's sound and subtitles, and a display rotation
    (which NUT does not carry), are remuxed in after (:func:`~streamderain.streams.remux`), by
    the PyAV writer's rules: with ffmpeg's ``-shortest`` a sound that ended before the picture
    ended the output there and broke the pipe; subtitles the container cannot take failed it.
    """

    def __init__(self, settings: OutputSettings) -> None:
        binary = shutil.which("ffmpeg")
        if binary is None:
            raise OutputError("--encoder ffmpeg and srt:// need an ffmpeg binary on PATH")
        h, w = settings.size
        # ffmpeg moves each input's timeline back by its start time (and its -ss); the video's
        # is placed already, and the copied streams go where ``shift`` puts them.
        first = settings.first_seconds
        self.placed = placed = 0.0 if first is None else first - settings.shift
        video = ffmpeg.input("pipe:", format="nut", **({"itsoffset": placed} if placed else {}))
        info = settings.info
        if sar := info.sample_aspect_ratio:  # NUT's raw video carries none
            video = video.filter("setsar", f"{sar.numerator}/{sar.denominator}")
        tags = {
            "color_range": info.color_range,
            "colorspace": info.colorspace,
            "color_primaries": info.color_primaries,
            "color_trc": info.color_trc,
            "tag:v": codec_tag(settings.codec, settings.fmt),
        }
        out = ffmpeg.output(
            video,
            settings.path,
            format=settings.fmt,
            vcodec=settings.codec,
            pix_fmt=settings.pix_fmt,
            fps_mode="passthrough",
            enc_time_base="-1",
            **{k: v for k, v in tags.items() if v},
            **settings.options,
            **settings.muxer,
            **live_publish_options(settings),
        )
        args = ffmpeg.compile(
            out.global_args("-nostdin", "-loglevel", "error"), cmd=binary, overwrite_output=True
        )
        self.settings = settings
        self.log = tempfile.TemporaryFile()
        # a session of its own: a terminal's Ctrl-C must not kill it mid-file (its input ends it)
        self.proc = Popen(args, stdin=PIPE, stderr=self.log, start_new_session=True)
        try:
            self.container = av.open(self.proc.stdin, mode="w", format="nut")
            self.stream = self.container.add_stream("rawvideo", rate=info.rate or 25)
            self.stream.width, self.stream.height = w, h
            self.stream.pix_fmt = settings.pix_fmt
            self.stream.time_base = settings.time_base
            self.stream.codec_context.time_base = settings.time_base
        except BaseException:  # no writer to close: stop ffmpeg, which waits on its input
            self.proc.kill()
            self.proc.wait()
            self.log.close()
            raise

    def write(
        self, image: np.ndarray, pts: int, time_base: Fraction, name: str | None = None
    ) -> None:
        try:
            self.container.mux(self.stream.encode(self.settings.video_frame(image, pts, time_base)))
        except OSError:
            error = self._error()
            if self.proc.returncode == FFMPEG_SIGNALLED:  # as the user's stop: the file is kept
                raise KeyboardInterrupt from None
            raise OutputError(f"ffmpeg stopped: {error}") from None

    def _error(self) -> str:
        self.proc.wait(timeout=30)
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines() or [""]
        path = self.settings.path  # a publishing URL's password stays out of messages
        return lines[-1].replace(path, mask_url(path)) or f"exit status {self.proc.returncode}"

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
            self.container.close()
        except (OSError, av.error.FFmpegError):  # the pipe's end, through PyAV's callback
            pass  # ffmpeg has gone: its exit status and log say why
        finally:
            error = self._wait_for_ffmpeg()
        if error is not None and self.proc.returncode != FFMPEG_SIGNALLED:
            raise OutputError(f"ffmpeg failed: {error}")
        settings = self.settings
        if settings.copy_from or settings.rotation:
            path, seconds = Path(settings.path), settings.frame_seconds
            remux(path, settings.fmt, settings.rotation, settings.beside, seconds, self.placed)

    def _wait_for_ffmpeg(self) -> str | None:
        """End ffmpeg's input and wait for it (killed if it hangs); why it failed, if it did."""
        try:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                return self._error() if self.proc.wait(timeout=120) else None
            except TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return "it did not finish within 120 s"
        finally:
            self.log.close()
