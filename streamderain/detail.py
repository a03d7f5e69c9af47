"""What the model took out of a still scene in every frame, given back.

Why: rain never stays put, so what the model removed from a pixel (its source minus its output)
in every frame of a still camera's window is not rain. It is either the veil of heavy rain,
which is smooth and rightly removed, or scene the model mistook for rain: fence bars, twigs,
the grain of a wall. The temporal stage (:mod:`streamderain.temporal`) gives the second back.

How, per frame: the per-pixel minimum of what was removed, over the frame and the neighbours
whose plain pictures agree with it there (a blurred grey difference under :data:`LIMIT`, or
under the stage's rain level where heavy rain raises it: what the model leaves of heavy rain
makes neighbours differ by more than :data:`LIMIT`, which kept 11% of them on a clip of heavy
streaks; an envelope test lets a moving object's edge pass), less its smooth part (a median over
:data:`SIZE` pixels, so that dense thin bars are not taken for veil), weighted by the share of
neighbours that agree, so nothing comes back where something moves. Windows of fewer than
:data:`MIN_FRAMES` frames give nothing back.

Measured by ``python -m training eval-video`` (README, "Using the neighbouring frames"): light
rain on a still camera +5.2 to +6.3 dB over the model instead of +0.5 to +2.4 without this step;
the looser test in heavy rain lifts heavy streaks by +0.1 to +0.5 dB more.
Tried and dropped: a mean instead of a median for the smooth part (dense thin bars then lift the
picture around them by 10 grey levels), the minimum over every frame instead of the agreeing
ones (it pulls a passing object's surroundings onto it), the envelope test (an object's edge
passes it), the minimum of the rainy sources themselves less the median picture (+0.04 to +1.0
dB more on the noise-free evaluation clips, but it takes the low tail of a camera's noise: the
error on a noisy still clip fell only to 0.71-0.75 of the input's, where the test asks < 0.6;
0.63-0.67 with the mean of the two lowest sources), windows of 3 frames (a slowly moving camera
looked still: -3.4 dB on one DAVIS frame), and the same step on a moving camera's warped frames
(+0.02 to +0.10 dB in light rain, down to -0.48 dB in heavy rain on DAVIS).
"""

from __future__ import annotations

import cv2
import numpy as np

#: the smooth part (veil) is a median over squares of this side, in full-size pixels, computed
#: on frames sampled this many times smaller
SIZE, SCALE = 36, 4
#: neighbours count where their blurred grey picture differs from the frame's by less than this,
#: or than the stage's rain level where heavy rain raises it above this
LIMIT = 8.0
#: fewer frames neither leave heavy rain out of the minimum nor tell a still camera from a slow one
MIN_FRAMES = 5


def persistent(removed: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    """The detail to add to a frame's output (int16, H x W x 3), in whole grey levels towards 0.

    Args:
        removed: what the model took out of the frame (first) and of each neighbour: source
            minus output, int16, H x W x 3.
        masks: per neighbour, where it agrees with the frame (uint8, 0 or 255, H x W).
    """
    least = removed[0].copy()
    agreeing = np.zeros(least.shape[:2], np.uint8)
    for other, mask in zip(removed[1:], masks):
        cv2.copyTo(cv2.min(least, other), mask, least)
        cv2.add(agreeing, 1, dst=agreeing, mask=mask)
    h, w = least.shape[:2]
    small = (max(w // SCALE, 1), max(h // SCALE, 1))
    sampled = cv2.resize(least, small, interpolation=cv2.INTER_NEAREST)
    # medianBlur takes 8-bit pictures at this size: -255..255 halved into 0..255
    halved = ((sampled + 256) // 2).astype(np.uint8)
    side = SIZE // SCALE | 1
    veil = cv2.medianBlur(halved, side).astype(np.float32) * 2 - 255.5  # the middle of a bin
    veil = cv2.GaussianBlur(veil, (0, 0), side / 4)
    veil = cv2.resize(veil, (w, h), interpolation=cv2.INTER_LINEAR)
    share = agreeing.astype(np.float32) / len(masks)
    detail = cv2.subtract(least, veil, dtype=cv2.CV_32F) * share[..., None]
    # the veil lies between bins, so halves are common; OpenCV rounds them differently from one
    # version to the next (5.1 adds in float32), so they are rounded here, towards 0
    return np.trunc(detail).astype(np.int16)
