"""A training run's recipe: the ``[train]`` table of a config file, as a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.config import ConfigError, DCSFNConfig, read_toml, typed
from training.rain import PRESETS

#: the longest side clean pictures are read at, for training and for the packed data
CLEAN_MAX_SIDE = 640
#: the name under which ``rain_presets`` weighs real rain layers cut from ``layer_dirs``
REAL_LAYERS = "real-layers"
#: a pixel whose rainy and clean values lie this close (grey levels, every channel) is dry
DRY_LEVEL = 2.0
#: the number formats a run trains in
PRECISIONS = ("fp32", "bf16")


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
        dry_mean_weight: weight of the mean colour error, per channel, over only the pixels
            the rain left alone (rainy within :data:`DRY_LEVEL` grey levels of clean). A mean
            over the whole patch lets a network that leaves streaks darken the scene around
            them to even out (the light slot darkens dry pictures by 0.6 grey levels and still
            scenes under dense streaks by 3); this one asks the scene behind the rain to keep
            its brightness.
        left_weight: weight of a mean of the output's excess over the clean patch (rain left
            behind; rain only adds light): on top of L1 it prices a streak left above a detail
            lost, since what the light slot misses on published rain is streaks it leaves.
        as_product: the loss judges what the product gives, not the bare network: its output
            averaged with its run on the mirror image and kept below the input
            (:class:`~training.route.FlipAverage`, :func:`~training.route.below_input`). The
            mirror average is the largest single gain at inference (+0.4 dB on heavy rain), and
            trained through it the network may learn errors that the mirror cancels. Twice the
            time a step.
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
        pairs_val_dir: a folder of published pairs of another rain (not heavy, not the
            evaluation set's), some of which are held out and scored as ``val_pairs``.
        pairs_val_names: the rainy file names of those held-out pairs, kept from training as
            ``heavy_val_names`` are.
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
    dry_mean_weight: float = 0.0
    left_weight: float = 0.0
    as_product: bool = False
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
    pairs_val_dir: str = ""
    pairs_val_names: tuple[str, ...] = ()
    eval_dir: str = ""
    init_from: str = ""
    val_every: int = 2000
    checkpoint_minutes: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        counts = ("steps", "batch", "patch", "val_every", "val_images")
        fractions = ("real_fraction", "structure_fraction", "fence_fraction", "dry_fraction")
        rules = [
            *((getattr(self, n) < 1, f"{n} must be 1 or more") for n in counts),
            *((not 0 <= getattr(self, n) <= 1, f"{n} must be in 0..1") for n in fractions),
            (self.lr <= 0, "lr must be above 0"),
            (not 0 <= self.seed < 2**63, "seed must be from 0 to 2**63 - 1"),
            (not 0 <= self.ema_decay < 1, "ema_decay must be in 0..1 (1 excluded)"),
            (self.checkpoint_minutes <= 0, "checkpoint_minutes must be above 0"),
            (not all(0 < m <= 1 for m in self.milestones), "milestones must be in 0..1"),
            (len(self.layer_strength) != 2, "layer_strength must be [low, high]"),
            (sorted(self.layer_strength) != list(self.layer_strength), "layer_strength: low first"),
            (any(w < 0 for w in self.rain_presets.values()), "rain_presets: weights below 0"),
            (not sum(self.rain_presets.values()) > 0, "rain_presets: no weight above 0"),
        ]
        for bad, message in rules:
            if bad:
                raise ConfigError(message)

    @property
    def held_out(self) -> dict[str, tuple[str, tuple[str, ...]]]:
        """The held-out pair sets, by the name they are scored under: (folder, rainy names)."""
        return {
            "val_heavy": (self.heavy_val_dir, self.heavy_val_names),
            "val_pairs": (self.pairs_val_dir, self.pairs_val_names),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown train option(s): {', '.join(unknown)}")
        values = {
            key: typed(key, value, cls.__dataclass_fields__[key].type)
            for key, value in values.items()
        }
        bad = sorted({*values.get("rain_presets", {})} - {*PRESETS, REAL_LAYERS})
        if bad:
            raise ConfigError(f"unknown rain preset(s): {', '.join(bad)}")
        if values.get("val_preset", "light") not in PRESETS:  # drawn on pictures, no layers
            raise ConfigError(f"val_preset must be one of {', '.join(PRESETS)}")
        return cls(**values)


def load_train_config(path: str | Path) -> tuple[DCSFNConfig, TrainConfig]:
    """The ``[model]`` and ``[train]`` tables of a config file (no other)."""
    values = read_toml(path)
    unknown = sorted(set(values) - {"model", "train"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {', '.join(unknown)}; a config has [model], [train]"
        )
    return DCSFNConfig.from_dict(values.get("model", {})), TrainConfig.from_dict(
        values.get("train", {})
    )
