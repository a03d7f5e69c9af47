"""Milliseconds per 640x360 frame of the temporal stage, still and moving camera, file and live.

    python -m benchmarks.temporal [--frames 40] [--runs 5] [--out results.json]
    taskset -c 0 python -m benchmarks.temporal    # on one core

Clips: a still street scene with objects moving across it and a DAVIS clip (camera panning),
under light synthetic rain standing in for the model's output and heavy rain for its source
(the stage's cost does not depend on how well the model did). Each run pushes every frame through a fresh
:class:`~streamderain.temporal.TemporalFilter`; a run's figure is its total time over its frames,
and the table shows the median of the runs: wall time (OpenCV with its default threads) and CPU
time (all threads together: what the stage takes from the model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from streamderain.frames import Frame
from streamderain.temporal import TemporalFilter
from training.data import DEFAULT_DATA_ROOT
from training.rain import rain_video
from training.video_eval import davis_clip, still_scene

DAVIS_CLIP = "clean/video/davis-car-roundabout"


def clips(frames: int) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """Each clip's stand-ins for the model's outputs and their sources."""
    still = still_scene(DEFAULT_DATA_ROOT, "street", frames)
    moving = davis_clip(DEFAULT_DATA_ROOT / DAVIS_CLIP, frames)
    rng = np.random.default_rng(0)
    return {
        name: (rain_video(clean, "light", rng), rain_video(clean, "heavy-streaks", rng))
        for name, clean in (("still camera", still), ("moving camera", moving))
    }


def run(images: list[np.ndarray], sources: list[np.ndarray], lookahead: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per frame for one pass of ``images`` (of ``sources``)."""
    frames = [
        Frame(i, i, Fraction(1, 25), image, original=source)
        for i, (image, source) in enumerate(zip(images, sources))
    ]
    f = TemporalFilter(lookahead)
    wall, cpu = time.perf_counter(), time.process_time()
    for frame in frames:
        f.push(frame)
    f.flush()
    n = len(frames)
    return 1000 * (time.perf_counter() - wall) / n, 1000 * (time.process_time() - cpu) / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=40, help="frames per clip")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (median shown)")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()

    rows = []
    for name, (images, sources) in clips(args.frames).items():
        for mode, lookahead in (("file", 3), ("live", 0)):
            run(images[:8], sources[:8], lookahead)  # warm-up
            times = [run(images, sources, lookahead) for _ in range(args.runs)]
            wall = statistics.median(t[0] for t in times)
            cpu = statistics.median(t[1] for t in times)
            rows.append({"clip": name, "mode": mode, "wall_ms": wall, "cpu_ms": cpu})
            print(f"{name:14s} {mode:4s}: {wall:5.1f} ms/frame wall, {cpu:5.1f} ms/frame CPU")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
