"""Training batches: real pairs and synthetic rain on clean pictures, cut into patches.

Each step's batch depends on the run's seed and the step alone (:class:`StepBatches`), so worker
processes can draw them side by side and a resumed run draws the very batches it would have
drawn without stopping. Held-out validation pairs never reach a batch, under any file name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from training.config import ConfigError
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
    pixel_digest,
    read_layer,
    read_pair,
    read_rgb,
    shrink,
    without_pictures_of,
)
from training.rain import PRESETS, RainField, RainLayers, transplant
from training.recipe import CLEAN_MAX_SIDE, REAL_LAYERS, TrainConfig

log = logging.getLogger(__name__)


def held_out_sets(cfg: TrainConfig, data_root: Path) -> dict[str, list[Pair]]:
    """The held-out pairs of each set the recipe names (:attr:`TrainConfig.held_out`)."""
    return {
        name: hold_out(find_pairs(data_root / folder), names)[1]
        for name, (folder, names) in cfg.held_out.items()
        if folder
    }


def kept_apart(cfg: TrainConfig, data_root: Path) -> set[str]:
    """The :func:`~training.data.pixel_digest` of every picture the recipe scores on (held-out
    pairs, both sides; the validation pictures; the evaluation pairs): none may be trained on,
    under any name or in any folder."""
    pairs = [p for held in held_out_sets(cfg, data_root).values() for p in held]
    if cfg.eval_dir:
        pairs += find_pairs(data_root / cfg.eval_dir)
    apart = {pixel_digest(f) for p in pairs for f in (p.rainy, p.clean)}
    if cfg.val_dir:
        apart |= {pixel_digest(f) for f in list_images(data_root / cfg.val_dir)[: cfg.val_images]}
    return apart


def check_not_evaluation(cfg: TrainConfig) -> None:
    """Refuse, by name, a training folder that holds the evaluation set or lies inside it."""
    if not cfg.eval_dir:
        return
    held = Path(cfg.eval_dir)
    for folder in (*cfg.real_dirs, *cfg.layer_dirs, *cfg.clean_dirs):
        inside = Path(folder)
        if inside == held or held in inside.parents or inside in held.parents:
            raise ConfigError(f"{folder}: {cfg.eval_dir} is for evaluation only; never train on it")


def training_pairs(dirs: tuple[str, ...], data_root: Path, apart: set[str]) -> list[Pair]:
    """The pairs of ``dirs``, less every picture kept apart (:func:`kept_apart`) wherever it
    turns up."""
    return without_pictures_of([p for d in dirs for p in find_pairs(data_root / d)], apart)


class PatchSampler:
    """Training batches: a mix of real pairs and synthetic rain, with the paper's augmentation.

    Attributes:
        real_pairs, layer_pairs: the pairs it trains on directly and those whose rain layers it
            transplants, held-out validation pairs already removed.
    """

    def __init__(self, cfg: TrainConfig, data_root: Path) -> None:
        self.cfg = cfg
        check_not_evaluation(cfg)
        apart = kept_apart(cfg, data_root)
        self.real_pairs = training_pairs(cfg.real_dirs, data_root, apart)
        self.layer_pairs = training_pairs(cfg.layer_dirs, data_root, apart)
        self.real = [read_pair(p) for p in self.real_pairs]
        self.layers = (
            RainLayers([read_layer(p) for p in self.layer_pairs], cfg.layer_strength)
            if self.layer_pairs
            else None
        )
        clean_files = [f for d in cfg.clean_dirs for f in find_clean_images(data_root / d)]
        clean = [read_rgb(f) for f in clean_files]
        self.clean = [shrink(c, CLEAN_MAX_SIDE) for c in clean if pixel_digest(c) not in apart]
        if len(self.clean) < len(clean):
            log.warning("%d clean pictures left out: scored on", len(clean) - len(self.clean))
        self.presets = list(cfg.rain_presets)
        weights = np.array([cfg.rain_presets[k] for k in self.presets], np.float64)
        self.preset_p = weights / weights.sum()
        if cfg.real_fraction > 0 and not self.real:
            raise ConfigError("real_fraction > 0 but no real pairs were given")
        if cfg.real_fraction < 1 and not self.clean:
            raise ConfigError("real_fraction < 1 but no clean images were given")
        if REAL_LAYERS in self.presets and self.layers is None:
            raise ConfigError(f"rain preset {REAL_LAYERS!r} needs layer_dirs")
        log.info(
            "training data: %d real pairs, %d rain layers, %d clean images (%d pictures apart)",
            len(self.real),
            len(self.layer_pairs),
            len(self.clean),
            len(apart),
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
