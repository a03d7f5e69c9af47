"""The temporal stage: each derained frame combined with its neighbours where the scene holds still.

Why: the model derains one frame at a time, so what it misses (faint streaks, blotches, its own
noise) changes from frame to frame and flickers, while the scene behind stays put. Where a pixel
shows the same scene in the frames around it, the per-pixel median of those frames keeps the
scene and drops what came and went; where something moves, the frame stays as the model made it.

How, per output frame t:

- Motion is analysed on a half-size grey copy. The camera's motion between consecutive frames is
  a similarity transform fitted (RANSAC) to tracked corners (``calcOpticalFlowPyrLK``). The
  camera counts as still when the transform from the oldest held frame to the newest moves no
  corner by :data:`STILL_PX`; only then are frames combined, as they are (no resampling).
  (Pairwise estimates alone cannot tell: under heavy rain they stray 0.2-0.6 px a frame, as far
  as a slow pan moves; over several frames the two part.)
- A neighbour j counts, pixel by pixel, only where it agrees with frame t; elsewhere frame t's
  own value stands in for it, so the median falls back to the per-frame result wherever the
  neighbours disagree. The two are compared through their envelopes, the minimum of a frame and
  the frames beside it (rain only adds light, and rarely covers a pixel in consecutive frames),
  blurred over 5 x 5 half-size pixels. Envelopes hide what only frame t holds, so where frame t
  is brighter than its neighbours' median over a patch wider than rain (a bright object faster
  than its own width, a lamp's first frame on), no neighbour counts.
- A still camera tolerates envelope differences up to twice the rain level measured in the frame
  (the median difference to the next frame where the envelopes agree), kept between
  :data:`STILL_MIN` and :data:`STILL_MAX` grey levels: light rain keeps it strict, so slow
  textured objects are not smoothed; heavy rain loosens it, so its blotches are taken out.
- A moving camera keeps the model's frames: after a warp, parallax, non-rigid motion and
  sub-pixel errors look like rain (warped neighbours gained at most +0.02 dB in heavy rain on
  the DAVIS clips and lost up to 0.5 dB in light rain).
- On a still camera, what the model took out of every frame of the window is given back where
  it is fine-scale scene, not veil (:mod:`streamderain.detail`).
- Then no pixel of a still frame stays brighter than the darkest of its agreeing rainy sources
  plus the camera's noise (a floor): rain only adds light, and in 7 to 10 frames nearly every
  pixel was dry once, where the median keeps a downpour that covers a pixel in most frames.
  The margin (:data:`FLOOR_MIN` plus :data:`FLOOR_GAPS` times the median gap between the two
  darkest sources) keeps a dry, noisy camera as bright as it was; no pixel is lowered by more
  than the still camera's tolerance, so nothing that moved leaves a dark trail.
- Files look ahead (frames held back, written in order); live sources use past frames only.

Measured (``python -m training eval-video``; README, "Using the neighbouring frames"): on a
still camera +4.3 to +6.3 dB PSNR-Y in light rain, +0.5 to +6.0 in heavy rain, flicker down 1.6
to 8.7 times; veiled heavy rain gains least (the model's veil does not change between frames).

Tried and dropped: a median of the whole window without the motion test (ghosts), or of only
the agreeing frames (smears moving edges, -1.6 to -2.2 dB on them); lower order statistics (win
in heavy rain only by offsetting the veil; ghost in light rain); a background from a longer
median (erases moving objects, -2 to -6 dB); a fine-scale difference test on still cameras
(rejects the pixels that hold rain); the still camera's limits after a (cubic) warp (+0.5 dB
on a shaking camera, -0.3 to -5 dB on DAVIS).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

from streamderain import detail
from streamderain.frames import Batch, Frame
from streamderain.pipeline import Stage

#: motion is analysed on frames this many times smaller (per side)
SCALE = 2
#: box blur (half-size pixels) over which two frames are compared
BLUR = 5
#: a camera whose frames moved no corner by this much (full-size pixels) is still
STILL_PX = 0.75
#: a frame this far (full-size pixels) from the one before moved: no window holding it combines,
#: however still its ends are (a camera bumped for a frame). Under heavy streaks the estimate
#: strays past 1.5 px (eval-video's street clip lost 1.5 dB at 1.5; 2 to 3 keep its figures)
MOVED_PX = 2.5
#: frames whose median grey levels differ by more are lit differently (a lightning flash, a lamp
#: switched on) and are not combined: their envelopes agree, so a flash was taken for rain
LIGHT_STEP = 4.0
#: a still camera accepts envelope differences below twice the rain level, within these bounds
STILL_MIN, STILL_MAX = 4.0, 24.0
#: past frames combined with each frame: the more there are, the surer a pixel's persistent
#: detail is free of rain (live sources have no look ahead to help)
HISTORY = 6
#: corners tracked from each frame
CORNERS = 200
#: a still frame is at most FLOOR_MIN grey levels above its darkest agreeing source, plus
#: FLOOR_GAPS times the median gap to the second darkest (the camera's noise; about 0.3-0.5 of its
#: deviation, read on one pixel in NOISE_STEP x NOISE_STEP)
FLOOR_MIN, FLOOR_GAPS, NOISE_STEP = 4.0, 3.0, 4

_KERNEL = np.ones((3, 3), np.uint8)
#: a frame brighter than its neighbours' median over a patch this wide (half-size pixels) holds
#: something that came in: a fast bright object or a light switched on, which envelopes hide;
#: what the model leaves of rain is thinner (at 5 and 7 it took heavy streaks for objects)
OBJECT_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))


@dataclass
class _Held:
    """A frame in the window, with what motion analysis keeps of it."""

    frame: Frame
    grey: np.ndarray  # half-size grey
    corners: np.ndarray | None = None  # features to track from here, found when first needed
    still: bool = False  # the camera did not move since the oldest frame held with this one
    moved: bool = False  # the camera moved since the frame before (or it could not be told)
    removed: np.ndarray | None = None  # source minus picture (int16), found when first needed
    lit: dict[int, bool] = field(default_factory=dict)  # frame index -> lit alike with it


def _median(values: list[np.ndarray]) -> np.ndarray:
    """Per-element median of same-shaped uint8 arrays (an odd-even transposition sort)."""
    a = list(values)
    n = len(a)
    for r in range(n):
        for i in range(r % 2, n - 1, 2):
            lo = np.minimum(a[i], a[i + 1])
            a[i + 1] = np.maximum(a[i], a[i + 1])
            a[i] = lo
    if n % 2:
        return a[n // 2]
    return cv2.addWeighted(a[n // 2 - 1], 0.5, a[n // 2], 0.5, 0)


def _lit_alike(a: _Held, b: _Held) -> bool:
    """Whether two frames are lit alike: rain changes a minority of pixels, so the median
    difference is the light's (read on one half-size pixel in 4 x 4, once a pair)."""
    if b.frame.index not in a.lit:
        diff = cv2.subtract(a.grey[::4, ::4], b.grey[::4, ::4], dtype=cv2.CV_16S)
        a.lit[b.frame.index] = b.lit[a.frame.index] = abs(float(np.median(diff))) <= LIGHT_STEP
    return a.lit[b.frame.index]


def _blurred_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return cv2.blur(cv2.absdiff(a, b), (BLUR, BLUR))


def _arrived(grey: np.ndarray, neighbours: np.ndarray, limit: float) -> np.ndarray:
    """Where a frame is brighter than the median of its neighbours by more than ``limit`` over a
    patch wider than rain (``OBJECT_KERNEL``): a bright object that moved faster than its own
    width in a frame, or a light's first frame on, which envelopes take for rain."""
    brighter = cv2.compare(cv2.subtract(grey, neighbours), limit, cv2.CMP_GT)
    return cv2.dilate(cv2.morphologyEx(brighter, cv2.MORPH_OPEN, OBJECT_KERNEL), OBJECT_KERNEL)


def _displacement(m: np.ndarray, height: int, width: int) -> float:
    """How far ``m`` moves the farthest corner of a ``width`` x ``height`` frame, in pixels."""
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], float).T
    return float(np.abs((m @ corners)[:2] - corners[:2]).max())


class TemporalFilter:
    """One stream's temporal filter: frames in, in order; the same frames out, in order.

    Only ``image`` changes; index, pts, time_base and the rest are kept. A frame of another size
    than the previous one ends the window (what is held comes out first) and starts a new one.

    Args:
        lookahead: frames held back, so each output may use frames after it (0 for live
            sources: every frame comes straight back). The first one serves the motion test,
            the others are also combined.
        history: past frames combined with each frame.
    """

    def __init__(self, lookahead: int = 3, history: int = HISTORY) -> None:
        if lookahead < 0:
            raise ValueError(f"lookahead must be 0 or more, got {lookahead}")
        if history < 1:
            raise ValueError(f"history must be 1 or more, got {history}")
        self.lookahead = lookahead
        self.future = max(lookahead - 1, 0)
        self.history = history
        self._held: deque[_Held] = deque()
        self._next = 0  # position in _held of the next frame to output

    @property
    def pending(self) -> int:
        """Frames taken and not yet returned."""
        return len(self._held) - self._next

    def push(self, frame: Frame) -> list[Frame]:
        """Take the next frame; return the frames now ready, in order."""
        out = []
        if self._held and self._held[-1].frame.size != frame.size:
            out = self.flush()
        h, w = frame.size
        grey = cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)
        small = (max(w // SCALE, 1), max(h // SCALE, 1))
        held = _Held(frame, cv2.resize(grey, small, interpolation=cv2.INTER_AREA))
        if self._held:
            prev, oldest = self._held[-1], self._held[0]
            to_next = self._track(prev, held)
            held.moved = to_next is None or _displacement(to_next, h, w) > MOVED_PX
            if oldest is not prev and not held.moved:
                direct = self._track(oldest, held)
                held.still = direct is not None and _displacement(direct, h, w) < STILL_PX
        self._held.append(held)
        while self.pending > self.lookahead:
            out.append(self._output())
        return out

    def flush(self) -> list[Frame]:
        """The frames still held, in order; the next frame starts a new window."""
        out = [self._output() for _ in range(self.pending)]
        self.reset()
        return out

    def reset(self) -> None:
        """Forget every frame held (they are not returned)."""
        self._held.clear()
        self._next = 0

    def _track(self, a: _Held, b: _Held) -> np.ndarray | None:
        """The 3 x 3 map of full-size coordinates from frame ``a`` to frame ``b``, or None."""
        if a.corners is None:
            a.corners = cv2.goodFeaturesToTrack(a.grey, CORNERS, 0.01, 8, blockSize=5)
        if a.corners is None or len(a.corners) < 8:
            return None
        moved, status, _ = cv2.calcOpticalFlowPyrLK(
            a.grey, b.grey, a.corners, None, winSize=(15, 15), maxLevel=3
        )
        ok = status.ravel() == 1
        if ok.sum() < 8:
            return None
        m, inliers = cv2.estimateAffinePartial2D(
            a.corners[ok], moved[ok], method=cv2.RANSAC, ransacReprojThreshold=1.0
        )
        if m is None or inliers.sum() < 8:
            return None
        full = np.vstack([m, [0.0, 0.0, 1.0]])
        full[:2, 2] *= SCALE
        return full

    def _output(self) -> Frame:
        t = self._next
        cur = self._held[t]
        lo, hi = max(0, t - self.history - 1), min(len(self._held), t + self.future + 2)
        moving = not self._held[hi - 1].still or any(self._held[k].moved for k in range(lo + 1, hi))
        if hi - lo < 3 or moving:
            return self._done(cur.frame.image)
        return self._done(self._combine_still(t, lo, hi))

    def _done(self, image: np.ndarray) -> Frame:
        frame = self._held[self._next].frame.with_image(image)
        self._next += 1
        while self._next > self.history + 1:
            self._held.popleft()
            self._next -= 1
        return frame

    def _neighbours(self, t: int) -> range:
        """Held frames within history and look ahead of ``t``, ``t`` included."""
        return range(max(0, t - self.history), min(len(self._held), t + self.future + 1))

    @staticmethod
    def _envelopes(greys: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Each grey frame's minimum with the frames beside it (rain suppressed)."""
        out = {}
        for j, grey in greys.items():
            e = grey
            for k in (j - 1, j + 1):
                if k in greys:
                    e = cv2.min(e, greys[k])
            out[j] = e
        return out

    def _combine_still(self, t: int, lo: int, hi: int) -> np.ndarray:
        cur = self._held[t]
        greys = {j: self._held[j].grey for j in range(lo, hi)}
        window = [j for j in self._neighbours(t) if j != t and _lit_alike(cur, self._held[j])]
        if not window:
            return cur.frame.image
        env = self._envelopes(greys)
        limit = self._still_limit(t, min(window, key=lambda j: abs(j - t)), greys, env)
        others = [self._held[j].frame for j in window]
        arrived = _arrived(cur.grey, _median([greys[j] for j in window]), limit)
        agree = [cv2.compare(_blurred_diff(env[t], env[j]), limit, cv2.CMP_LT) for j in window]
        masks = [self._mask(cur, cv2.subtract(a, arrived)) for a in agree]
        median = _median(
            [cur.frame.image]
            + [cv2.copyTo(f.image, m, cur.frame.image.copy()) for f, m in zip(others, masks)]
        )
        if len(window) + 1 < detail.MIN_FRAMES or any(
            f.original is None for f in (cur.frame, *others)
        ):
            return median
        strict = [
            self._mask(
                cur,
                cv2.compare(
                    _blurred_diff(cur.grey, greys[j]), max(detail.LIMIT, limit), cv2.CMP_LT
                ),
            )
            for j in window
        ]
        removed = [self._removed(h) for h in (cur, *(self._held[j] for j in window))]
        combined = cv2.add(median, detail.persistent(removed, strict), dtype=cv2.CV_8U)
        floored = cv2.min(combined, self._rain_floor(cur.frame, others, masks))
        # lowered by no more than the still camera's tolerance: where an object crept into the
        # agreeing neighbours, the floor leaves no dark trail of it
        return cv2.max(floored, cv2.subtract(combined, (limit, limit, limit, 0)))

    @staticmethod
    def _rain_floor(cur: Frame, others: list[Frame], masks: list[np.ndarray]) -> np.ndarray:
        """The darkest source where the neighbours agree, plus a margin for the camera's noise:
        rain only adds light, so no picture of a still scene is brighter than that.

        The noise is read from how far the second darkest source lies above the darkest: rain
        seldom lifts the two darkest of 7 to 10 sources, so the gap is the noise's own."""
        darkest, second = cur.original.copy(), np.full_like(cur.original, 255)
        for other, mask in zip(others, masks):
            cv2.copyTo(cv2.min(second, cv2.max(darkest, other.original)), mask, second)
            cv2.copyTo(cv2.min(darkest, other.original), mask, darkest)
        gap = cv2.subtract(second, darkest)[::NOISE_STEP, ::NOISE_STEP]
        seen = gap[second[::NOISE_STEP, ::NOISE_STEP] < 255]
        noise = float(np.median(seen)) if seen.size else 0.0
        margin = FLOOR_MIN + FLOOR_GAPS * noise
        return cv2.add(darkest, (margin, margin, margin, 0))

    @staticmethod
    def _removed(held: _Held) -> np.ndarray:
        """What the model took out of a held frame: its source minus its picture."""
        if held.removed is None:
            f = held.frame
            held.removed = cv2.subtract(f.original, f.image, dtype=cv2.CV_16S)
        return held.removed

    def _still_limit(
        self, t: int, k: int, greys: dict[int, np.ndarray], env: dict[int, np.ndarray]
    ) -> float:
        """Twice the rain level: the median difference to frame ``k`` (the nearest lit alike)
        where scenes agree."""
        plain = _blurred_diff(greys[t], greys[k])[_blurred_diff(env[t], env[k]) < STILL_MIN]
        level = float(np.median(plain)) if plain.size > greys[t].size // 10 else 0.0
        return float(np.clip(2 * level, STILL_MIN, STILL_MAX))

    @staticmethod
    def _mask(cur: _Held, agree: np.ndarray) -> np.ndarray:
        """A half-size agreement mask at full size, shrunk by a pixel."""
        h, w = cur.frame.size
        return cv2.resize(cv2.erode(agree, _KERNEL), (w, h), interpolation=cv2.INTER_NEAREST)


class TemporalStage(Stage):
    """The pipeline stage around a :class:`TemporalFilter`: batches in, the same frames out.

    Every frame comes out once, in order, with its timestamp; a file's last frames come out at
    :meth:`finish`. Output batches hold consecutive frames of one size, not necessarily grouped
    as they came in.

    Args:
        lookahead: frames held back (0 for live sources), see :class:`TemporalFilter`.
        history: past frames combined with each frame.
    """

    def __init__(self, lookahead: int = 3, history: int = HISTORY) -> None:
        self.filter = TemporalFilter(lookahead, history)

    def process(self, batch: Batch) -> list[Batch]:
        return _batches([out for frame in batch.frames for out in self.filter.push(frame)])

    def finish(self) -> list[Batch]:
        return _batches(self.filter.flush())

    def abort(self, failed: bool = False) -> None:
        self.filter.reset()


def _batches(frames: Iterable[Frame]) -> list[Batch]:
    """Consecutive frames grouped into batches of one size."""
    groups: list[list[Frame]] = []
    for frame in frames:
        if groups and groups[-1][0].size == frame.size:
            groups[-1].append(frame)
        else:
            groups.append([frame])
    return [Batch(tuple(group)) for group in groups]
