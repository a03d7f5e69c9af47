"""Writes frames to a video file (PyAV, or an ``ffmpeg`` binary) or a folder of images, safely.

The output goes to a temporary file beside the target and is renamed into place when it is
closed, so an existing file is untouched until there is something to replace it with, and an
interrupted run still leaves a playable file holding what was done.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import ffmpeg
import numpy as np

from streamderain.decoder import VideoInfo
from streamderain.errors import OutputError, reason
from streamderain.frames import Batch, Frame, video_frame

log = logging.getLogger(__name__)

# container suffix -> (FFmpeg format, default video codec)
CONTAINERS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
}
# Audio/subtitle codecs each container takes as they are (None: all of them).
COPYABLE: dict[str, set[str] | None] = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac", "mov_text"},
    "mov": {"aac", "mp3", "ac3", "alac", "pcm_s16le", "pcm_s24le", "mov_text"},
    "matroska": None,
    "webm": {"opus", "vorbis", "webvtt"},
}
# Audio a container cannot take is re-encoded to its usual codec at a transparent bit rate;
# subtitles it cannot take are left out, with a warning.
AUDIO_FALLBACK: dict[str, tuple[str, int]] = {
    "mp4": ("aac", 256_000),
    "mov": ("aac", 256_000),
    "webm": ("libopus", 192_000),
}


def copies_as_is(fmt: str, codec: str) -> bool:
    allowed = COPYABLE.get(fmt, set())
    return allowed is None or codec in allowed


# Visually lossless defaults: CRF 18 for H.264, 30 for VP9 (constant quality mode).
DEFAULT_CRF = {"libx264": 18, "libx265": 20, "libvpx-vp9": 30}
DEFAULT_PRESET = "fast"
ENCODERS = ("pyav", "ffmpeg")


# live output scheme -> FFmpeg format
LIVE_OUTPUTS: dict[str, str] = {"rtsp": "rtsp", "rtmp": "flv", "udp": "mpegts", "srt": "mpegts"}


def live_target_format(target: str | Path) -> str | None:
    """The FFmpeg format of a live output URL, or None for a file or folder."""
    text = str(target)
    if "://" not in text:
        return None
    scheme = text.split("://", 1)[0].lower()
    if scheme not in LIVE_OUTPUTS:
        raise OutputError(f"{text}: cannot publish to {scheme}:// (use {', '.join(LIVE_OUTPUTS)})")
    return LIVE_OUTPUTS[scheme]


def is_folder_target(path: str | Path) -> bool:
    """An output with no suffix (or an existing folder) is a folder of PNG frames."""
    p = Path(path)
    return p.is_dir() or str(path).endswith(os.sep) or p.suffix == ""


def partial_path(target: Path) -> Path:
    """The hidden file beside ``target`` that a file output is written to until it is done."""
    return target.with_name(f".{target.stem}.partial{target.suffix}")


def check_target(path: str | Path) -> None:
    """Refuse an output name whose container is unknown, before any work is done."""
    if live_target_format(path) or is_folder_target(path):
        return
    if Path(path).suffix.lower() not in CONTAINERS:
        known = ", ".join(sorted(CONTAINERS))
        raise OutputError(f"{path}: unknown output container (use one of {known}, or a folder)")


def compose(original: np.ndarray, derained: np.ndarray, mode: str) -> np.ndarray:
    """Before and after in one picture: ``side-by-side`` or ``stacked``."""
    axis = 1 if mode == "side-by-side" else 0
    return np.concatenate([original, derained], axis=axis)


class _AudioReencoder:
    """Decodes one source audio stream and encodes it again for a container that cannot take it."""

    def __init__(
        self, source: av.audio.stream.AudioStream, output: av.container.OutputContainer, fmt: str
    ) -> None:
        codec, bit_rate = AUDIO_FALLBACK[fmt]
        rates = av.Codec(codec, "w").audio_rates
        rate = source.rate if not rates or source.rate in rates else max(rates)
        self.stream = output.add_stream(codec, rate=rate)
        self.stream.layout = source.layout.name
        self.stream.bit_rate = bit_rate
        self.decoder = source.codec_context

    def packets(self, packet: av.Packet | None, shift: float) -> list[av.Packet]:
        """Encoded packets for one source packet (None: flush), ``shift`` seconds earlier."""
        out = []
        for frame in self.decoder.decode(packet):
            if frame.pts is not None:
                frame.pts -= round(shift / frame.time_base)
            out += self.stream.encode(frame)
        if packet is None:
            out += self.stream.encode(None)
        return out


class _StreamCopier:
    """Brings a source file's audio and subtitles into the output, in time with the video.

    Packets are copied as they are where the container takes their codec; audio it cannot take
    is re-encoded (``AUDIO_FALLBACK``), subtitles it cannot take are left out with a warning.
    """

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
        self.map: dict[int, av.stream.Stream] = {}
        self.reencoders: dict[int, _AudioReencoder] = {}
        for s in [*self.input.streams.audio, *self.input.streams.subtitles]:
            name = s.codec_context.name if s.codec_context else "unknown"
            if copies_as_is(fmt, name):
                self.map[s.index] = output.add_stream_from_template(s)
            elif s.type == "audio" and fmt in AUDIO_FALLBACK:
                self.reencoders[s.index] = _AudioReencoder(s, output, fmt)
                log.info("audio stream %d (%s) re-encoded for %s", s.index, name, fmt)
            else:
                log.warning(
                    "%s stream %d (%s) does not fit %s: left out", s.type, s.index, name, fmt
                )
        wanted = [self.input.streams[i] for i in [*self.map, *self.reencoders]]
        self._packets = self.input.demux(*wanted) if wanted else iter(())
        self._held: av.Packet | None = None
        self.output = output

    def copy_until(self, seconds: float | None) -> None:
        """Mux every packet that starts before ``seconds`` of output time (all, if None)."""
        while True:
            packet = self._held or next(self._packets, None)
            self._held = None
            if packet is None:
                break
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
            reencoder = self.reencoders.get(packet.stream.index)
            if reencoder is not None:
                self.output.mux(reencoder.packets(packet, self.offset))
                continue
            shift = round(self.offset / packet.time_base)
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = self.map[packet.stream.index]
            self.output.mux(packet)
        if seconds is None:
            for reencoder in self.reencoders.values():
                self.output.mux(reencoder.packets(None, self.offset))

    def close(self) -> None:
        self.input.close()


def video_options(
    codec: str, crf: int | None, preset: str | None, live_rate: float | None = None
) -> dict[str, str]:
    """Quality settings that add no visible loss, whichever backend writes the file.

    With ``live_rate`` (a live publish): low-latency settings, no B-frames, a keyframe every
    second so a viewer joining late waits at most that long.
    """
    options = {}
    crf = crf if crf is not None else DEFAULT_CRF.get(codec)
    if crf is not None:
        options["crf"] = str(crf)
    if codec in ("libx264", "libx265"):
        options["preset"] = preset or DEFAULT_PRESET
    if codec == "libvpx-vp9":
        options.update({"b": "0", "row-mt": "1", "deadline": "good", "cpu-used": "4"})
    if live_rate and codec in ("libx264", "libx265"):
        gop = str(max(1, round(live_rate)))
        options.update({"preset": preset or "veryfast", "tune": "zerolatency", "g": gop, "bf": "0"})
    return options


def pixel_format(codec: str, width: int, height: int) -> str:
    """4:2:0 plays everywhere; x264/x265 cannot subsample odd sizes, so those keep 4:4:4."""
    odd = width % 2 or height % 2
    return "yuv444p" if odd and codec in ("libx264", "libx265") else "yuv420p"


@dataclass(frozen=True)
class OutputSettings:
    """How the video is written: the same for every backend."""

    fmt: str
    codec: str
    options: dict[str, str]
    info: VideoInfo
    keep_aspect: bool

    def video_frame(self, image: np.ndarray) -> av.VideoFrame:
        """The picture in the output's pixel format, colour matrix and range."""
        h, w = image.shape[:2]
        pix_fmt = pixel_format(self.codec, w, h)
        return video_frame(image, pix_fmt, self.info.colorspace, self.info.color_range)


class _PyAVWriter:
    """Encodes with PyAV's own FFmpeg, copying the source's audio and subtitles beside."""

    def __init__(
        self,
        path: Path | str,
        settings: OutputSettings,
        first: Frame,
        size: tuple[int, int],
        copy_from: str | None,
        start: float,
        end: float | None,
    ) -> None:
        self.path, self.settings = path, settings
        options = {"rtsp_transport": "tcp"} if settings.fmt == "rtsp" else {}
        self.container = av.open(
            str(path), mode="w", format=settings.fmt, options=options, timeout=10.0
        )
        self.copier: _StreamCopier | None = None
        try:
            self.stream = self._add_video(settings, first, size)
            if copy_from:
                offset = 0.0 if first.seconds is None or start <= 0 else first.seconds
                self.copier = _StreamCopier(
                    copy_from, self.container, settings.fmt, start, end, offset
                )
        except BaseException:
            self.container.close()
            raise

    def _add_video(self, settings: OutputSettings, first: Frame, size: tuple[int, int]):
        h, w = size
        stream = self.container.add_stream(settings.codec, rate=settings.info.rate or 25)
        stream.width, stream.height = w, h
        stream.pix_fmt = pixel_format(settings.codec, w, h)
        stream.time_base = first.time_base
        ctx = stream.codec_context
        ctx.time_base = first.time_base
        for tag in ("color_range", "colorspace", "color_primaries", "color_trc"):
            value = getattr(settings.info, tag)
            if value:
                setattr(ctx, tag, value)
        if settings.info.sample_aspect_ratio and settings.keep_aspect:
            ctx.sample_aspect_ratio = settings.info.sample_aspect_ratio
        if first.rotation:
            stream.set_display_rotation(first.rotation)
        stream.options = settings.options
        return stream

    def write(self, image: np.ndarray, pts: int, time_base: Fraction) -> None:
        vf = self.settings.video_frame(image)
        vf.pts, vf.time_base = pts, time_base
        self._mux(self.stream.encode(vf))
        if self.copier is not None:
            self.copier.copy_until(float(pts * time_base))

    def _mux(self, packets) -> None:
        try:
            self.container.mux(packets)
        except OSError as exc:
            raise OutputError(f"cannot write ({exc.strerror or exc})") from None

    def close(self) -> None:
        try:
            self._mux(self.stream.encode(None))
            if self.copier is not None:
                self.copier.copy_until(None)
        finally:
            if self.copier is not None:
                self.copier.close()
            self.container.close()


class _FFmpegWriter:
    """Pipes frames, with their timestamps, to an ``ffmpeg`` binary that encodes them.

    For encoders PyAV's own FFmpeg lacks (NVENC, VAAPI, ...). Frames travel as raw video in
    NUT, which keeps every timestamp, already in the output's pixel format and colour matrix;
    ffmpeg copies audio and subtitles from the source (audio the container cannot take is
    re-encoded, as with PyAV). NUT carries no display rotation and ffmpeg before 6.0 has no
    ``-display_rotation``, so a rotation is stamped on afterwards.
    """

    def __init__(
        self,
        path: Path,
        settings: OutputSettings,
        first: Frame,
        size: tuple[int, int],
        copy_from: str | None,
        start: float,
        end: float | None,
    ) -> None:
        binary = shutil.which("ffmpeg")
        if binary is None:
            raise OutputError("--encoder ffmpeg needs an ffmpeg binary on PATH")
        h, w = size
        video = ffmpeg.input("pipe:", format="nut")
        streams = [video["v"]]
        if copy_from:
            timing = {"ss": start} if start > 0 else {}
            if end is not None:
                timing["t"] = end - start
            source = ffmpeg.input(copy_from, **timing)
            streams += [source["a?"], source["s?"]]
            audio = _audio_args(copy_from, settings.fmt)
        else:
            audio = {}
        info = settings.info
        tags = {
            "color_range": info.color_range,
            "colorspace": info.colorspace,
            "color_primaries": info.color_primaries,
            "color_trc": info.color_trc,
        }
        out = ffmpeg.output(
            *streams,
            str(path),
            format=settings.fmt,
            vcodec=settings.codec,
            pix_fmt=pixel_format(settings.codec, w, h),
            scodec="copy",
            fps_mode="passthrough",
            enc_time_base="-1",
            **{k: v for k, v in tags.items() if v},
            **audio,
            **settings.options,
        )
        args = ffmpeg.compile(
            out.global_args("-nostdin", "-loglevel", "error"), cmd=binary, overwrite_output=True
        )
        self.path, self.settings, self.rotation = path, settings, first.rotation
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=self.log)
        self.container = av.open(self.proc.stdin, mode="w", format="nut")
        self.stream = self.container.add_stream("rawvideo", rate=info.rate or 25)
        self.stream.width, self.stream.height = w, h
        self.stream.pix_fmt = pixel_format(settings.codec, w, h)
        self.stream.time_base = first.time_base
        self.stream.codec_context.time_base = first.time_base

    def write(self, image: np.ndarray, pts: int, time_base: Fraction) -> None:
        vf = self.settings.video_frame(image)
        vf.pts, vf.time_base = pts, time_base
        try:
            self.container.mux(self.stream.encode(vf))
        except OSError:
            raise OutputError(f"ffmpeg stopped: {self._error()}") from None

    def _error(self) -> str:
        self.proc.wait(timeout=30)
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.returncode}"

    def close(self) -> None:
        try:
            self.container.mux(self.stream.encode(None))
            self.container.close()
        except OSError:
            pass
        finally:
            self.proc.stdin.close()
            code = self.proc.wait(timeout=120)
            if code != 0:
                raise OutputError(f"ffmpeg failed: {self._error()}")
            self.log.close()
        if self.rotation:
            _stamp_rotation(Path(self.path), self.settings.fmt, self.rotation)


def _audio_args(source: str, fmt: str) -> dict[str, str | int]:
    """ffmpeg's audio options: copy if the container takes every audio stream, else re-encode."""
    with av.open(source) as src:
        codecs = [s.codec_context.name for s in src.streams.audio if s.codec_context]
    if all(copies_as_is(fmt, c) for c in codecs) or fmt not in AUDIO_FALLBACK:
        return {"acodec": "copy"}
    codec, bit_rate = AUDIO_FALLBACK[fmt]
    return {"acodec": codec, "audio_bitrate": bit_rate}


def _stamp_rotation(path: Path, fmt: str, degrees: int) -> None:
    """Give a finished file's video a display rotation by remuxing it (packets copied)."""
    stamped = path.with_name(f"{path.name}.rotated")
    try:
        with av.open(str(path)) as src, av.open(str(stamped), "w", format=fmt) as dst:
            out = {s.index: dst.add_stream_from_template(s) for s in src.streams}
            out[src.streams.video[0].index].set_display_rotation(degrees)
            for packet in src.demux():
                if packet.dts is not None:
                    packet.stream = out[packet.stream.index]
                    dst.mux(packet)
    except (av.error.FFmpegError, OSError) as exc:
        stamped.unlink(missing_ok=True)
        raise OutputError(f"cannot set the display rotation ({reason(exc)})") from None
    os.replace(stamped, path)


class _FolderWriter:
    """One PNG per frame, numbered from 1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        path.mkdir(parents=True, exist_ok=True)

    def write(self, image: np.ndarray, pts: int, time_base: Fraction) -> None:
        self.count += 1
        target = self.path / f"frame-{self.count:06d}.png"
        if not cv2.imwrite(str(target), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OutputError(f"{target}: cannot write image")

    def close(self) -> None:
        pass


class Encoder:
    """The pipeline's last stage: sets itself up from the first frame and rejects any that differ.

    A live output (``rtsp://``, ``rtmp://``, ``udp://``, ``srt://``) is published as frames
    come, with low-latency settings, paced by the source timestamps when the source is a file.

    Args:
        target: output file (its suffix picks the container), folder, or live URL.
        info: the source's properties, kept in the output (colour tags, aspect ratio).
        codec: video codec (default: H.264 for mp4/mov/mkv, VP9 for webm).
        crf: constant quality (default: visually lossless for the codec).
        preset: x264 speed preset.
        encoder: ``pyav`` (PyAV's FFmpeg) or ``ffmpeg`` (an ffmpeg binary on PATH).
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
        encoder: str = "pyav",
        copy_streams_from: str | None = None,
        start: float = 0.0,
        end: float | None = None,
        compare: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        check_target(target)
        if encoder not in ENCODERS:
            raise OutputError(f"unknown encoder {encoder!r} (use {' or '.join(ENCODERS)})")
        self.live_format = live_target_format(target)
        self.name = str(target)
        self.target = Path(target)
        self.info = info
        self.codec_name, self.crf, self.preset = codec, crf, preset
        self.backend = encoder
        self.copy_from = copy_streams_from
        self.start, self.end = start, end
        self.compare = compare
        self.options = dict(options or {})
        self.frames_written = 0
        self.folder = not self.live_format and is_folder_target(self.target)
        # A file from a file can wait for the model's spare CPU; anything live keeps its pace.
        self.yields_cpu = not (self.live_format or info.live)
        self._pace: tuple[float, float] | None = None  # (wall clock, source seconds) at start
        self._size: tuple[int, int] | None = None
        self._writer: _PyAVWriter | _FFmpegWriter | _FolderWriter | None = None
        self._last_pts: int | None = None
        self._offset_pts: int | None = None
        if self.live_format:
            self._tmp = None
        elif self.folder:
            self._tmp = self.target.with_name(f".{self.target.name}.partial")
        else:
            self._tmp = partial_path(self.target)

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
        if self._writer is None:
            self._open(frame, image.shape[:2])
        elif image.shape[:2] != self._size:
            raise OutputError(
                f"{self.name}: frame {frame.index} is {image.shape[1]}x{image.shape[0]}, "
                f"the output is {self._size[1]}x{self._size[0]} (size changes are not supported)"
            )
        pts = frame.pts if frame.pts is not None else frame.index
        if self._offset_pts is None:
            self._offset_pts = pts if self.start > 0 else 0
        pts -= self._offset_pts
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1
        self._last_pts = pts
        if self.live_format and not self.info.live:
            self._wait_for(float(pts * frame.time_base))
        try:
            self._writer.write(np.ascontiguousarray(image), pts, frame.time_base)
        except OutputError as exc:
            raise OutputError(f"{self.name}: {exc}") from None
        self.frames_written += 1

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
            if self.folder:
                self._writer = _FolderWriter(self._tmp)
                return
            if self.live_format:
                fmt, default_codec = self.live_format, "libx264"
            else:
                fmt, default_codec = CONTAINERS[self.target.suffix.lower()]
            codec = self.codec_name or default_codec
            live_rate = float(self.info.rate or 25) if self.live_format else None
            options = {**video_options(codec, self.crf, self.preset, live_rate), **self.options}
            settings = OutputSettings(fmt, codec, options, self.info, keep_aspect=not self.compare)
            backend = _PyAVWriter if self.backend == "pyav" else _FFmpegWriter
            self._writer = backend(
                self._tmp or self.name,
                settings,
                first,
                size,
                self.copy_from,
                self.start,
                self.end,
            )
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            self._discard()
            raise OutputError(f"{self.name}: cannot create output ({reason(exc)})") from None

    def finish(self) -> list[Batch]:
        """Flush, close and move the output into place; with no frame at all, leave nothing."""
        if self.frames_written == 0:
            self._discard()
            return []
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except OutputError as exc:
            raise OutputError(f"{self.name}: {exc}") from None
        if self._tmp is None:
            return []
        if self.folder:
            self.target.mkdir(parents=True, exist_ok=True)
            for f in sorted(self._tmp.iterdir()):
                os.replace(f, self.target / f.name)
            self._tmp.rmdir()
        else:
            os.replace(self._tmp, self.target)
        return []

    def abort(self) -> None:
        """After an error elsewhere: keep what was written as a playable file, if anything."""
        if self._writer is None and self.frames_written:
            return  # finished already
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
        if self._tmp is None:
            return
        if self._tmp.is_dir():
            shutil.rmtree(self._tmp)
        elif self._tmp.exists():
            self._tmp.unlink()
