"""Before and after in one picture: two small stages around the model.

:class:`KeepOriginals` (before the model) lets each frame carry its source picture along;
:class:`Compose` (after it) puts the source beside or above the result, so neither the model
nor the encoder needs to know the output is a comparison.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import cv2
import numpy as np

from streamderain.frames import Batch, upright
from streamderain.pipeline import Stage


class KeepOriginals(Stage):
    """Each frame keeps its picture as ``original``, through the stages that change ``image``:
    for :class:`Compose`, and for the temporal stage, which gives back what the model took out
    of a still scene in every frame."""

    def process(self, batch: Batch) -> Iterable[Batch]:
        return [Batch(tuple(replace(f, original=f.image) for f in batch.frames))]


class Compose(Stage):
    """Each frame's original and result in one picture: ``side-by-side`` or ``stacked``.

    The halves are put together as a viewer sees them: a phone video's pictures are turned
    upright first (its display rotation applied, and then cleared), so side by side stays side
    by side on screen. Each half is labelled in its top-left corner."""

    LABELS = ("rainy", "derained")

    def __init__(self, mode: str) -> None:
        self.axis = 1 if mode == "side-by-side" else 0

    def process(self, batch: Batch) -> Iterable[Batch]:
        frames = []
        for f in batch.frames:
            if f.original is None:
                raise ValueError("Compose needs KeepOriginals before the model")
            halves = [
                label(upright(p, f.rotation), t) for p, t in zip((f.original, f.image), self.LABELS)
            ]
            image = np.ascontiguousarray(np.concatenate(halves, axis=self.axis))
            frames.append(replace(f, image=image, original=None, rotation=0))
        return [Batch(tuple(frames))]


def label(image: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``image`` with ``text`` in its top-left corner, white on a dark outline."""
    out = np.ascontiguousarray(image).copy()
    scale = max(0.4, min(out.shape[:2]) / 600)
    thickness = max(1, round(scale * 2))
    origin = (round(8 * scale), round(8 * scale) + round(22 * scale))
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(out, text, origin, font, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(out, text, origin, font, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out
