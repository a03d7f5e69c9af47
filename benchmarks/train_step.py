"""Seconds per training step of a config's network, float32 against bf16 autocast.

    python -m benchmarks.train_step [--config configs/dcsfn-lite-stage4b.toml] [--steps 4]
                                    [--threads 1] [--runs 3] [--device cuda]

One step as the trainer takes it (forward, -SSIM, backward, Adam) on random patches of the
config's batch and patch size; channels-last in both precisions, as the trainer runs. Runs of
the two precisions alternate, so a slow spell on a shared machine hits both; the table shows
the median step of each. Pause other training first (kill -STOP) for figures worth quoting.
On a GPU (``--device cuda``) each step ends by waiting for it, so the clock times its work; its
rate says how many steps a lent GPU's minutes buy, and so how long a run's schedule should be.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from training.config import build_network
from training.metrics import ssim
from training.recipe import PRECISIONS, load_train_config


def step_times(config: str, precision: str, steps: int, device: str) -> list[float]:
    """Seconds of each of ``steps`` training steps, after one warm-up step."""
    model_cfg, cfg = load_train_config(config)
    torch.manual_seed(0)
    net = build_network(model_cfg).to(device, memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    shape = (cfg.batch, 3, cfg.patch, cfg.patch)
    rainy = torch.rand(shape, device=device).contiguous(memory_format=torch.channels_last)
    clean = torch.rand(shape, device=device)
    kind = torch.device(device).type
    if kind == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer has it
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(rainy)
        loss = -ssim(out.float(), clean)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if kind == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dcsfn-lite-stage4b.toml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(args.runs):
        for precision in PRECISIONS:
            times[precision] += step_times(args.config, precision, args.steps, args.device)
    model_cfg, cfg = load_train_config(args.config)
    print(
        f"{args.config}: {model_cfg.channels} channels x {model_cfg.num_blocks} blocks, "
        f"batch {cfg.batch} of {cfg.patch}x{cfg.patch}, {args.threads} thread(s), "
        f"{args.runs} runs x {args.steps} steps on {args.device}"
    )
    print(f"{'precision':10s} {'median s/step':>14s} {'min':>8s} {'max':>8s}")
    for precision, values in times.items():
        print(
            f"{precision:10s} {statistics.median(values):14.3f} "
            f"{min(values):8.3f} {max(values):8.3f}"
        )
    ratio = statistics.median(times["fp32"]) / statistics.median(times["bf16"])
    print(f"bf16 is {ratio:.2f}x as fast as fp32")


if __name__ == "__main__":
    main()
