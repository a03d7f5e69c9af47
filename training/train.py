"""Training DCSFN with the paper's recipe on real pairs mixed with synthetic rain.

Runs for hours in the background: it checkpoints every few minutes (atomically) and
``--resume`` continues exactly where it stopped (weights, optimizer, schedule; each step's batch
depends on the seed and the step alone). On a GPU the batches are drawn by worker processes,
since drawing synthetic rain on the CPU would otherwise hold the GPU back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.config import DCSFNConfig, build_network, read_toml
from training.data import (
    Pair,
    augment,
    crop_box,
    draw_fence,
    draw_thin_structures,
    find_clean_images,
    find_pairs,
    hold_out,
    list_images,
    read_pair,
    read_rgb,
    without_pictures_of,
)
from training.evaluate import derain_rgb
from training.grow import deepen
from training.metrics import luma, psnr, ssim
from training.rain import PRESETS, RainField, RainLayers, add_rain, rain_layer, transplant
from training.weights import load_model, save_model

log = logging.getLogger(__name__)

CLEAN_MAX_SIDE = 640
# The name under which ``rain_presets`` weighs real rain layers cut from ``layer_dirs``.
REAL_LAYERS = "real-layers"


@dataclass(frozen=True)
class TrainConfig:
    """The recipe. Paths are relative to ``data_root``.

    Args:
        steps: optimizer steps in all (the schedule is laid out over them).
        batch: patches per step.
        patch: patch side; crops are ``patch`` +- patch/4 resized to it.
        lr: Adam learning rate; x0.1 at each fraction of ``steps`` in ``milestones``.
        ssim_weight: weight of the paper's loss, -SSIM.
        psnr_weight: weight of -PSNR (dB) per patch, averaged over the batch: the figures
            that judge the model are mean PSNRs, and SSIM, judged in small windows, barely sees
            a smooth error such as the veil heavy rain leaves.
        l1_weight: weight of a mean absolute error term added to the paper's -SSIM (0: the
            paper's loss). SSIM barely sees a shift of overall brightness, and PSNR does.
        mean_weight: weight of a term on each patch's mean colour error, per channel: keeps the
            output's brightness unbiased (rain only adds light, so a network that leaves a
            little of it behind is brighter than the truth).
        lowpass_weight: weight of a mean absolute error between 8x8-pixel block means of the
            output and the clean patch: the veil of heavy rain varies across a picture, and a
            patch-wide mean lets one part's leftover veil hide behind another's overshoot.
        ema_decay: the weights validated and snapshotted are an exponential moving average of
            the trained ones, with this decay per step (0: the trained weights themselves).
            The lite network's heavy-rain score swings by a decibel from snapshot to snapshot
            with the veil it leaves; an average over the last steps' weights holds steadier.
        real_fraction: share of patches cut from real pairs (the rest: synthetic rain).
        rain_presets: synthetic rain presets and their weights; ``real-layers`` weighs real
            rain layers from ``layer_dirs`` added onto the clean pictures.
        real_dirs: folders of real rainy/clean pairs.
        layer_dirs: folders of aligned pairs (``rainy - clean >= 0``) whose differences are
            real rain layers.
        layer_strength: range of the factor real rain layers are scaled by.
        structure_fraction: share of synthetic-rain patches whose clean picture first gets
            thin bars drawn into it (``training.data.draw_thin_structures``), to be kept.
        fence_fraction: share of synthetic-rain patches whose clean picture is first seen
            through a faint, partly hidden fence (``training.data.draw_fence``), to be kept.
        dry_fraction: share of synthetic-rain patches given no rain at all, to come back
            unchanged: footage is often dry, and a network that only ever saw rain takes fine
            bright detail for it.
        clean_dirs: folders of clean pictures and video frames for synthetic rain.
        val_dir: held-out clean pictures, rained on with a fixed seed, to watch progress.
        val_images: how many of them.
        val_preset: the rain preset drawn on them.
        heavy_val_dir: a folder of aligned heavy-rain pairs, some of which are held out.
        heavy_val_names: the rainy file names of the held-out pairs: neither they nor their
            rain layers, under any file name, reach training.
        eval_dir: pairs scored at each snapshot for the record only (Rain100L): never trained
            on and never used to pick weights.
        init_from: a model file to start from instead of random weights (a second stage
            with another data mix); relative to the working directory. A model of the same
            config with fewer blocks is grown into this one (``training.grow.deepen``).
        val_every: steps between validations (and model snapshots).
        checkpoint_minutes: minutes between resumable checkpoints.
        seed: the seed of every random choice.
    """

    steps: int = 60_000
    batch: int = 16
    patch: int = 64
    lr: float = 5e-4
    milestones: tuple[float, ...] = (0.6, 0.8)
    ssim_weight: float = 1.0
    psnr_weight: float = 0.0
    l1_weight: float = 0.0
    mean_weight: float = 0.0
    lowpass_weight: float = 0.0
    ema_decay: float = 0.0
    real_fraction: float = 0.3
    rain_presets: dict[str, float] = field(
        default_factory=lambda: {"light": 0.7, "heavy-streaks": 0.3}
    )
    real_dirs: tuple[str, ...] = ()
    layer_dirs: tuple[str, ...] = ()
    layer_strength: tuple[float, float] = (0.3, 1.0)
    structure_fraction: float = 0.0
    fence_fraction: float = 0.0
    dry_fraction: float = 0.0
    clean_dirs: tuple[str, ...] = ()
    val_dir: str = ""
    val_images: int = 12
    val_preset: str = "light"
    heavy_val_dir: str = ""
    heavy_val_names: tuple[str, ...] = ()
    eval_dir: str = ""
    init_from: str = ""
    val_every: int = 2000
    checkpoint_minutes: float = 5.0
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown train option(s): {', '.join(unknown)}")
        values = dict(values)
        for key in (
            "milestones",
            "real_dirs",
            "layer_dirs",
            "layer_strength",
            "clean_dirs",
            "heavy_val_names",
        ):
            if key in values:
                values[key] = tuple(values[key])
        bad = sorted(
            {*values.get("rain_presets", {}), values.get("val_preset", "light")}
            - {*PRESETS, REAL_LAYERS}
        )
        if bad:
            raise ValueError(f"unknown rain preset(s): {', '.join(bad)}")
        return cls(**values)


PRECISIONS = ("fp32", "bf16")


def heavy_validation_pairs(cfg: TrainConfig, data_root: Path) -> list[Pair]:
    """The held-out heavy-rain pairs (none when the recipe names none)."""
    if not cfg.heavy_val_dir:
        return []
    return hold_out(find_pairs(data_root / cfg.heavy_val_dir), cfg.heavy_val_names)[1]


def training_pairs(dirs: tuple[str, ...], data_root: Path, held_out: list[Pair]) -> list[Pair]:
    """The pairs of ``dirs``, less every held-out picture wherever it turns up."""
    pairs = [p for d in dirs for p in find_pairs(data_root / d)]
    return without_pictures_of(pairs, held_out) if held_out else pairs


class PatchSampler:
    """Training batches: a mix of real pairs and synthetic rain, with the paper's augmentation.

    Attributes:
        real_pairs, layer_pairs: the pairs it trains on directly and those whose rain layers it
            transplants, held-out validation pairs already removed.
    """

    def __init__(self, cfg: TrainConfig, data_root: Path) -> None:
        self.cfg = cfg
        held_out = heavy_validation_pairs(cfg, data_root)
        self.real_pairs = training_pairs(cfg.real_dirs, data_root, held_out)
        self.layer_pairs = training_pairs(cfg.layer_dirs, data_root, held_out)
        self.real = [read_pair(p) for p in self.real_pairs]
        self.layers = (
            RainLayers([rain_layer(*read_pair(p)) for p in self.layer_pairs], cfg.layer_strength)
            if self.layer_pairs
            else None
        )
        clean_files = [f for d in cfg.clean_dirs for f in find_clean_images(data_root / d)]
        self.clean = [read_rgb(f, CLEAN_MAX_SIDE) for f in clean_files]
        self.presets = list(cfg.rain_presets)
        weights = np.array([cfg.rain_presets[k] for k in self.presets], np.float64)
        self.preset_p = weights / weights.sum()
        if cfg.real_fraction > 0 and not self.real:
            raise ValueError("real_fraction > 0 but no real pairs were given")
        if cfg.real_fraction < 1 and not self.clean:
            raise ValueError("real_fraction < 1 but no clean images were given")
        if REAL_LAYERS in self.presets and self.layers is None:
            raise ValueError(f"rain preset {REAL_LAYERS!r} needs layer_dirs")
        log.info(
            "training data: %d real pairs, %d rain layers, %d clean images (%d pairs held out)",
            len(self.real),
            len(self.layer_pairs),
            len(self.clean),
            len(held_out),
        )

    def _one(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        patch = self.cfg.patch
        if rng.random() < self.cfg.real_fraction:
            rainy, clean = self.real[int(rng.integers(len(self.real)))]
            y, x, h, w = crop_box(rng, rainy.shape, patch)
            rainy, clean = rainy[y : y + h, x : x + w], clean[y : y + h, x : x + w]
        else:
            image = self.clean[int(rng.integers(len(self.clean)))]
            y, x, h, w = crop_box(rng, image.shape, patch)
            clean = image[y : y + h, x : x + w]
            # no draw at all when off: earlier configs keep their exact random streams
            if self.cfg.structure_fraction and rng.random() < self.cfg.structure_fraction:
                clean = draw_thin_structures(rng, clean)
            if self.cfg.fence_fraction and rng.random() < self.cfg.fence_fraction:
                clean = draw_fence(rng, clean)
            preset = self.presets[int(rng.choice(len(self.presets), p=self.preset_p))]
            if self.cfg.dry_fraction and rng.random() < self.cfg.dry_fraction:
                rainy = clean
            elif preset == REAL_LAYERS:
                rainy = transplant(clean, self.layers.sample(rng, h, w))
            else:
                rainy = RainField(h, w, PRESETS[preset], rng).apply(clean)
        return augment(rng, rainy, clean, patch)

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(rainy, clean) float tensors N x 3 x patch x patch in [0, 1], RGB."""
        items = [self._one(rng) for _ in range(self.cfg.batch)]
        rainy = np.stack([r for r, _ in items])
        clean = np.stack([c for _, c in items])
        to = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div_(255.0)  # noqa: E731
        return to(rainy), to(clean)


class StepBatches(Dataset):
    """The batches of steps ``first + 1`` to ``last``, item ``i`` being step ``first + i + 1``'s.

    Each is drawn from a generator seeded by the run's seed and its step alone, so worker
    processes can draw them side by side and a resumed run draws the very batches it would
    have drawn without stopping."""

    def __init__(self, sampler: PatchSampler, seed: int, first: int, last: int) -> None:
        self.sampler, self.seed, self.first, self.last = sampler, seed, first, last

    def __len__(self) -> int:
        return self.last - self.first

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sampler.batch(np.random.default_rng((self.seed, self.first + i + 1)))


ImagePairs = list[tuple[np.ndarray, np.ndarray]]


def validation_sets(cfg: TrainConfig, data_root: Path) -> dict[str, ImagePairs]:
    """The sets scored at each snapshot, by the name their scores are logged under.

    ``val``: held-out clean pictures with seeded synthetic rain, the same on every run;
    ``val_dry``: the same pictures without rain, which should come back unchanged;
    ``val_heavy``: the held-out real heavy pairs; ``eval``: the evaluation-only pairs."""
    sets: dict[str, ImagePairs] = {}
    if cfg.val_dir:
        rng = np.random.default_rng(12345)
        files = list_images(data_root / cfg.val_dir)[: cfg.val_images]
        clean = [read_rgb(f, CLEAN_MAX_SIDE) for f in files]
        sets["val"] = [(add_rain(c, cfg.val_preset, rng), c) for c in clean]
        sets["val_dry"] = [(c, c) for c in clean]
    if cfg.heavy_val_dir:
        sets["val_heavy"] = [read_pair(p) for p in heavy_validation_pairs(cfg, data_root)]
    if cfg.eval_dir:
        sets["eval"] = [read_pair(p) for p in find_pairs(data_root / cfg.eval_dir)]
    return sets


def validate(net: Callable[[torch.Tensor], torch.Tensor], pairs: ImagePairs) -> dict[str, Any]:
    """Mean PSNR-Y of ``net`` on ``pairs``, and its mean brightness error per RGB channel.

    A network in training mode is scored in eval mode and left as it was; one on a GPU is given
    the pictures there."""
    module = net if isinstance(net, torch.nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
        device = next(module.parameters()).device
        if device.type != "cpu":
            net = lambda x: module(x.to(device)).cpu()  # noqa: E731
    psnrs, biases = [], []
    for rainy, clean in pairs:
        out = derain_rgb(net, rainy)
        psnrs.append(psnr(luma(out), luma(clean)))
        biases.append(out.reshape(-1, 3).mean(0) - clean.reshape(-1, 3).mean(0))
    if module is not None:
        module.train(was_training)
    return {
        "psnr_y": round(float(np.mean(psnrs)), 3),
        "bias_rgb": [round(float(b), 2) for b in np.mean(biases, axis=0)],
    }


class Trainer:
    """Owns the network, optimizer, schedule and RNG of one run, and its folder on disk."""

    def __init__(
        self,
        model_cfg: DCSFNConfig,
        cfg: TrainConfig,
        data_root: Path,
        out_dir: Path,
        precision: str | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        """``precision``: ``fp32`` or ``bf16``; None keeps a resumed run's own (else fp32).
        ``device``: where the network trains (``cpu``, ``cuda``, ``cuda:N``)."""
        if precision not in (None, *PRECISIONS):
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}")
        self.model_cfg, self.cfg = model_cfg, cfg
        self.data_root, self.out_dir = data_root, out_dir
        self.device = torch.device(device)
        self.precision = precision or "fp32"
        self._precision_given = precision is not None
        torch.manual_seed(cfg.seed)
        self.net = build_network(model_cfg)
        self.earlier_stage: dict[str, Any] | None = None  # how the starting weights were made
        self.grown_from: int | None = None  # blocks of a shallower start, grown by deepen()
        if cfg.init_from:
            start = load_model(cfg.init_from)
            weights = start.net.state_dict()
            if start.config != dataclasses.replace(model_cfg, num_blocks=start.config.num_blocks):
                raise ValueError(f"{cfg.init_from}: another model config than this run's")
            if start.config.num_blocks != model_cfg.num_blocks:
                weights = deepen(weights, start.config, model_cfg.num_blocks)
                self.grown_from = start.config.num_blocks
            self.net.load_state_dict(weights)
            self.earlier_stage = start.info.metadata
        # Channels-last convolutions ran 1.2-1.5x faster on an AVX-512 CPU's oneDNN, bf16 more
        # still where the CPU has bfloat16 instructions.
        self.net.to(self.device, memory_format=torch.channels_last)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # patches of one size: time kernels once
        self.ema = (
            AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay))
            if cfg.ema_decay
            else None
        )
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(
            self.opt, [int(m * cfg.steps) for m in cfg.milestones], gamma=0.1
        )
        self.step = 0
        self.wall = 0.0

    @property
    def kept(self) -> torch.nn.Module:
        """The network that is validated and snapshotted: the average, where one is kept."""
        return self.ema.module if self.ema is not None else self.net

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def log_path(self) -> Path:
        return self.out_dir / "log.jsonl"

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "wall": self.wall,
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "model_config": self.model_cfg.to_dict(),
            "precision": self.precision,
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def save_checkpoint(self) -> None:
        """Write the resumable state atomically: a crash never leaves a half-written file."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        os.replace(tmp, self.checkpoint_path)

    def resume(self) -> None:
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if state["model_config"] != self.model_cfg.to_dict():
            raise ValueError(f"{self.checkpoint_path}: trained with another model config")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{self.checkpoint_path}: kept no weight average to resume")
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.wall = state["step"], state["wall"]
        if not self._precision_given:
            self.precision = state.get("precision", self.precision)

    def _forget_log_after(self, step: int) -> None:
        """Drop log records a killed run wrote after its last checkpoint: they are redone.

        Done when training goes on, not on resume, so that exporting from a run in progress
        leaves its log alone."""
        if not self.log_path.exists():
            return
        lines = self.log_path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        if len(kept) < len(lines):
            tmp = self.log_path.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, self.log_path)

    def snapshot_path(self, step: int) -> Path:
        return self.out_dir / "snapshots" / f"step-{step:06d}.pt"

    def snapshot(self, scores: dict[str, Any]) -> Path:
        """The weights now, in the shipping format, with how they were made."""
        path = self.snapshot_path(self.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_model(path, self.kept, self.model_cfg, "RGB", self.metadata(scores))
        return path

    def metric_names(self) -> dict[str, str]:
        """What each validation set's scores are called in the weights' metadata."""
        cfg = self.cfg
        return {
            "val": f"val_synthetic_{cfg.val_preset}",
            "val_dry": f"val_no_rain_{Path(cfg.val_dir).name}",
            "val_heavy": f"val_heavy_{Path(cfg.heavy_val_dir).name}",
            "eval": f"eval_only_{Path(cfg.eval_dir).name}",
        }

    def metadata(self, scores: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        return {
            "num_params": sum(p.numel() for p in self.net.parameters()),
            "value_range": [0.0, 1.0],
            "training_data": {
                "real_pairs": list(cfg.real_dirs),
                "real_rain_layers": list(cfg.layer_dirs),
                "held_out": [f"{cfg.heavy_val_dir}/{n}" for n in cfg.heavy_val_names],
                "synthetic_rain_on": list(cfg.clean_dirs),
                "real_fraction": cfg.real_fraction,
                "structure_fraction": cfg.structure_fraction,
                "fence_fraction": cfg.fence_fraction,
                "dry_fraction": cfg.dry_fraction,
                "layer_strength": list(cfg.layer_strength),
                "rain_presets": dict(cfg.rain_presets),
                "started_from": cfg.init_from or None,
                "grown_from_blocks": self.grown_from,
            },
            "recipe": {
                "loss": self.loss_name(),
                "optimizer": "Adam",
                "weight_average": f"EMA, decay {cfg.ema_decay:g}" if cfg.ema_decay else None,
                "lr": cfg.lr,
                "milestones": list(cfg.milestones),
                "batch": cfg.batch,
                "patch": cfg.patch,
                "planned_steps": cfg.steps,
                "precision": self.precision,
            },
            "steps": self.step,
            "train_hours": round(self.wall / 3600, 2),
            "metrics": {self.metric_names()[k]: v for k, v in scores.items()},
            "earlier_stage": self.earlier_stage,
        }

    def loss_name(self) -> str:
        terms = []
        if self.cfg.ssim_weight:
            terms.append(
                "-SSIM" if self.cfg.ssim_weight == 1 else f"-{self.cfg.ssim_weight:g} SSIM"
            )
        if self.cfg.psnr_weight:
            terms.append(f"-{self.cfg.psnr_weight:g} PSNR (dB per patch)")
        if self.cfg.l1_weight:
            terms.append(f"{self.cfg.l1_weight:g} L1")
        if self.cfg.mean_weight:
            terms.append(f"{self.cfg.mean_weight:g} |mean colour error|")
        if self.cfg.lowpass_weight:
            terms.append(f"{self.cfg.lowpass_weight:g} L1 of 8x8 block means")
        return " + ".join(terms).replace("+ -", "- ")

    def train_step(self, rainy: torch.Tensor, clean: torch.Tensor) -> float:
        rainy = rainy.to(self.device, non_blocking=True)
        rainy = rainy.contiguous(memory_format=torch.channels_last)
        clean = clean.to(self.device, non_blocking=True)
        bf16 = self.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.net(rainy)
        out = out.float()
        loss = -self.cfg.ssim_weight * ssim(out, clean)
        if self.cfg.psnr_weight:
            mse = (out - clean).pow(2).mean(dim=(1, 2, 3))
            loss = loss + self.cfg.psnr_weight * 10 * torch.log10(mse + 1e-8).mean()
        if self.cfg.l1_weight:
            loss = loss + self.cfg.l1_weight * (out - clean).abs().mean()
        if self.cfg.mean_weight:
            colour_error = (out - clean).mean(dim=(2, 3)).abs().mean()
            loss = loss + self.cfg.mean_weight * colour_error
        if self.cfg.lowpass_weight:
            veil_error = (F.avg_pool2d(out, 8) - F.avg_pool2d(clean, 8)).abs().mean()
            loss = loss + self.cfg.lowpass_weight * veil_error
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.net)
        self.sched.step()
        self.step += 1
        return loss.item()

    def run(
        self,
        until: int | None = None,
        progress: bool = True,
        minutes: float | None = None,
        workers: int = 0,
    ) -> None:
        """Train to step ``until`` (default: the planned total), checkpointing as it goes.

        ``minutes``: stop sooner, once this much time has gone by, with the weights of then
        validated and snapshotted (a lease of a GPU machine ends on time, not on a step).
        ``workers``: processes drawing the batches (0: this one, between steps)."""
        until = self.cfg.steps if until is None else min(until, self.cfg.steps)
        deadline = time.monotonic() + minutes * 60 if minutes else None
        sampler = PatchSampler(self.cfg, self.data_root)
        if workers:
            # OpenCV's thread pool does not survive fork(): a worker whose copy of a pool that had
            # run (reading the pictures resizes them) is set up again hangs. The workers are the
            # parallelism, so the pool goes before they are forked (PyTorch's own threads are
            # set to 1 in each worker by the loader).
            cv2.setNumThreads(1)
        batches = DataLoader(
            StepBatches(sampler, self.cfg.seed, self.step, until),
            batch_size=None,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
        val = validation_sets(self.cfg, self.data_root)
        self.net.train()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._forget_log_after(self.step)
        last_ckpt = time.monotonic()
        window: list[float] = []
        window_start = time.monotonic()
        bar = tqdm(
            total=until, initial=self.step, disable=not progress, unit="step", smoothing=0.05
        )
        with open(self.log_path, "a") as log_file:
            for rainy, clean in batches:
                t0 = time.monotonic()
                loss = self.train_step(rainy, clean)
                self.wall += time.monotonic() - t0
                window.append(loss)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self.sched.get_last_lr()[0]:.1e}")
                out_of_time = deadline is not None and time.monotonic() > deadline
                record: dict[str, Any] = {}
                if self.step % 100 == 0 or self.step == until or out_of_time:
                    elapsed = time.monotonic() - window_start
                    record = {
                        "step": self.step,
                        "loss": round(float(np.mean(window)), 5),
                        "lr": self.sched.get_last_lr()[0],
                        "steps_per_s": round(len(window) / max(elapsed, 1e-9), 3),
                        "wall_h": round(self.wall / 3600, 3),
                        "precision": self.precision,
                    }
                    window, window_start = [], time.monotonic()
                at_val_step = self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps
                if val and (at_val_step or out_of_time):
                    scores = {name: validate(self.kept, pairs) for name, pairs in val.items()}
                    for name, score in scores.items():
                        record[f"{name}_psnr_y"] = score["psnr_y"]
                        record[f"{name}_bias_rgb"] = score["bias_rgb"]
                    self.snapshot(scores)
                if record:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                if out_of_time:
                    break
                if time.monotonic() - last_ckpt > self.cfg.checkpoint_minutes * 60:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
        bar.close()
        self.save_checkpoint()


def load_train_config(path: str | Path) -> tuple[DCSFNConfig, TrainConfig]:
    """The ``[model]`` and ``[train]`` tables of a config file."""
    values = read_toml(path)
    return DCSFNConfig.from_dict(values.get("model", {})), TrainConfig.from_dict(
        values.get("train", {})
    )
