"""The sets every snapshot is scored on, and the scoring: mean PSNR-Y and brightness error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.batches import held_out_sets
from training.data import find_pairs, list_images, read_pair, read_rgb
from training.evaluate import derain_rgb
from training.metrics import luma, psnr
from training.rain import add_rain
from training.recipe import CLEAN_MAX_SIDE, TrainConfig

ImagePairs = list[tuple[np.ndarray, np.ndarray]]


def validation_sets(cfg: TrainConfig, data_root: Path) -> dict[str, ImagePairs]:
    """The sets scored at each snapshot, by the name their scores are logged under.

    ``val``: held-out clean pictures with seeded synthetic rain, the same on every run;
    ``val_dry``: the same pictures without rain, which should come back unchanged;
    ``val_heavy``: the held-out real heavy pairs; ``val_pairs``: the held-out published pairs of
    another rain; ``eval``: the evaluation-only pairs."""
    sets: dict[str, ImagePairs] = {}
    if cfg.val_dir:
        rng = np.random.default_rng(12345)
        files = list_images(data_root / cfg.val_dir)[: cfg.val_images]
        clean = [read_rgb(f, CLEAN_MAX_SIDE) for f in files]
        sets["val"] = [(add_rain(c, cfg.val_preset, rng), c) for c in clean]
        sets["val_dry"] = [(c, c) for c in clean]
    for name, pairs in held_out_sets(cfg, data_root).items():
        sets[name] = [read_pair(p) for p in pairs]
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
