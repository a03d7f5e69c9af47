"""Real clips for tests, made with PyAV from the shared clean video frames plus synthetic rain."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

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
