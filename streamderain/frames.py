"""The values that travel between pipeline stages: frames that carry their time, and batches."""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass, replace
from fractions import Fraction

import av
import cv2
import numpy as np
from av.video.reformatter import Interpolation

# A decode -> encode round trip of the test clip (BT.709) came back at 45.0 dB PSNR and 0.9 grey
# levels darker with FFmpeg's defaults (BT.601 matrix, fast rounding), and at 51.5 dB with no
# shift with the source's matrix and these flags.
_TO_RGB = Interpolation.BICUBIC | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
_TO_YUV = Interpolation.AREA | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INP
# swscale's conversion matrix for each AVColorSpace tag; untagged video converts as BT.601.
_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
# Kr and Kb of each of those matrices (H.273), for full range, which is converted here
_LUMA = {
    1: (0.2126, 0.0722),
    4: (0.30, 0.11),
    5: (0.299, 0.114),
    7: (0.212, 0.087),
    9: (0.2627, 0.0593),
}
_PLANAR_YUV = re.compile(r"yuv4[24][024]p(1[02]le)?")


def rgb_image(vf: av.VideoFrame, deep: bool = False) -> np.ndarray:
    """H x W x 3 RGB, converted with the frame's own matrix and range: uint8, or with ``deep``
    uint16 (for sources of more than 8 bits a channel)."""
    return vf.to_ndarray(format="rgb48le" if deep else "rgb24", interpolation=_TO_RGB)


def transparency(vf: av.VideoFrame, deep: bool = False) -> np.ndarray | None:
    """The frame's alpha plane (uint8, or uint16 with ``deep``) where it is not opaque all over:
    a logo's PNG, a palette's clear colour; None for the usual video."""
    if vf.format.name != "pal8" and not any(c.is_alpha for c in vf.format.components):
        return None
    alpha = vf.to_ndarray(format="rgba64le" if deep else "rgba")[..., 3]
    return None if alpha.min() == np.iinfo(alpha.dtype).max else np.ascontiguousarray(alpha)


def decoded_frame(
    vf: av.VideoFrame, index: int, pts: int | None, time_base: Fraction, deep: bool = False
) -> Frame:
    """A decoded picture as the pipeline carries it: RGB in 8 bits, the model's, and with
    ``deep`` the source's 16-bit picture too; its display rotation, transparency and HDR10
    metadata, which the encoder keeps."""
    image = rgb_image(vf, deep)
    return Frame(
        index,
        pts,
        time_base,
        eight_bits(image) if deep else image,
        rotation=round(vf.rotation or 0),
        deep=image if deep else None,
        hdr=HdrLight.of(vf) if deep else None,
        alpha=transparency(vf, deep),
    )


def pixel_bits(pix_fmt: str | None) -> int:
    """Bits per channel of an FFmpeg pixel format (8 where it is unknown)."""
    return av.VideoFormat(pix_fmt).components[0].bits if pix_fmt else 8


def chroma(pix_fmt: str | None) -> str:
    """The colour resolution of a YUV pixel format: "444", "422" or "420" (RGB, grey and
    unknown formats: "420", what plays everywhere)."""
    fmt = av.VideoFormat(pix_fmt) if pix_fmt else None
    if fmt is None or fmt.is_rgb or len(fmt.components) < 3:
        return "420"
    return {(64, 64): "444", (32, 64): "422"}.get(
        (fmt.chroma_width(64), fmt.chroma_height(64)), "420"
    )


def eight_bits(deep: np.ndarray) -> np.ndarray:
    """A uint16 picture rounded to uint8, the model's input."""
    return ((deep.astype(np.uint32) + 128) // 257).astype(np.uint8)


def with_fine_bits(image: np.ndarray, deep: np.ndarray) -> np.ndarray:
    """The uint8 result back in 16 bits, with the bits below 8 of the ``deep`` source it came
    from: a pixel the stages left alone is the source exactly, so smooth skies keep every level."""
    change = image.astype(np.int32) - eight_bits(deep)
    return np.clip(deep.astype(np.int32) + 257 * change, 0, 65535).astype(np.uint16)


def video_frame(
    image: np.ndarray, pix_fmt: str, colorspace: int, color_range: int
) -> av.VideoFrame:
    """RGB (uint8 or uint16) to ``pix_fmt`` with the matrix and range the output is tagged with,
    so a player shows the colours the source had (the encoder's own would always use BT.601)."""
    if color_range == 2 and _PLANAR_YUV.fullmatch(pix_fmt):
        out = _full_range_frame(image, pix_fmt, colorspace)
    else:
        vf = av.VideoFrame.from_ndarray(
            image, format="rgb48le" if image.dtype == np.uint16 else "rgb24"
        )
        out = vf.reformat(
            format=pix_fmt,
            interpolation=_TO_YUV,
            dst_colorspace=_MATRICES.get(colorspace),
            dst_color_range=color_range or None,
        )
    # swscale marks the frame limited range ("tv") even when the source said nothing, and
    # encoders such as libvpx then write that tag: say nothing where the source said nothing.
    out.color_range = color_range
    return out


def _full_range_frame(image: np.ndarray, pix_fmt: str, colorspace: int) -> av.VideoFrame:
    """Full-range planar YUV by H.273's equations, rounded to the nearest level.

    Why not swscale: to full range it truncates the colour planes, 0.5 levels low on average
    (limited range rounds): a webcam's MJPEG or PNG frames in Matroska came back tinted green by
    -0.7 +0.6 -0.7 grey levels in R, G, B (MJPEG), where limited range comes back within 0.01."""
    fmt = av.VideoFormat(pix_fmt)
    peak = (1 << fmt.components[0].bits) - 1
    kr, kb = _LUMA[_MATRICES.get(colorspace, 5)]  # the matrix swscale would use, untagged BT.601
    luma = np.array([kr, 1 - kr - kb, kb])
    matrix = np.vstack([luma, ([0, 0, 1] - luma) / (2 - 2 * kb), ([1, 0, 0] - luma) / (2 - 2 * kr)])
    matrix *= peak / np.iinfo(image.dtype).max
    offset = np.array([[0.0], [(peak + 1) / 2], [(peak + 1) / 2]])
    picture = image.astype(np.float32)
    # one plane at a time: OpenCV's 3-channel result is slow to split, a 2-channel one to compute
    planes = [cv2.transform(picture, row) for row in np.hstack([matrix, offset])[:, None]]
    h, w = image.shape[:2]
    cw, ch = fmt.chroma_width(w), fmt.chroma_height(h)
    if (cw, ch) != (w, h):  # averaged over the 2 or 4 pixels each sample covers
        fy, fx = (1 if ch == h else 2), (1 if cw == w else 2)
        # an odd side's last pixel repeated, so that every sample covers whole pixels
        planes[1:] = (
            cv2.resize(
                cv2.copyMakeBorder(p, 0, fy * ch - h, 0, fx * cw - w, cv2.BORDER_REPLICATE),
                (cw, ch),
                interpolation=cv2.INTER_AREA,
            )
            for p in planes[1:]
        )
    dtype = np.uint16 if peak > 255 else np.uint8
    out = av.VideoFrame(w, h, pix_fmt)
    for plane, values in zip(out.planes, planes):
        rows = np.asarray(memoryview(plane)).view(dtype).reshape(plane.height, -1)
        rows[:, : plane.width] = np.clip(np.rint(values), 0, peak)
    out.colorspace = colorspace
    return out


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` scaled to ``size`` (height, width): by area where it shrinks, bicubic where it
    grows."""
    shrink = image.shape[0] * image.shape[1] > size[0] * size[1]
    return cv2.resize(
        image, size[::-1], interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )


def with_alpha(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA of an RGB picture and its alpha plane, the alpha brought to the picture's bits."""
    if alpha.dtype != image.dtype:  # a 16-bit source's picture written in 8 bits, or the other way
        alpha = eight_bits(alpha) if alpha.dtype == np.uint16 else alpha.astype(np.uint16) * 257
    return np.dstack([image, alpha])


def upright(image: np.ndarray, rotation: float) -> np.ndarray:
    """``image`` turned as a player shows it (``rotation``: degrees counter-clockwise, as
    ``np.rot90`` turns), for outputs that carry no display rotation of their own."""
    return np.rot90(image, round(rotation / 90) % 4)


def expected_frames(
    info: VideoInfo, start: float, end: float | None, max_frames: int | None
) -> int | None:
    """About how many frames a run reads, for its progress bar: the source's count, cut to
    ``start`` and ``end`` (seconds from its start) at its rate, and to ``max_frames``."""
    total = info.frames
    if total is not None and info.rate and (start > 0 or end is not None):
        last = total if end is None else min(total, round(end * info.rate))
        total = max(last - math.ceil(start * info.rate - 1e-9), 0)
    if max_frames is not None:
        total = max_frames if total is None else min(total, max_frames)
    return total


def timeline_shift(start: float, origin: float, first: float | None) -> float:
    """Seconds the output's timeline moves back from the source's, audio with video, so the
    output starts at 0 as FFmpeg's would: to the first frame where a start time was asked for,
    else to the file's start where that is after 0 (MPEG-TS, a camera's recording), or to the
    first frame where that is before 0."""
    if first is None:
        return 0.0
    if start > 0:
        return first
    return origin if origin > 0 else min(first, 0.0)


@dataclass(frozen=True)
class HdrLight:
    """HDR10's static metadata: the display a PQ video was graded on and its light levels. A
    player maps the video onto its own screen by them; without them it guesses (often too dark)."""

    mastering: tuple[int, ...] | None = None  # green, blue, red, white x/y in 1/50000; L in 1/10000
    content: tuple[int, int] | None = None  # MaxCLL, MaxFALL in cd/m2

    @classmethod
    def of(cls, vf: av.VideoFrame) -> HdrLight | None:
        """What a decoded frame carries of it (FFmpeg's side data), or None."""
        raw, light = (
            _side_data(vf, name) for name in ("MASTERING_DISPLAY_METADATA", "CONTENT_LIGHT_LEVEL")
        )
        mastering = None
        if raw is not None and len(raw) >= 88 and all(struct.unpack_from("<2i", raw, 80)):
            q = struct.unpack_from("<20i", raw)  # AVRationals: R, G, B, white x/y, min, max
            value = [q[i] / q[i + 1] if q[i + 1] else 0.0 for i in range(0, 20, 2)]
            xy = [round(v * 50000) for v in (*value[2:6], *value[0:2], *value[6:8])]
            mastering = (*xy, round(value[9] * 10000), round(value[8] * 10000))
        content = (
            struct.unpack_from("<2I", light) if light is not None and len(light) >= 8 else None
        )
        return cls(mastering, content) if mastering or content else None

    def x265_params(self) -> str:
        """The same for x265 (``-x265-params``), which writes it into the HEVC stream."""
        params = ["hdr10=1"]
        if m := self.mastering:
            params.append("master-display=G({},{})B({},{})R({},{})WP({},{})L({},{})".format(*m))
        if self.content:
            params.append("max-cll={},{}".format(*self.content))
        return ":".join(params)


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
    bits: int = 8  # per channel, of the source's pixel format as it is decoded
    chroma: str = "420"  # the source's colour resolution (4:2:2, 4:4:4 kept by x264 and x265)
    origin: float = 0.0  # seconds a file's timeline starts at (its earliest stream's start)


@dataclass(frozen=True)
class Frame:
    """One picture with its place in time.

    Args:
        index: position in the decoded stream, from 0.
        pts: presentation timestamp in ``time_base`` units (``None`` if the source has none).
        time_base: seconds per ``pts`` unit.
        image: H x W x 3 uint8, RGB.
        original: the source picture, kept only where a later stage shows before and after.
        rotation: how a player should rotate the picture, degrees counter-clockwise.
        name: the stem of the file the picture came from (image folders), for outputs that
            keep names.
        deep: the source picture in 16 bits, where it has more than 8 a channel (10-bit HDR
            video): the encoder gives the result back the source's finer levels.
        hdr: the HDR10 metadata of the video the frame is from, which the encoder keeps.
        alpha: the source's transparency (H x W), where it has some: pictures that hold it
            (PNG, TIFF, WebP) keep it.
    """

    index: int
    pts: int | None
    time_base: Fraction
    image: np.ndarray
    original: np.ndarray | None = None
    rotation: int = 0
    name: str | None = None
    deep: np.ndarray | None = None
    hdr: HdrLight | None = None
    alpha: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.image.shape[0], self.image.shape[1]

    @property
    def seconds(self) -> float | None:
        return None if self.pts is None else float(self.pts * self.time_base)

    def with_image(self, image: np.ndarray) -> Frame:
        """The same frame (time, original, rotation) holding another picture."""
        return replace(self, image=image)


@dataclass(frozen=True)
class Batch:
    """Frames of one size, in order, processed together."""

    frames: tuple[Frame, ...]

    def __post_init__(self) -> None:
        if not self.frames:
            raise ValueError("a batch holds at least one frame")
        sizes = {f.size for f in self.frames}
        if len(sizes) > 1:
            raise ValueError(f"a batch holds frames of one size, got {sorted(sizes)}")

    @property
    def images(self) -> np.ndarray:
        """N x H x W x 3 uint8."""
        return np.stack([f.image for f in self.frames])

    def with_images(self, images: np.ndarray) -> Batch:
        return Batch(tuple(f.with_image(img) for f, img in zip(self.frames, images)))

    def __len__(self) -> int:
        return len(self.frames)


def _side_data(vf: av.VideoFrame, name: str) -> bytes | None:
    """One kind of a frame's side data by its FFmpeg name. Looked up by key, the one form PyAV has
    kept: iterating the container gave the data before PyAV 18 and gives the kinds since."""
    try:
        return bytes(vf.side_data[name])
    except KeyError:
        return None
