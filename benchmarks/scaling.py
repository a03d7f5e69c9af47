"""How the default model's cost grows with frame size and batch, as a table, JSON and a plot.

    python -m benchmarks.scaling                 # about 4 minutes on a 2-core CPU
    python -m benchmarks.scaling --repeats 1     # a quick look

Runs the runtime's own ModelRunner (default backend, as ``streamderain`` would) on a real rainy
frame scaled to 360p, 720p, 1080p and 4K (4K also with ``--tile 1024``), then batches of
1, 2 and 4 at 360p, each in a fresh process so that its peak RSS is its own. Writes benchmarks/results/scaling-*.json and
docs/scaling.png (needs matplotlib: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.__main__ import CLIP_FRAMES, ROOT, machine, time_model
from streamderain.options import ModelOptions
from streamderain.runner import ModelRunner
from training.rain import add_rain

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
TILE = 1024


def rainy_frame(size: tuple[int, int]) -> torch.Tensor:
    """A real DAVIS frame with seeded light rain, resized to ``size`` (w, h): 1 x H x W x 3."""
    clean = cv2.cvtColor(cv2.imread(str(sorted(CLIP_FRAMES.glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    rainy = add_rain(clean, "light", np.random.default_rng(0))
    return torch.from_numpy(cv2.resize(rainy, size, interpolation=cv2.INTER_CUBIC))[None]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(size: tuple[int, int], tile: int, batch: int, repeats: int) -> tuple[float, float, str]:
    """(median seconds per call, peak RSS MB, backend) of one setting, in a process of its own."""
    runner = ModelRunner(ModelOptions(tile=tile))
    x = rainy_frame(size).expand(batch, -1, -1, -1).contiguous()
    return time_model(runner.infer, x, repeats), peak_rss_mb(), runner.backend


def run_fresh(
    size: tuple[int, int], tile: int, batch: int, repeats: int
) -> tuple[float, float, str]:
    """:func:`run_one` in a new interpreter, so that its peak RSS is its own.

    A plain ``python -c``: in multiprocessing's spawned workers under ``python -m`` the 360p
    figure came out at 0.36-0.50 s instead of 0.23-0.27 s (cause not found).
    """
    code = (
        "import json; from benchmarks.scaling import run_one; "
        f"print(json.dumps(run_one({tuple(size)}, {tile}, {batch}, {repeats})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    seconds, rss, backend = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, rss, backend


def measure(repeats: int) -> dict:
    sizes = []
    for name, (w, h) in SIZES.items():
        for tile in (0, TILE) if name == "4K" else (0,):
            s, rss, backend = run_fresh((w, h), tile, 1, repeats)
            sizes.append(
                {
                    "size": name,
                    "width": w,
                    "height": h,
                    "megapixels": w * h / 1e6,
                    "tile": tile,
                    "s_per_frame": s,
                    "peak_rss_mb": rss,
                }
            )
            print(f"  {name} tile={tile}: {s:.2f} s/frame, peak RSS {rss:.0f} MB", flush=True)
    batches = []
    for batch in (1, 2, 4):
        s, rss, _ = run_fresh(SIZES["360p"], 0, batch, repeats)
        batches.append(
            {"batch": batch, "s_per_frame": s / batch, "fps": batch / s, "peak_rss_mb": rss}
        )
        print(f"  360p batch={batch}: {s / batch:.3f} s/frame", flush=True)
    return {"backend": backend, "sizes": sizes, "batches": batches}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for tile, style, offset in ((0, "o-", (6, -4)), (TILE, "s", (-105, -4))):
        rows = [r for r in result["sizes"] if r["tile"] == tile]
        label = f"tiled, --tile {tile}" if tile else "whole frame"
        x, y = [r["megapixels"] for r in rows], [r["s_per_frame"] for r in rows]
        left.loglog(x, y, style, label=label)
        for r in rows:
            left.annotate(
                f"{r['size']}: {r['s_per_frame']:.2f} s, {r['peak_rss_mb']:.0f} MB",
                (r["megapixels"], r["s_per_frame"]),
                fontsize=7,
                textcoords="offset points",
                xytext=offset,
            )
    whole = [r["megapixels"] for r in result["sizes"] if not r["tile"]]
    left.set_xticks(whole, [f"{m:.1f}" for m in whole])
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlim(0.15, 40)
    left.set_xlabel("megapixels per frame")
    left.set_ylabel("seconds per frame")
    left.set_title("cost vs frame size (batch 1)")
    left.legend(fontsize=8)
    batches = result["batches"]
    right.plot([b["batch"] for b in batches], [b["s_per_frame"] for b in batches], "o-")
    right.set_xticks([b["batch"] for b in batches])
    right.set_ylim(bottom=0)
    right.set_xlabel("batch")
    right.set_ylabel("seconds per frame")
    right.set_title("cost vs batch (640x360)")
    device = result["machine"]
    fig.suptitle(
        f"dcsfn-lite, {result['backend']} backend, {device['cores']} CPU cores "
        f"(python -m benchmarks.scaling)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "scaling.png")
    args = parser.parse_args()
    result = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    print("default model, ModelRunner.infer, median seconds per frame:", flush=True)
    result.update(measure(args.repeats))
    out = ROOT / "benchmarks" / "results" / f"scaling-{datetime.now():%Y%m%d-%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{'size':6s} {'tile':>5s} {'s/frame':>8s} {'fps':>6s} {'peak RSS MB':>12s}")
    for r in result["sizes"]:
        print(
            f"{r['size']:6s} {r['tile']:5d} {r['s_per_frame']:8.2f} "
            f"{1 / r['s_per_frame']:6.2f} {r['peak_rss_mb']:12.0f}"
        )
    for b in result["batches"]:
        print(f"360p batch {b['batch']}: {b['s_per_frame']:.3f} s/frame ({b['fps']:.2f} fps)")
    plot(result, args.plot)
    print(f"wrote {out} and {args.plot}")


if __name__ == "__main__":
    main()
