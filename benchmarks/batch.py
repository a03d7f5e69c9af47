"""Files per second of ``streamderain batch`` for each split of the cores into workers.

    python -m benchmarks.batch [--clips 8] [--frames 48] [--size 320x180] [--repeats 3]

Runs the real command on the same rainy clips once per (workers x threads) layout and
repeat, layouts interleaved so that a noisy neighbour hits them alike; prints the median
files/s of each and writes JSON beside the other results.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.__main__ import ROOT, machine, make_clip
from streamderain.pipeline import usable_cores


def layouts(cores: int) -> list[tuple[int, int]]:
    """(workers, threads) pairs that use every core: 1 x cores ... cores x 1."""
    return [(w, cores // w) for w in range(1, cores + 1) if cores % w == 0]


def run_batch(clips: list[Path], out_dir: Path, workers: int, threads: int) -> float:
    """Seconds for the whole batch, model loading included (what a user waits for)."""
    command = [sys.executable, "-m", "streamderain", "batch", *map(str, clips)]
    command += ["--out-dir", str(out_dir), "-q", "--workers", str(workers)]
    command += ["--threads", str(threads)]
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="320x180")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    cores = usable_cores()
    seconds: dict[tuple[int, int], list[float]] = {layout: [] for layout in layouts(cores)}
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip0.mp4"
        make_clip(clip, args.frames, (w, h))
        clips = [clip]
        for i in range(1, args.clips):
            clips.append(clip.with_name(f"clip{i}.mp4"))
            os.link(clip, clips[-1])
        for repeat in range(args.repeats):
            for workers, threads in seconds:
                out_dir = Path(tmp) / f"out-{workers}x{threads}-{repeat}"
                seconds[workers, threads].append(run_batch(clips, out_dir, workers, threads))
    rows = []
    print(f"{args.clips} clips of {args.frames} frames at {args.size}, {cores} cores")
    print("workers x threads | median s | files/s | frames/s")
    for (workers, threads), times in seconds.items():
        median = statistics.median(times)
        row = {
            "workers": workers,
            "threads": threads,
            "seconds": times,
            "files_per_s": args.clips / median,
            "frames_per_s": args.clips * args.frames / median,
        }
        rows.append(row)
        print(
            f"{workers} x {threads} | {median:.1f} | {row['files_per_s']:.3f} | "
            f"{row['frames_per_s']:.1f}"
        )
    result = {
        "machine": machine(),
        "clips": args.clips,
        "frames": args.frames,
        "size": args.size,
        "rows": rows,
    }
    out = ROOT / "benchmarks" / "results" / f"batch-{datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
