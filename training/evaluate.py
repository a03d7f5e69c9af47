"""Evaluation as deraining papers report it: PSNR and SSIM on RGB and on BT.601 Y.

Writes a per-image CSV and a comparison sheet (rainy | derained | clean) beside the scores.
Real rain has no clean picture; :func:`bars_kept` and :func:`streaks_left` score the two ways
a derainer fails there: erasing thin vertical structure (fence bars) with the streaks, and
leaving the streaks.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from training.data import Pair, read_pair
from training.metrics import luma, psnr, ssim_image
from training.rain import rain_layer, transplant
from training.route import below_input

METRICS = ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y")


@torch.inference_mode()
def derain_rgb(net: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray) -> np.ndarray:
    """One RGB uint8 picture through an RGB network (a model, a bare RGB net, a backend or a
    router); RGB back, as the product gives it (:func:`~training.route.below_input`)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255.0)
    y = below_input(net(x), x)
    return y[0].mul(255.0).round().byte().permute(1, 2, 0).numpy()


def scores(image: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    y, yc = luma(image), luma(clean)
    return {
        "psnr_rgb": psnr(image, clean),
        "ssim_rgb": ssim_image(image, clean),
        "psnr_y": psnr(y, yc),
        "ssim_y": ssim_image(y, yc),
    }


@dataclass(frozen=True)
class EvalResult:
    """Mean scores of the derained images and of the rainy inputs, and per-image rows."""

    derained: dict[str, float]
    rainy: dict[str, float]
    rows: list[dict[str, object]]

    def table(self) -> str:
        lines = [f"{'':10s}" + "".join(f"{m:>10s}" for m in METRICS)]
        for name, values in (("rainy", self.rainy), ("derained", self.derained)):
            lines.append(f"{name:10s}" + "".join(f"{values[m]:10.4f}" for m in METRICS))
        return "\n".join(lines)


def evaluate(
    net: Callable[[torch.Tensor], torch.Tensor],
    pairs: list[Pair],
    out_dir: Path | None = None,
    sheet_images: int = 4,
    rain_scale: float = 1.0,
) -> EvalResult:
    """Score ``net`` on ``pairs``; with ``out_dir``, also write ``scores.csv`` and ``sheet.png``.

    ``rain_scale``: each pair's rain (``rainy - clean``, aligned pairs only) is scaled by this
    before deraining: how a model holds up as the same rain gets lighter or denser."""
    rows, sheet = [], []
    for i, pair in enumerate(pairs):
        rainy, clean = read_pair(pair)
        if rain_scale != 1.0:
            layer = rain_layer(rainy, clean).astype(np.float32) * rain_scale
            rainy = transplant(clean, np.round(layer).astype(np.int16))
        derained = derain_rgb(net, rainy)
        row: dict[str, object] = {"image": pair.rainy.name}
        row.update({f"rainy_{k}": v for k, v in scores(rainy, clean).items()})
        row.update({f"derained_{k}": v for k, v in scores(derained, clean).items()})
        rows.append(row)
        if i < sheet_images:
            sheet.append(np.concatenate([rainy, derained, clean], axis=1))
    mean = lambda prefix: {m: float(np.mean([r[f"{prefix}_{m}"] for r in rows])) for m in METRICS}  # noqa: E731
    result = EvalResult(mean("derained"), mean("rainy"), rows)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "scores.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if sheet:
            write_sheet(out_dir / "sheet.png", sheet)
    return result


#: NTURain ra1 frame 30, and two boxes in it (y0, y1, x0, x1): the wall behind the plants, where
#: thin fence bars stand, and the dark planters, where bright streaks fall
REAL_RAIN_FRAME = "real-rain/nturain-ra1/00031.jpg"
FENCE_BOX = (215, 255, 285, 340)
PLANTER_BOX = (275, 312, 150, 245)

Box = tuple[int, int, int, int]


def _fine(rgb: np.ndarray, box: Box) -> np.ndarray:
    """The fine scale of a picture's grey (minus a Gaussian blur of sigma 3), inside ``box``."""
    y0, y1, x0, x1 = box
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY).astype(np.float32)
    return (grey - cv2.GaussianBlur(grey, (0, 0), 3))[y0:y1, x0:x1]


def bars_kept(derained: np.ndarray, rainy: np.ndarray, box: Box = FENCE_BOX) -> tuple[float, float]:
    """How much of the vertical bars in ``box`` survive deraining: (kept, correlation).

    The fine scale is averaged down the columns of the box: bars standing in the same columns
    add up, streaks falling at random places average out. ``kept`` is the output profile's
    energy over the input's (1: all kept; the input's share of rain makes a perfect derainer
    score a little below 1), ``correlation`` whether what is left stands where the bars stood.
    """
    out, src = _fine(derained, box).mean(axis=0), _fine(rainy, box).mean(axis=0)
    kept = float(np.sqrt((out**2).sum() / max(float((src**2).sum()), 1e-12)))
    return kept, float(np.corrcoef(out, src)[0, 1])


def streaks_left(derained: np.ndarray, rainy: np.ndarray, box: Box = PLANTER_BOX) -> float:
    """The fine scale's spread in ``box``, output over input: over a plain dark surface it is
    mostly streaks (0: all gone; the surface's own grain keeps a perfect derainer above 0)."""
    return float(_fine(derained, box).std() / max(float(_fine(rainy, box).std()), 1e-12))


def write_sheet(path: Path, rows: list[np.ndarray], width: int = 1200) -> None:
    """Stack rows of pictures into one PNG, each row scaled to ``width``."""
    scaled = [
        cv2.resize(r, (width, round(r.shape[0] * width / r.shape[1])), interpolation=cv2.INTER_AREA)
        for r in rows
    ]
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(scaled, axis=0), cv2.COLOR_RGB2BGR))
