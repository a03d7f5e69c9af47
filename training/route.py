"""``auto``: the light-rain model, or the heavy-rain one where the rain leaves a veil.

Why: each bundled model is best on its own rain. The light ``dcsfn-lite`` leaves most of the
veil of heavy rain (mean output - clean +9 to +10 grey levels on the held-out heavy pairs);
``dcsfn-lite-heavy`` removes it but loses 1 to 2 dB in light rain and on streaks without a
veil. Both are the same network, so what the heavy model takes out beyond the light one, on
average over a picture (:func:`veil_gap`), says which rain a picture has: it is the veil.

The threshold was set on training-side data only (:func:`calibration_gaps`, ``python -m
training gaps``: seeded synthetic rain on Kodak pictures that the validation does not use). On
its 36 pictures, with the light model of 2026-12-07 (the soup of stages 30 and 31) and the heavy
one of stage 4n, the heavy model is ahead by +1.74 dB on average in JORDER-style veiled rain and
behind in light rain (-2.34) and on veil-free streaks (-1.18); the gaps overlap (light rain up to
2.4 grey levels, veil-free streaks up to 2.5, veiled rain from -0.0), and any threshold between
5.6 and 7.6 gains the most (+0.64 dB a picture over the light model alone). :data:`VEIL_GAP` was
set to the middle of 6.0 to 7.1, the best with the light model of 2026-12-06, and stays inside
the new range (with the light model before that, 4.8 to 5.8 and the threshold 5.3).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from training.weights import DerainModel, load_model

AUTO = "auto"
LIGHT_MODEL, HEAVY_MODEL = "dcsfn-lite", "dcsfn-lite-heavy"
#: the heavy model runs where it takes out this many grey levels (luma, mean) more than the light
VEIL_GAP = 6.55
#: on video, frames between two checks of which model the rain needs (2 s at 25 frames/s)
VIDEO_CHECK_EVERY = 50

_LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)

Forward = Callable[[Tensor], Tensor]


def veil_gaps(light: Tensor, heavy: Tensor) -> Tensor:
    """Mean luma of the light model's output minus the heavy one's, in grey levels (0-255), of
    each picture of a batch N x 3 x H x W of RGB in [0, 1]."""
    luma = _LUMA.to(light.device, light.dtype)
    return ((light.clamp(0, 1) - heavy.clamp(0, 1)) * luma).sum(1).mean((1, 2)) * 255.0


def veil_gap(light: Tensor, heavy: Tensor) -> float:
    """:func:`veil_gaps` over the whole batch (frames of one scene)."""
    return float(veil_gaps(light, heavy).mean())


class Router:
    """The light model's forward, or the heavy one's, chosen by :func:`veil_gap`.

    Both models run on the first call and again once ``every`` images have gone through since
    the last check; between checks the last choice runs alone, so a video pays for the second
    model on one batch in ``every`` frames. The first check of a stream chooses; after it, the
    model changes only when two checks in a row ask for the other one, so a gap that hovers
    about :data:`VEIL_GAP` does not switch the model (and the picture's brightness) back and
    forth. ``every=1`` chooses for each call on its own (pictures, not one scene).

    A :class:`FlipAverage` model is judged on its own run, before the mirror's is added: the
    choice is then the one the threshold was set on (bare models), on files and live sources
    alike, and a check costs one mirror run, the chosen model's, not two.
    """

    def __init__(self, light: Forward, heavy: Forward, every: int = 1) -> None:
        self.light, self.heavy = (
            f if isinstance(f, FlipAverage) else FlipAverage(f, on=False) for f in (light, heavy)
        )
        self.heavy_chosen = False
        self.reset(every)

    def __call__(self, x: Tensor) -> Tensor:
        if self._since_check is not None and self._since_check < self.every:
            self._since_check += x.shape[0]
            return self.heavy(x) if self.heavy_chosen else self.light(x)
        light, heavy = self.light.forward(x), self.heavy.forward(x)
        if self.every == 1 and x.shape[0] > 1:  # pictures batched together: each its own
            wants = veil_gaps(light, heavy) > VEIL_GAP
            if wants.any() and not wants.all():
                heavy_out, light_out = self.heavy.finish(x, heavy), self.light.finish(x, light)
                return torch.where(wants.view(-1, 1, 1, 1), heavy_out, light_out)
        wants_heavy = veil_gap(light, heavy) > VEIL_GAP
        if self._since_check is None or self.every == 1 or wants_heavy == self._last_wish:
            self.heavy_chosen = wants_heavy
        self._last_wish = wants_heavy
        self._since_check = x.shape[0]
        chosen, out = (self.heavy, heavy) if self.heavy_chosen else (self.light, light)
        return chosen.finish(x, out)

    def reset(self, every: int | None = None) -> None:
        """A new stream: check on its first frames (and then every ``every`` images)."""
        if every is not None:
            if every < 1:
                raise ValueError(f"every must be 1 or more, got {every}")
            self.every = every
        self._since_check: int | None = None  # images since the last check; None: none yet
        self._last_wish: bool | None = None  # what the last check asked for (True: heavy)


def below_input(derained: Tensor, rainy: Tensor) -> Tensor:
    """The network's output in [0, 1] and nowhere brighter than the rainy input.

    Rain only ever adds light (in every aligned heavy pair ``rainy - clean >= 0``), so a pixel
    the network brightens is an error: with ``auto`` + mirror average taking the pixel-wise
    minimum lifts the light validation 34.62 -> 34.67 dB and Rain100L 33.30 -> 33.35 (brightness
    +1.2 -> +1.0) and leaves the held-out heavy pairs as they were (README, Models)."""
    return torch.minimum(derained.clamp(0, 1), rainy)


class FlipAverage:
    """A forward averaged, while ``on``, with its run on the left-right mirror image, at about
    twice its cost.

    Rain and scenes look as natural mirrored, and the network's errors on the two are partly
    independent, so averaging cancels some of them: with ``auto``'s models +0.3 to +0.5 dB on
    the held-out heavy pairs, light validation and Rain100L (README, Models). With ``scale``
    below 1 the mirror image is also made that much smaller (antialiased) and its output scaled
    back (bicubic): the errors of a run at another size cancel more than a mirror's alone, where
    the rain is heavy enough that the blur of rescaling costs less than they do
    (:func:`mirror_scale`).
    """

    def __init__(self, forward: Forward, scale: float = 1.0, on: bool = True) -> None:
        self.forward, self.scale, self.on = forward, scale, on

    def __call__(self, x: Tensor) -> Tensor:
        return self.finish(x, self.forward(x))

    def finish(self, x: Tensor, first: Tensor) -> Tensor:
        """``first``, the forward's run on ``x``, averaged with its mirror run while ``on``."""
        return (first + self.mirror_run(x)) * 0.5 if self.on else first

    def mirror_size(self, height: int, width: int) -> tuple[int, int]:
        """The size the mirror image of a ``height`` x ``width`` frame runs at."""
        return round(height * self.scale), round(width * self.scale)

    def mirror_run(self, x: Tensor) -> Tensor:
        """The forward's run on the mirror image of ``x`` (at ``scale``), mirrored back."""
        mirror = x.flip(-1)
        if self.scale == 1.0:
            return self.forward(mirror).flip(-1)
        # resized in fp32: PyTorch's antialiasing has no half-precision kernels on CPUs
        small = self.mirror_size(x.shape[-2], x.shape[-1])
        down = F.interpolate(mirror.float(), size=small, mode="bilinear", antialias=True)
        out = self.forward(down.to(x.dtype)).float()
        return F.interpolate(out, size=x.shape[-2:], mode="bicubic").to(x.dtype).flip(-1)


def mirror_scale(model: DerainModel) -> float:
    """The size of the mirror image :class:`FlipAverage` runs ``model`` on, from its weights'
    metadata (``mirror_scale``), chosen per model on training-side data; 1 (the same size)
    where the weights name none."""
    return float(model.info.metadata.get("mirror_scale", 1.0))


def model_names(name: str | None) -> tuple[str, ...]:
    """The models a ``--model`` value loads: ``auto`` (or None) is two, anything else one."""
    return (LIGHT_MODEL, HEAVY_MODEL) if name in (None, AUTO) else (name,)


def load_forward(
    name: str | None, every: int = 1, wrap: Callable[[DerainModel], Forward] | None = None
) -> Forward:
    """A bundled model name, a model file or ``auto`` (a :class:`Router` checking every
    ``every`` images) as one forward function; ``wrap`` puts each model on a backend (or
    :class:`FlipAverage`)."""
    wrap = wrap or (lambda model: model)
    if name == AUTO:
        return Router(wrap(load_model(LIGHT_MODEL)), wrap(load_model(HEAVY_MODEL)), every)
    return wrap(load_model(name))


def evaluation_forward(
    name: str, flip: bool, int8: bool = False, openvino: bool = False, every: int = 1
) -> Forward:
    """:func:`load_forward` for scoring, on this process's torch threads, averaged with the
    mirror image if ``flip``.

    ``int8`` runs each bundled model's shipped 8-bit network, as the product does on this CPU;
    ``openvino`` runs the float network through OpenVINO: the same pixels as PyTorch (to 2.4e-7)
    in about half the time, for long scorings of one model (it converts each set of weights
    once, so training snapshots are scored in PyTorch)."""
    from streamderain.backends import OpenVINOBackend

    threads = torch.get_num_threads()

    def wrap(model: DerainModel) -> Forward:
        forward = OpenVINOBackend(model, threads, int8) if int8 or openvino else model
        return FlipAverage(forward, mirror_scale(model)) if flip else forward

    return load_forward(name, every, wrap)


#: the rains :func:`calibration_gaps` draws: the first two want the light model, the last the heavy
CALIBRATION_RAINS = ("light", "heavy-streaks", "jorder-heavy")


def calibration_gaps(
    light: Forward, heavy: Forward, data_root: Path, images: int = 12
) -> dict[str, list[tuple[float, float]]]:
    """Per rain of :data:`CALIBRATION_RAINS`: for each picture, the :func:`veil_gap` and how many
    dB (PSNR-Y) the heavy model scores above the light one.

    The pictures are Kodak's from the 13th on (the training validation uses the first 12), under
    seeded synthetic rain: training-side data, so the threshold is not set on what measures it.
    """
    from training.data import DatasetError, list_images, read_rgb
    from training.evaluate import derain_rgb
    from training.metrics import luma, psnr
    from training.rain import add_rain

    files = list_images(data_root / "clean" / "images" / "kodak24")[12 : 12 + images]
    if not files:  # a packed data root holds the validation's 12 only
        raise DatasetError(f"{data_root}: no Kodak pictures past the validation's 12")
    pictures = [read_rgb(f, 512) for f in files]
    out: dict[str, list[tuple[float, float]]] = {}
    for i, rain in enumerate(CALIBRATION_RAINS):
        rng = np.random.default_rng(7 + i)
        rows = []
        for clean in pictures:
            rainy = add_rain(clean, rain, rng)
            by_light, by_heavy = derain_rgb(light, rainy), derain_rgb(heavy, rainy)
            as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
            gap = veil_gap(as_tensor(by_light), as_tensor(by_heavy))
            ahead = psnr(luma(by_heavy), luma(clean)) - psnr(luma(by_light), luma(clean))
            rows.append((gap, ahead))
        out[rain] = rows
    return out


def best_thresholds(rows: list[tuple[float, float]]) -> tuple[float, float, float]:
    """The thresholds that gain most when the heavy model runs above them and the light one
    below, from (gap, heavy model's lead in dB) per picture: the open interval (low, high)
    between two pictures' gaps, and the mean gain a picture over the light model alone."""
    rows = sorted(rows)
    gains = [sum(lead for _, lead in rows[i:]) for i in range(len(rows) + 1)]
    i = max(range(len(gains)), key=gains.__getitem__)
    low = rows[i - 1][0] if i > 0 else float("-inf")
    high = rows[i][0] if i < len(rows) else float("inf")
    return low, high, gains[i] / len(rows)
