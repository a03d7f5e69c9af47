"""CPU/GPU speed and memory of streamderain, printed as a table and saved as JSON.

    python -m benchmarks                    # everything, about 8 minutes on a 2-core CPU
    python -m benchmarks --frames 30 --skip-paper --skip-soak   # a quick look

Measures, on one clip made from the shared DAVIS frames with synthetic rain, in one run:
model-only frames/s per config, dtype, memory format, threads and batch; the full pipeline;
a naive OpenCV loop (what a user would write first); their ratios; and RSS over a long run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch

from streamderain.api import derain_video
from streamderain.runner import pick_precision, ships_int8
from training import DCSFNConfig, build_network, load_config, load_model
from training.quantize import int8_models
from training.rain import rain_video
from training.route import AUTO, LIGHT_MODEL
from training.video_eval import still_scene

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLIP_FRAMES = DATA / "clean" / "video" / "davis-car-roundabout"
PAPER = "paper"


def make_clip(path: Path, frames: int, size: tuple[int, int], still: bool = False) -> None:
    """A rainy clip of ``frames`` frames at ``size`` (w, h), looping 75 frames: the DAVIS clip
    (a moving camera), or with ``still`` the street seen by a fixed camera with objects moving
    across it (``training.video_eval.still_scene``)."""
    import av

    if still:
        scene = still_scene(DATA, "street", 75)
    else:
        scene = [cv2.imread(str(f))[..., ::-1] for f in sorted(CLIP_FRAMES.glob("*.jpg"))]
    clean = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in scene]
    rainy = rain_video(clean, "light", np.random.default_rng(0))
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        s.options = {"crf": "18", "preset": "veryfast"}
        for i in range(frames):
            out.mux(s.encode(av.VideoFrame.from_ndarray(rainy[i % len(rainy)], format="rgb24")))
        out.mux(s.encode(None))


def machine() -> dict:
    """What the figures were measured on, saved beside them."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def time_model(model, x: torch.Tensor, repeats: int) -> float:
    """Median seconds per call after one warm-up call (on a GPU, so cuDNN's choice of kernels
    is not counted): by the wall clock, or on a GPU by CUDA events with one wait at the end."""
    with torch.inference_mode():
        model(x)
        if not x.is_cuda:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(repeats)
        ]
        for start, end in events:
            start.record()
            model(x)
            end.record()
        torch.cuda.synchronize()
        return statistics.median(start.elapsed_time(end) / 1000 for start, end in events)


def paper_config() -> DCSFNConfig:
    return load_config(ROOT / "configs" / "dcsfn-paper.toml")


def network(name: str) -> torch.nn.Module:
    """A bundled model or checkpoint's network, or ``paper``: the paper's network with fresh
    weights (its speed does not depend on them)."""
    return build_network(paper_config()) if name == PAPER else load_model(name).net


def model_only(config_name: str, repeats: int, size=(360, 640)) -> list[dict]:
    """``config_name``: a bundled model or checkpoint, or ``paper`` (see :func:`network`)."""
    rows = []
    model = network(config_name).eval()
    variants = [
        ("fp32", "contiguous", 2, 1),
        ("fp32", "channels_last", 2, 1),
        ("fp32", "channels_last", 1, 1),
        ("fp32", "channels_last", 2, 2),
        ("bf16", "channels_last", 2, 1),
    ]
    if config_name == PAPER:
        variants = variants[:2]
    for dtype, fmt, threads, batch in variants:
        torch.set_num_threads(threads)
        memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        m = model.to(
            memory_format=memory_format, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32
        )
        x = torch.rand(batch, 3, *size, dtype=next(m.parameters()).dtype)
        x = x.contiguous(memory_format=memory_format)
        s = time_model(m, x, repeats)
        rows.append(
            {
                "config": config_name,
                "dtype": dtype,
                "format": fmt,
                "threads": threads,
                "batch": batch,
                "s_per_frame": s / batch,
                "fps": batch / s,
            }
        )
        print(
            f"  model {config_name} {dtype} {fmt} threads={threads} batch={batch}: {batch / s:.2f} fps",
            flush=True,
        )
    if config_name != PAPER:
        from streamderain.backends import OpenVINOBackend, openvino_available

        if openvino_available():
            model = load_model(config_name)
            runners = {"fp32": OpenVINOBackend(model, threads=2)}
            if config_name in int8_models():
                runners["int8"] = OpenVINOBackend(model, threads=2, int8=True)
            for (dtype, runner), batch in itertools.product(runners.items(), (1, 2)):
                x = torch.rand(batch, 3, *size)
                s = time_model(runner, x, repeats)
                rows.append(
                    {
                        "config": config_name,
                        "dtype": dtype,
                        "format": "openvino",
                        "threads": 2,
                        "batch": batch,
                        "s_per_frame": s / batch,
                        "fps": batch / s,
                    }
                )
                print(
                    f"  model {config_name} {dtype} openvino batch={batch}: {batch / s:.2f} fps",
                    flush=True,
                )
    torch.set_num_threads(os.cpu_count() or 1)
    return rows


def naive_loop(src: Path, dst: Path, model_name: str) -> float:
    """What a user writes first: OpenCV in, the model one frame at a time, OpenCV out."""
    model = load_model(model_name)
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    n, t0 = 0, time.perf_counter()
    ok, frame = cap.read()
    while ok:
        x = torch.from_numpy(frame[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            y = model(x)[0].clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()
        writer.write(np.ascontiguousarray(y[..., ::-1]))
        n += 1
        ok, frame = cap.read()
    cap.release()
    writer.release()
    return n / (time.perf_counter() - t0)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pipeline_run(
    src: Path,
    dst: Path,
    batch: int,
    marks: tuple[int, ...] = (),
    temporal: str = "auto",
    model: str = AUTO,
    flip_average: str = "auto",
    precision: str = "auto",
) -> dict:
    """The real pipeline; RSS is read when the frame count passes each of ``marks``."""
    seen, rss = 0, {}

    def on_frame(n: int) -> None:
        nonlocal seen
        for m in marks:
            if seen < m <= seen + n:
                rss[m] = rss_mb()
        seen += n

    stats = derain_video(
        src,
        dst,
        batch=batch,
        device="cpu",
        temporal=temporal,
        model=model,
        flip_average=flip_average,
        precision=precision,
        on_frame=on_frame,
    )
    return {
        "frames": stats.frames,
        "fps": stats.fps,
        "busy": stats.busy,
        "wall_s": stats.wall,
        "rss_mb_at": rss,
        "peak_rss_mb": stats.peak_rss_mb,
        "threads": threading.active_count(),
    }


def gpu_benchmark(args: argparse.Namespace, result: dict) -> None:
    """The GPU rows (:mod:`benchmarks.gpu`) on a 1280x720 clip, printed and saved."""
    from benchmarks import gpu

    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "rainy-720p.mp4"
        make_clip(clip, args.frames, (1280, 720))
        result.update(gpu.run(args.device, clip, Path(tmp), args.quick, args.repeats))
    for row in result["pipeline_gpu"]:
        print(
            f"pipeline {row['model']:10s} {row['precision']} batch {row['batch']:2d}: "
            f"{row['fps']:7.1f} fps, {row.get('vs_model_only', float('nan')):.2f}x model-only, "
            f"GPU busy {row['gpu_utilisation']}%, waits/frame {row.get('syncs_per_frame')}"
        )
    out = args.out or ROOT / "benchmarks" / "results" / f"gpu-{datetime.now():%Y%m%d-%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=60, help="frames in the speed clip")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-paper", action="store_true")
    parser.add_argument("--skip-soak", action="store_true", help="skip the 2,000-frame RSS run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--model",
        default=AUTO,
        help="a bundled model, auto or a checkpoint (default: auto, the default; the model-only "
        "rows and the naive loop then run its light-rain network, which runs on all but one "
        "frame in 50)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cuda or cuda:N: the GPU benchmark instead (benchmarks/gpu.py)",
    )
    parser.add_argument("--quick", action="store_true", help="GPU: 1280x720 and fp16 only")
    args = parser.parse_args()

    result: dict = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    if args.device != "cpu":
        gpu_benchmark(args, result)
        return
    print("model only, 640x360:", flush=True)
    network = LIGHT_MODEL if args.model == AUTO else args.model
    rows = model_only(network, args.repeats)
    if not args.skip_paper:
        rows += model_only(PAPER, 1)
    result["model"] = args.model
    result["model_only"] = rows
    best = max(
        (r for r in rows if r["config"] == network and r["dtype"] == "fp32"),
        key=lambda r: r["fps"],
    )

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip, still = tmp / "rainy.mp4", tmp / "still.mp4"
        make_clip(clip, args.frames, (640, 360))
        make_clip(still, args.frames, (640, 360), still=True)
        print("naive loop (OpenCV VideoCapture -> model -> VideoWriter):", flush=True)
        naive = naive_loop(clip, tmp / "naive.mp4", network)
        print(f"  {naive:.2f} fps", flush=True)
        default = pick_precision("auto", torch.device("cpu"), "auto", args.model)
        # the other precision, where the model has both (an 8-bit network ships for it)
        other = ("fp32" if default == "int8" else "int8") if ships_int8(args.model) else None
        versus = f", and with --precision {other}" if other else ""
        print(
            f"pipeline ({default}), temporal stage on (the default) and off, with "
            f"--flip-average off{versus}, interleaved:",
            flush=True,
        )
        # (camera, --temporal, --flip-average, --precision)
        runs: dict[tuple[str, str, str, str], list[dict]] = {
            (camera, mode, "auto", default): []
            for camera in ("moving", "still")
            for mode in ("on", "off")
        }
        runs["moving", "on", "off", default] = []
        if other:
            runs["moving", "on", "auto", other] = []
        for _ in range(3):
            for camera, mode, flip, precision in runs:
                run = pipeline_run(
                    clip if camera == "moving" else still,
                    tmp / f"out-{camera}-{mode}-{flip}-{precision}.mp4",
                    batch=1,
                    temporal=mode,
                    model=args.model,
                    flip_average=flip,
                    precision=precision,
                )
                runs[camera, mode, flip, precision].append(run)
                print(
                    f"  {camera} camera, temporal {mode}, flip-average {flip}, {precision}: "
                    f"{run['fps']:.2f} fps, busy {run['busy']}",
                    flush=True,
                )
        median = {key: sorted(r, key=lambda r: r["fps"])[1] for key, r in runs.items()}
        pipe, plain = (
            median["moving", "on", "auto", default],
            median["moving", "off", "auto", default],
        )
        still_on = median["still", "on", "auto", default]
        still_off = median["still", "off", "auto", default]
        unflipped = median["moving", "on", "off", default]
        result["naive_fps"] = naive
        result["pipeline"] = pipe
        result["pipeline_temporal_off"] = plain
        result["pipeline_still_camera"] = still_on
        result["pipeline_still_camera_temporal_off"] = still_off
        result["pipeline_flip_average_off"] = unflipped
        result["precision"] = default
        result["ratios"] = {
            "pipeline_vs_naive": pipe["fps"] / naive,
            "pipeline_vs_model_only": pipe["fps"] / best["fps"],
            "temporal_on_vs_off": pipe["fps"] / plain["fps"],
            "temporal_on_vs_off_still_camera": still_on["fps"] / still_off["fps"],
            "flip_average_on_vs_off": pipe["fps"] / unflipped["fps"],
        }
        if other:
            result[f"pipeline_{other}"] = median["moving", "on", "auto", other]
            fps = {default: pipe["fps"], other: result[f"pipeline_{other}"]["fps"]}
            result["ratios"]["int8_vs_fp32"] = fps["int8"] / fps["fp32"]
        if not args.skip_soak:
            small = tmp / "small.mp4"
            make_clip(small, 2000, (160, 96))
            print("memory: 2,000 frames at 160x96:", flush=True)
            soak = pipeline_run(
                small, tmp / "small-out.mp4", batch=1, marks=(200, 2000), model=args.model
            )
            soak["rss_growth_mb"] = soak["rss_mb_at"][2000] - soak["rss_mb_at"][200]
            print(
                f"  RSS at 200: {soak['rss_mb_at'][200]:.0f} MB, at 2000: {soak['rss_mb_at'][2000]:.0f} MB",
                flush=True,
            )
            result["memory"] = soak

    print()
    width = max(len(r["config"]) for r in rows)
    print(f"{'model':{width}s} {'dtype':5s} {'format':14s} {'thr':>3s} {'batch':>5s} {'fps':>7s}")
    for r in rows:
        print(
            f"{r['config']:{width}s} {r['dtype']:5s} {r['format']:14s} {r['threads']:3d} {r['batch']:5d} {r['fps']:7.2f}"
        )
    print(f"pipeline (640x360, {args.model}, {default}): {pipe['fps']:.2f} fps (median of 3)")
    print(f"  the same, temporal stage off:    {plain['fps']:.2f} fps")
    print(f"temporal on / off:                 {result['ratios']['temporal_on_vs_off']:.2f}x")
    print(f"still camera, temporal on / off:   {still_on['fps']:.2f} / {still_off['fps']:.2f} fps")
    ratio = result["ratios"]["temporal_on_vs_off_still_camera"]
    print(f"  ratio on / off:                  {ratio:.2f}x")
    print(f"naive OpenCV loop:                 {naive:.2f} fps")
    print(f"pipeline / naive:                  {result['ratios']['pipeline_vs_naive']:.2f}x")
    print(f"pipeline / best model-only fp32:   {result['ratios']['pipeline_vs_model_only']:.2f}x")
    print(f"the default, --flip-average off:   {unflipped['fps']:.2f} fps", end="")
    print(f" (flip-average on / off: {result['ratios']['flip_average_on_vs_off']:.2f}x)")
    if other:
        print(
            f"the default, --precision {other}:     {result[f'pipeline_{other}']['fps']:.2f} fps",
            end="",
        )
        print(f" (int8 / fp32: {result['ratios']['int8_vs_fp32']:.2f}x)")
    if "memory" in result:
        print(f"RSS growth frame 200 -> 2000:      {result['memory']['rss_growth_mb']:.1f} MB")
    out = args.out or ROOT / "benchmarks" / "results" / f"cpu-{datetime.now():%Y%m%d-%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
