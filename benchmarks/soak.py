"""Soak: 10,000 frames through the pipeline, with RSS, threads and open files sampled.

    python -m benchmarks.soak [--frames 10000] [--size 128x72]

Prints RSS after warm-up (frame 500) and at the end, and the thread and file-descriptor
counts before and after the run; writes JSON beside the other results.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
from datetime import datetime
from pathlib import Path

from benchmarks.__main__ import ROOT, make_clip, pipeline_run


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--size", default="128x72")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "soak.mp4"
        make_clip(clip, args.frames, (w, h))
        before = {"threads": threading.active_count(), "fds": open_fds()}
        marks = (500, args.frames // 2, args.frames)
        run = pipeline_run(clip, Path(tmp) / "out.mp4", batch=4, marks=marks)
        after = {"threads": threading.active_count(), "fds": open_fds()}
    rss = run["rss_mb_at"]
    result = {
        "frames": run["frames"],
        "size": args.size,
        "fps": run["fps"],
        "rss_mb_at": rss,
        "rss_growth_after_warmup_mb": rss[args.frames] - rss[500],
        "before": before,
        "after": after,
    }
    print(f"{run['frames']} frames at {args.size}: {run['fps']:.1f} fps")
    print(
        f"RSS at frame 500: {rss[500]:.0f} MB, at {args.frames // 2}: "
        f"{rss[args.frames // 2]:.0f} MB, at {args.frames}: {rss[args.frames]:.0f} MB "
        f"(growth {result['rss_growth_after_warmup_mb']:+.1f} MB)"
    )
    print(
        f"threads {before['threads']} -> {after['threads']}, open files {before['fds']} -> {after['fds']}"
    )
    out = ROOT / "benchmarks" / "results" / f"soak-{datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
