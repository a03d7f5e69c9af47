"""GPU speed of the model alone and of the whole pipeline, in one run.

    python -m benchmarks --device cuda [--quick]

Model only: the bundled light-rain network and the paper's (fresh weights: its speed does not
depend on them) at 640x360, 1280x720 and 1920x1080, in fp32, fp16 and bf16, in batches of 1,
4, 8 and 16, timed by CUDA events (median of the repeats after a warm-up, so cuDNN's choice of
kernels is not counted). Pipeline: ``streamderain`` on a 1280x720 clip in fp16, per network
and batch, with the share of the time each stage was busy, the GPU's utilisation sampled by
NVML while it ran, and the host-device synchronisations counted by the profiler, per frame.
The pipeline keeps to fp16, the fastest precision there: on an H200 the full sweep of the
model alone already took about 5 minutes, most of it the paper network's.

``benchmarks/gpu-check.sh`` runs it on a lent GPU machine, with the CUDA tests.
"""

from __future__ import annotations

import statistics
import threading
from contextlib import nullcontext
from pathlib import Path

import torch

from benchmarks.__main__ import PAPER, make_clip, network, paper_config, time_model
from streamderain.api import derain_video
from training import build_network, save_model
from training.route import LIGHT_MODEL

SIZES = {"640x360": (360, 640), "1280x720": (720, 1280), "1920x1080": (1080, 1920)}
# Half precision first: the rows users will run, kept should a lent GPU's minutes run out.
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BATCHES = (1, 4, 8, 16)
# What the CUDA runtime calls when the host waits for the GPU.
SYNCS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize")


def model_rows(
    device: str,
    names: tuple[str, ...] = (LIGHT_MODEL, PAPER),
    sizes: dict[str, tuple[int, int]] = SIZES,
    precisions: tuple[str, ...] = tuple(PRECISIONS),
    batches: tuple[int, ...] = BATCHES,
    repeats: int = 10,
) -> list[dict]:
    """Frames/s of each network, precision, frame size and batch (``oom`` where it did not
    fit)."""
    rows = []
    for name in names:
        for precision in precisions:
            dtype = PRECISIONS[precision]
            model = network(name).eval().to(device, dtype, memory_format=torch.channels_last)
            for size, (h, w) in sizes.items():
                for batch in batches:
                    row = {"model": name, "precision": precision, "size": size, "batch": batch}
                    try:
                        x = torch.rand(batch, 3, h, w, device=device, dtype=dtype)
                        s = time_model(
                            model, x.contiguous(memory_format=torch.channels_last), repeats
                        )
                        row["fps"] = batch / s
                    except torch.OutOfMemoryError:
                        row["oom"] = True
                        torch.cuda.empty_cache()
                    rows.append(row)
                    print(f"  model {row}", flush=True)
    return rows


class Utilisation:
    """The GPU's utilisation (percent), sampled by NVML every 50 ms while in the ``with``."""

    def __init__(self, index: int = 0) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._read = lambda: (
                pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(index)).gpu
            )
        except Exception:  # no NVML (a CPU run, or nvidia-ml-py missing): nothing sampled
            self._read = None
        self.samples: list[int] = []
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._read())

    def __enter__(self) -> Utilisation:
        if self._read is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._read is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def pipeline_row(
    clip: Path,
    out: Path,
    model: str,
    device: str,
    precision: str,
    batch: int,
    profile: bool,
    warm: Path | None = None,
) -> dict:
    """``streamderain clip out`` with these settings: frames/s, stage busy shares, GPU
    utilisation and, with ``profile``, the host's waits for the GPU per frame. A ``warm`` clip
    runs first, untimed: cuDNN times its kernels on a batch shape's first call, waiting for the
    GPU as it does (an H200 run without it counted 73 waits a frame over 90 frames, where the
    runner itself waits once a batch)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    settings = {
        "model": model,
        "device": device,
        "precision": precision,
        "batch": batch,
        "temporal": "off",
        "flip_average": "off",
    }
    if warm is not None:
        derain_video(warm, out, **settings)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    watch = profiler(activities=activities) if profile else nullcontext()
    with Utilisation() as gpu, watch as prof:
        stats = derain_video(clip, out, **settings)
    row = {
        "model": model,
        "precision": precision,
        "batch": batch,
        "fps": stats.fps,
        "busy_share": {k: v / stats.wall for k, v in stats.busy.items()},
        "gpu_utilisation": gpu.mean,
    }
    if profile:
        waits = sum(e.count for e in prof.key_averages() if e.key in SYNCS)
        row["syncs_per_frame"] = waits / stats.frames
    print(f"  pipeline {row}", flush=True)
    return row


def paper_checkpoint(path: Path) -> Path:
    """The paper's network, fresh weights, as a model file the pipeline can load."""
    config = paper_config()
    save_model(path, build_network(config), config, "RGB", {"purpose": "speed only"})
    return path


def run(device: str, clip: Path, tmp: Path, quick: bool, repeats: int) -> dict:
    """Every row of the GPU benchmark (``quick``: 1280x720 and fp16 only), with cuDNN choosing
    its kernels by timing them, as the runner has it."""
    torch.backends.cudnn.benchmark = True
    sizes = {"1280x720": SIZES["1280x720"]} if quick else SIZES
    precisions = ("fp16",) if quick else tuple(PRECISIONS)
    print(f"model only on {device}:", flush=True)
    models = model_rows(device, (LIGHT_MODEL, PAPER), sizes, precisions, BATCHES, repeats)
    paper = str(paper_checkpoint(tmp / "paper.pt"))
    warm = tmp / "warm.mp4"
    make_clip(warm, max(BATCHES), (1280, 720))
    print(f"pipeline on {device}, {clip.name}:", flush=True)
    pipelines = [
        pipeline_row(clip, tmp / "out.mp4", name, device, "fp16", batch, batch == 8, warm)
        for name in (LIGHT_MODEL, paper)
        for batch in BATCHES
    ]
    for row in pipelines:
        row["model"] = PAPER if row["model"] == paper else row["model"]
        alone = next(
            (m for m in models if m["size"] == "1280x720" and all(
                m[k] == row[k] for k in ("model", "precision", "batch"))),
            None,
        )  # fmt: skip
        if alone and "fps" in alone:
            row["vs_model_only"] = row["fps"] / alone["fps"]
    return {"model_only_gpu": models, "pipeline_gpu": pipelines}
