"""Synthetic rain drawn over clean images, and rain that falls coherently through video frames.

Rain is built the way published rain sets are: sparse drops, blurred for width, smeared by a
line kernel into streaks of a given length and angle, then blended onto the picture (screen or
additive), seen through a veil of atmospheric light for heavy rain (JORDER's model,
O = a (B + S) + (1 - a) A). Drops are particles: in video they fall along their streak direction
from frame to frame instead of being redrawn.

Real rain layers come from aligned published pairs, where ``rainy - clean`` is exactly the
rain: :class:`RainLayers` cuts them up and :func:`transplant` adds them onto other pictures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

Range = tuple[float, float]


@dataclass(frozen=True)
class RainStyle:
    """Ranges each rain layer draws its look from.

    Args:
        density: drops per pixel, per layer.
        length: streak length in pixels.
        angle: the picture's main fall direction, degrees from vertical.
        angle_spread: how far one layer's direction strays from the main one, degrees.
        width: Gaussian sigma of a drop, pixels (streak thickness).
        brightness: peak streak brightness, 0 to 1.
        layers: how many layers (depths) of rain, inclusive range.
        haze: veiling amount for heavy rain, 0 to 1 (1 - a in JORDER's model).
        speed: fall per video frame, in streak lengths.
        screen_blend: probability of a screen blend (else additive).
        atmosphere: brightness of the veil's atmospheric light A, 0 to 1.
        floor: mean brightness, 0 to 1, of a mist of faint, out-of-focus drops falling with
            the streaks: the additive floor that heavy rain leaves between its streaks.
    """

    density: Range
    length: Range
    angle: Range
    angle_spread: float
    width: Range
    brightness: Range
    layers: tuple[int, int]
    haze: Range
    speed: Range
    screen_blend: float = 0.5
    atmosphere: Range = (0.9, 0.9)
    floor: Range = (0.0, 0.0)


PRESETS: dict[str, RainStyle] = {
    "light": RainStyle(
        density=(0.0003, 0.0015),
        length=(8.0, 40.0),
        angle=(-25.0, 25.0),
        angle_spread=4.0,
        width=(0.3, 0.8),
        brightness=(0.08, 0.35),
        layers=(1, 3),
        haze=(0.0, 0.0),
        speed=(0.6, 1.2),
    ),
    "heavy": RainStyle(
        density=(0.0008, 0.0025),
        length=(20.0, 60.0),
        angle=(-30.0, 30.0),
        angle_spread=6.0,
        width=(0.5, 1.4),
        brightness=(0.2, 0.7),
        layers=(2, 4),
        haze=(0.08, 0.3),
        speed=(0.6, 1.2),
    ),
}
# Long thin streaks of one direction, mostly added on: the Photoshop-style recipe (noise, motion
# blur, add) of the published light synthetic sets such as Rain100L; "light" is shorter, sparser
# and varies more, like rain seen by a camera.
PRESETS["light-long"] = RainStyle(
    density=(0.0006, 0.002),
    length=(20.0, 60.0),
    angle=(-20.0, 20.0),
    angle_spread=2.0,
    width=(0.3, 0.7),
    brightness=(0.15, 0.5),
    layers=(1, 2),
    haze=(0.0, 0.0),
    speed=(0.6, 1.2),
    screen_blend=0.3,
)
# Heavy streaks without the veil, for training: a network taught to lift haze learns to darken
# every bright picture (measured: up to -38 grey levels on Rain100L, PSNR-Y below the input's).
PRESETS["heavy-streaks"] = replace(PRESETS["heavy"], haze=(0.0, 0.0))
# The published heavy sets (JORDER's Rain100H / RainTrainH): several dense layers of wide, bright
# streaks at different angles, added on, under a veil of accumulated rain. Fitted to the 13
# training layers of ../shared/data/train-pairs/jorder-small (see ``python -m training rain-stats``).
PRESETS["jorder-heavy"] = RainStyle(
    density=(0.0005, 0.002),
    length=(15.0, 70.0),
    angle=(-20.0, 20.0),
    angle_spread=5.0,
    width=(0.5, 1.2),
    brightness=(0.12, 0.45),
    layers=(2, 4),
    haze=(0.1, 0.4),
    speed=(0.6, 1.2),
    screen_blend=0.0,
    atmosphere=(0.7, 1.0),
)
# The same, fitted closer to the real layers by `python -m training rain-stats` (near-vertical,
# longer, thinner streaks: veil 43 / streaks 14 / width 2.2 / run 9 px against the real layers'
# 43 / 13 / 2.3 / 11); found while stage 4 trained on "jorder-heavy", for the next stage.
PRESETS["jorder-heavy-fit"] = replace(
    PRESETS["jorder-heavy"],
    density=(0.0004, 0.0016),
    length=(40.0, 110.0),
    angle=(-10.0, 10.0),
    angle_spread=3.0,
    width=(0.35, 0.9),
    brightness=(0.18, 0.6),
)
# JORDER's heavy layers are additive: fitting rainy = a * clean + b on each training pair's
# darkest layer pixels gives a = 0.94-1.0 (a veil of atmospheric light would need a well
# below 1), so their veil is a floor of faint rain between the streaks, not haze. The same
# streaks on such a floor (rain-stats --draws 12: veil 45 / streaks 16 / p50 42 / p90 112 /
# width 2.3 / run 13 px against the real layers' 43 / 13 / 41 / 100 / 2.3 / 11).
PRESETS["jorder-additive"] = replace(
    PRESETS["jorder-heavy-fit"], brightness=(0.15, 0.5), haze=(0.0, 0.0), floor=(0.06, 0.2)
)
# Everything from sparse drizzle to dense heavy streaks, no veil: for training a network that
# meets no look of rain it has not seen (a rain set's recipe or a camera's), rather than one.
PRESETS["varied"] = RainStyle(
    density=(0.0003, 0.003),
    length=(6.0, 80.0),
    angle=(-30.0, 30.0),
    angle_spread=5.0,
    width=(0.25, 1.2),
    brightness=(0.08, 0.7),
    layers=(1, 3),
    haze=(0.0, 0.0),
    speed=(0.6, 1.2),
    screen_blend=0.4,
)


# The mist under a floor: many wide, faint drops, so that it reads as a soft, even veil.
MIST_DENSITY, MIST_WIDTH = (0.015, 0.03), (1.5, 3.0)


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


def line_kernel(length: float, angle_deg: float) -> np.ndarray:
    """A normalised anti-aliased line of ``length`` pixels at ``angle_deg`` from vertical."""
    size = int(math.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = (size - 1) / 2
    dx = math.sin(math.radians(angle_deg)) * (length - 1) / 2
    dy = math.cos(math.radians(angle_deg)) * (length - 1) / 2
    shift = 4
    p1 = (round((c - dx) * 2**shift), round((c - dy) * 2**shift))
    p2 = (round((c + dx) * 2**shift), round((c + dy) * 2**shift))
    cv2.line(kernel, p1, p2, 1.0, 1, cv2.LINE_AA, shift)
    return kernel / kernel.sum()


@dataclass
class _Layer:
    x: np.ndarray
    y: np.ndarray
    value: np.ndarray
    kernel: np.ndarray
    sigma: float
    gain: float
    step: tuple[float, float]


class RainField:
    """Rain over a canvas of fixed size: one picture's rain, or one video's, frame by frame.

    Args:
        height, width: canvas size in pixels.
        style: ranges the layers are drawn from.
        rng: the source of all randomness (seed it for reproducible rain).
    """

    def __init__(self, height: int, width: int, style: RainStyle, rng: np.random.Generator) -> None:
        self.height, self.width = height, width
        self.style = style
        main_angle = _uniform(rng, style.angle)
        self.haze = _uniform(rng, style.haze)
        self.atmosphere = np.float32(_uniform(rng, style.atmosphere))
        self.screen = bool(rng.random() < style.screen_blend)
        self.tint = np.float32(1.0) - rng.uniform(0.0, 0.08, 3).astype(np.float32)
        n_layers = int(rng.integers(style.layers[0], style.layers[1] + 1))
        self.layers = [self._make_layer(rng, main_angle, style) for _ in range(n_layers)]
        floor = _uniform(rng, style.floor)
        if floor > 0:
            mist_style = replace(style, density=MIST_DENSITY, width=MIST_WIDTH, brightness=(0.5, 1))
            mist = self._make_layer(rng, main_angle, mist_style)
            mist.gain *= floor / max(float(self._render(mist).mean()), 1e-6)
            self.layers.append(mist)

    def _make_layer(self, rng: np.random.Generator, main_angle: float, s: RainStyle) -> _Layer:
        angle = main_angle + float(rng.uniform(-s.angle_spread, s.angle_spread))
        length = _uniform(rng, s.length)
        count = rng.poisson(_uniform(rng, s.density) * self.height * self.width)
        kernel = line_kernel(length, angle)
        sigma = _uniform(rng, s.width)
        probe = np.zeros((kernel.shape[0] * 2 + 9,) * 2, np.float32)
        probe[probe.shape[0] // 2, probe.shape[1] // 2] = 1.0
        peak = self._smear(probe, kernel, sigma).max()
        fall = _uniform(rng, s.speed) * length
        step = (fall * math.sin(math.radians(angle)), fall * math.cos(math.radians(angle)))
        lo, hi = s.brightness
        return _Layer(
            x=rng.uniform(0, self.width, count),
            y=rng.uniform(0, self.height, count),
            value=rng.uniform(lo, hi, count).astype(np.float32),
            kernel=kernel,
            sigma=sigma,
            gain=1.0 / max(float(peak), 1e-6),
            step=step,
        )

    @staticmethod
    def _smear(drops: np.ndarray, kernel: np.ndarray, sigma: float) -> np.ndarray:
        blurred = cv2.GaussianBlur(drops, (0, 0), sigma) if sigma > 0.05 else drops
        return cv2.filter2D(blurred, -1, kernel, borderType=cv2.BORDER_CONSTANT)

    def _render(self, layer: _Layer) -> np.ndarray:
        drops = np.zeros((self.height, self.width), np.float32)
        xi = np.floor(layer.x).astype(np.intp) % self.width
        yi = np.floor(layer.y).astype(np.intp) % self.height
        np.add.at(drops, (yi, xi), layer.value)
        return self._smear(drops, layer.kernel, layer.sigma) * layer.gain

    def streaks(self) -> np.ndarray:
        """The rain layer now: H x W float32 in [0, 1]."""
        total = np.zeros((self.height, self.width), np.float32)
        for layer in self.layers:
            total += self._render(layer)
        return np.clip(total, 0.0, 1.0)

    def advance(self) -> None:
        """Let every drop fall one frame along its layer's direction (wrapping round the canvas)."""
        for layer in self.layers:
            layer.x = (layer.x + layer.step[0]) % self.width
            layer.y = (layer.y + layer.step[1]) % self.height

    def apply(self, clean: np.ndarray) -> np.ndarray:
        """The clean uint8 RGB picture with this rain blended on."""
        if clean.shape[:2] != (self.height, self.width):
            raise ValueError(f"picture is {clean.shape[:2]}, rain is {(self.height, self.width)}")
        img = clean.astype(np.float32) / 255.0
        rain = self.streaks()[..., None] * self.tint
        out = 1 - (1 - img) * (1 - rain) if self.screen else img + rain
        if self.haze > 0:
            out = np.minimum(out, 1.0) * (1 - self.haze) + self.haze * self.atmosphere
        return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def add_rain(clean: np.ndarray, style: RainStyle | str, rng: np.random.Generator) -> np.ndarray:
    """One rainy picture from a clean uint8 RGB picture."""
    style = PRESETS[style] if isinstance(style, str) else style
    return RainField(clean.shape[0], clean.shape[1], style, rng).apply(clean)


def rain_video(
    frames: list[np.ndarray], style: RainStyle | str, rng: np.random.Generator
) -> list[np.ndarray]:
    """Rainy copies of consecutive clean frames, the same drops falling from frame to frame."""
    style = PRESETS[style] if isinstance(style, str) else style
    field = RainField(frames[0].shape[0], frames[0].shape[1], style, rng)
    out = []
    for frame in frames:
        out.append(field.apply(frame))
        field.advance()
    return out


def rain_layer(rainy: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """The rain of an aligned pair as uint8 (``rainy - clean``); refuses pairs that are not aligned.

    In an aligned pair rain only ever adds light, so a negative difference means the two pictures
    are not the same scene pixel for pixel (other crops, other colours)."""
    if rainy.shape != clean.shape:
        raise ValueError(f"rainy {rainy.shape} and clean {clean.shape} differ in size")
    diff = rainy.astype(np.int16) - clean.astype(np.int16)
    if diff.min() < 0:
        raise ValueError(f"not an aligned pair: rainy - clean goes down to {diff.min()}")
    return diff.astype(np.uint8)


def transplant(clean: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """``clean + layer``, clipped: a real rain layer added onto another uint8 RGB picture."""
    if clean.shape != layer.shape:
        raise ValueError(f"picture is {clean.shape}, rain layer is {layer.shape}")
    return np.minimum(clean.astype(np.int16) + layer, 255).astype(np.uint8)


class RainLayers:
    """Real rain layers to cut patches from: scaled in size and strength, flipped, turned.

    Args:
        layers: uint8 H x W x 3 rain layers (from :func:`rain_layer`).
        strength: range of the factor the layer's values are scaled by.
        zoom: range of the factor a layer is resized by before cutting (streak width, length).
    """

    def __init__(
        self,
        layers: list[np.ndarray],
        strength: Range = (0.3, 1.0),
        zoom: Range = (0.6, 1.2),
    ) -> None:
        if not layers:
            raise ValueError("no rain layers")
        self.layers, self.strength, self.zoom = layers, strength, zoom

    def __len__(self) -> int:
        return len(self.layers)

    def sample(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """A ``height`` x ``width`` uint8 patch of one layer, changed as the ranges allow."""
        layer = self.layers[int(rng.integers(len(self.layers)))]
        zoom = max(_uniform(rng, self.zoom), height / layer.shape[0], width / layer.shape[1])
        if abs(zoom - 1.0) > 1e-3:
            size = (
                max(width, round(layer.shape[1] * zoom)),
                max(height, round(layer.shape[0] * zoom)),
            )
            layer = cv2.resize(layer, size, interpolation=cv2.INTER_LINEAR)
        y = int(rng.integers(0, layer.shape[0] - height + 1))
        x = int(rng.integers(0, layer.shape[1] - width + 1))
        patch = layer[y : y + height, x : x + width]
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        if rng.random() < 0.5:
            patch = patch[::-1, ::-1]
        scaled = patch.astype(np.float32) * _uniform(rng, self.strength)
        return np.ascontiguousarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8))


def _mean_run(mask: np.ndarray) -> float:
    """Mean length of the runs of True along each row of ``mask``."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    starts, ends = np.nonzero(edges == 1), np.nonzero(edges == -1)
    lengths = ends[1] - starts[1]
    return float(lengths.mean()) if lengths.size else 0.0


def layer_stats(layer: np.ndarray) -> dict[str, float]:
    """What a rain layer (``rainy - clean``, uint8) looks like, in numbers to compare rain by.

    ``veil``: the layer's smooth part (median over 15 px), grey levels; ``streaks``: mean of
    what stands above it; ``p50``/``p90``/``p99``: the per-pixel histogram; ``width`` and
    ``length``: mean horizontal and vertical run of streak pixels (more than 12 grey levels
    above the veil), pixels."""
    gray = layer.max(axis=2) if layer.ndim == 3 else layer
    veil = cv2.medianBlur(gray, 15).astype(np.float32)
    above = gray.astype(np.float32) - veil
    mask = above > 12
    p50, p90, p99 = np.percentile(gray, (50, 90, 99))
    return {
        "veil": float(veil.mean()),
        "streaks": float(np.clip(above, 0, None).mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "width": _mean_run(mask),
        "length": _mean_run(mask.T),
    }
