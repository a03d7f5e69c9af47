"""Real clips for tests, made with PyAV from the shared clean video frames plus synthetic rain."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av
import cv2
import numpy as np

from tests.conftest import DATA
from training.data import list_images
from training.rain import rain_video

CLIP_DIR = DATA / "clean" / "video" / "davis-car-roundabout"
VFR_STEPS_MS = (40, 40, 80, 33, 47, 40, 120, 40)


def clean_frames(n: int, size: tuple[int, int] = (256, 144)) -> list[np.ndarray]:
    """``n`` consecutive real frames, RGB uint8, resized to ``size`` (width, height)."""
    files = list_images(CLIP_DIR)[:n]
    return [
        cv2.cvtColor(
            cv2.resize(cv2.imread(str(f)), size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB
        )
        for f in files
    ]


def h264_stream(
    out: av.container.OutputContainer, size: tuple[int, int], rate: int
) -> av.video.stream.VideoStream:
    """An H.264 video stream of ``size`` (width, height) at ``rate`` frames/s in ``out``."""
    stream = out.add_stream("libx264", rate=rate)
    stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
    return stream


def encode_frames(
    out: av.container.OutputContainer, stream: av.video.stream.VideoStream, images: list[np.ndarray]
) -> None:
    """``images`` into ``stream``, one frame a 1/rate tick from 0, then the encoder flushed."""
    tb = 1 / Fraction(stream.codec_context.framerate)
    for i, image in enumerate(images):
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = i, tb
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def make_clip(
    path: Path,
    frames: list[np.ndarray],
    *,
    vfr: bool = False,
    audio: bool = False,
    codec: str | None = None,
    tags: bool = False,
    start_ms: int = 0,
) -> list[int]:
    """Write ``frames`` to ``path`` (lossless-ish H.264 or the container's codec); returns pts (ms).

    ``start_ms``: where the timeline starts, as in a camera's recording hours in."""
    codec = codec or ("libvpx-vp9" if path.suffix == ".webm" else "libx264")
    tb = Fraction(1, 1000)
    pts, t = [], start_ms
    for i in range(len(frames)):
        pts.append(t)
        t += VFR_STEPS_MS[i % len(VFR_STEPS_MS)] if vfr else 40
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=25)
        v.width, v.height = frames[0].shape[1], frames[0].shape[0]
        v.pix_fmt = "yuv420p"
        v.time_base = tb
        v.codec_context.time_base = tb
        v.options = {"crf": "10"} if codec == "libx264" else {"crf": "10", "b": "0"}
        if tags:
            ctx = v.codec_context
            ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc = 1, 1, 1, 1
            v.set_display_rotation(90)
        a = None
        if audio:
            a = out.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48000)
            a.layout = "mono"
        for img, p in zip(frames, pts, strict=True):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = p, tb
            out.mux(v.encode(vf))
        out.mux(v.encode(None))
        if a is not None:
            _write_tone(out, a, seconds=(pts[-1] + 40 - start_ms) / 1000, start_ms=start_ms)
    return pts


def interlaced_clip(path: Path, n: int, size: tuple[int, int] = (160, 120)) -> None:
    """``n`` frames of a bright bar moving 8 pixels a field, as an interlaced camera films it:
    each frame's even lines from one moment, its odd lines from the next (H.264 field coding)."""

    def moment(i: int) -> np.ndarray:
        image = np.full((size[1], size[0], 3), 60, np.uint8)
        image[:, (8 * i) % size[0] :][:, :24] = 230
        return image

    woven = []
    for k in range(n):
        image = moment(2 * k)
        image[1::2] = moment(2 * k + 1)[1::2]
        woven.append(image)
    with av.open(str(path), "w") as out:
        stream = h264_stream(out, size, 25)
        stream.codec_context.flags |= (
            av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
        )
        stream.codec_context.options = {"x264opts": "tff=1", "crf": "10"}
        encode_frames(out, stream, woven)


def combing(image: np.ndarray) -> float:
    """How far each line is from the mean of its neighbours (grey levels): high where a frame's
    two fields show a moving edge at two places, near 0 for a whole picture of vertical bars."""
    grey = image.astype(np.float64).mean(axis=2)
    return float(np.abs(grey[1:-1] - (grey[:-2] + grey[2:]) / 2).mean())


def _write_tone(
    out: av.container.OutputContainer, stream, seconds: float, start_ms: int = 0
) -> None:
    rate = 48000
    n = int(seconds * rate)
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.float32)
    chunk = 960
    for i in range(0, n, chunk):
        part = tone[i : i + chunk]
        frame = av.AudioFrame.from_ndarray(part[None], format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = i + start_ms * rate // 1000
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def rainy_frames(
    n: int, size=(256, 144), seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    clean = clean_frames(n, size)
    return rain_video(clean, "light", np.random.default_rng(seed)), clean


def decode_all(path: Path) -> tuple[list[np.ndarray], list[float], av.video.stream.VideoStream]:
    """Every frame (RGB) and its time in seconds; raises if the file does not decode fully."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        images, times = [], []
        for f in c.decode(s):
            images.append(f.to_ndarray(format="rgb24"))
            times.append(float(f.pts * f.time_base))
        return images, times, s


def display_rotation(path: Path) -> float:
    """The first frame's display rotation, degrees counter-clockwise."""
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).rotation


def packets(path: Path, kind: str) -> list[tuple[float, bytes]]:
    with av.open(str(path)) as c:
        streams = getattr(c.streams, kind)
        if not streams:
            return []
        return [
            (float(p.pts * p.time_base), bytes(p))
            for p in c.demux(streams[0])
            if p.size and p.pts is not None
        ]


def flash_and_beep(
    path: Path,
    seconds: float = 4.0,
    at: float = 1.2,
    *,
    sound: tuple[float, float] = (0.0, 1e9),
    size=(320, 180),
) -> None:
    """A camera's MPEG-TS with sound, interleaved as a camera sends it: a grey picture that
    turns white, and silence that beeps (1 kHz), both from ``at`` for 0.4 s (25 frames/s, AAC
    mono at 48 kHz): where the flash and the beep land in an output shows the two in step.

    ``sound``: the seconds the sound plays (a sound that begins after FFmpeg's 0.1 s probe of a
    live source, one that stops)."""
    rate, fps = 48_000, 25
    per_frame = rate // fps
    with av.open(str(path), "w", format="mpegts") as out:
        video = h264_stream(out, size, fps)
        video.options = {"preset": "ultrafast", "g": str(fps)}
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(round(seconds * fps)):
            lit = at <= i / fps < at + 0.4
            image = np.full((size[1], size[0], 3), 235 if lit else 60, np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(video.encode(frame))
            if not sound[0] <= i / fps < sound[1]:
                continue
            t = (i * per_frame + np.arange(per_frame)) / rate
            beep = ((t >= at) & (t < at + 0.4)) * 0.5 * np.sin(2 * np.pi * 1000 * t)
            chunk = av.AudioFrame.from_ndarray(beep.astype(np.float32)[None], "flt", "mono")
            chunk.sample_rate, chunk.pts = rate, i * per_frame
            chunk.time_base = Fraction(1, rate)
            out.mux(audio.encode(chunk))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))


class Heard(NamedTuple):
    """Where :func:`flash_and_beep`'s flashes and beeps start in an output (seconds), the span
    of its picture and of its sound, and the pictures no sound plays under."""

    flashes: list[float]
    beeps: list[float]
    picture: tuple[float, float]
    sound: tuple[float, float]
    silent: list[float]


def onsets(path: Path) -> Heard:
    with av.open(str(path)) as c:
        shown = [
            (float(f.time), f.to_ndarray(format="gray").mean() > 150) for f in c.decode(video=0)
        ]
    with av.open(str(path)) as c:
        assert c.streams.audio, f"{path.name} has no sound"
        heard = [
            (float(f.time), _level(f.to_ndarray()[0]), f.sample_rate) for f in c.decode(audio=0)
        ]
    flashes = [t for (t, lit), (_, was) in zip(shown[1:], shown, strict=False) if lit and not was]
    beeps, was = [], False
    for t, samples, rate in heard:
        loud = np.abs(samples) > 0.1
        if loud.any() and not was:
            beeps.append(t + int(np.argmax(loud)) / rate)
        was = bool(loud[-rate // 500 :].any())  # the beep's last 2 ms: zero crossings are quiet
    starts = np.array([t for t, _, _ in heard])
    ends = starts + np.array([len(x) / r for _, x, r in heard])
    played = np.searchsorted(starts, [t for t, _ in shown], side="right") - 1
    silent = [t for (t, _), k in zip(shown, played, strict=True) if k < 0 or ends[k] < t - 0.03]
    step = shown[1][0] - shown[0][0]
    return Heard(flashes, beeps, (shown[0][0], shown[-1][0] + step), (starts[0], ends[-1]), silent)


def _level(samples: np.ndarray) -> np.ndarray:
    """Samples as fractions of full scale, whatever their format (FLAC's are integers)."""
    return samples / np.iinfo(samples.dtype).max if samples.dtype.kind == "i" else samples
