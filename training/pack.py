"""The files a training recipe reads, copied into a folder small enough to travel.

Why: a GPU machine lent for a few minutes starts bare and takes a few tens of megabytes along
(README, "Training on a GPU"), while the shared data is several times that. Pairs and the
validation pictures are copied byte for byte; the clean pictures that synthetic rain is drawn
on are stored as the pictures training reads (shrunk to :data:`~training.recipe.CLEAN_MAX_SIDE`)
in JPEG, at the highest of :data:`QUALITIES` that keeps the folder within the size asked for.
The layout under the folder is the shared data's, so ``--data-root FOLDER`` trains on it as on
the original. The evaluation-only set stays out unless asked for (train with ``--no-eval``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2

from training.data import find_clean_images, find_pairs, list_images, read_rgb
from training.recipe import CLEAN_MAX_SIDE, TrainConfig

QUALITIES = (95, 90, 85, 80, 75, 70)


class PackTooLarge(ValueError):
    """The recipe's data does not fit the size asked for, even at the lowest quality."""


@dataclass(frozen=True)
class Packed:
    """What :func:`pack` wrote: files copied as they were, pictures re-encoded and at what
    JPEG quality, and the folder's size."""

    copied: int
    encoded: int
    quality: int
    size_bytes: int


def recipe_files(
    cfg: TrainConfig, data_root: Path, with_eval: bool = False
) -> tuple[list[Path], list[Path]]:
    """The files under ``data_root`` that training with ``cfg`` reads: (those read as they are:
    pairs and validation pictures; the clean pictures synthetic rain is drawn on)."""
    pair_dirs = [*cfg.real_dirs, *cfg.layer_dirs, *(d for d, _ in cfg.held_out.values())]
    if with_eval:
        pair_dirs.append(cfg.eval_dir)
    exact = {
        f for d in pair_dirs if d for p in find_pairs(data_root / d) for f in (p.rainy, p.clean)
    }
    if cfg.val_dir:
        exact.update(list_images(data_root / cfg.val_dir)[: cfg.val_images])
    pictures = {f for d in cfg.clean_dirs for f in find_clean_images(data_root / d)}
    return sorted(exact), sorted(pictures - exact)


def pack(
    cfg: TrainConfig,
    data_root: Path,
    out: Path,
    with_eval: bool = False,
    max_bytes: int | None = None,
) -> Packed:
    """Copy what ``cfg`` reads from ``data_root`` to ``out`` (which must not exist yet), within
    ``max_bytes`` if given."""
    exact, pictures = recipe_files(cfg, data_root, with_eval)
    fixed = sum(f.stat().st_size for f in exact)
    images = [cv2.cvtColor(read_rgb(f, CLEAN_MAX_SIDE), cv2.COLOR_RGB2BGR) for f in pictures]
    for quality in QUALITIES:
        encoded = [
            cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, quality])[1] for im in images
        ]
        size = fixed + sum(len(e) for e in encoded)
        if max_bytes is None or size <= max_bytes:
            break
    else:
        raise PackTooLarge(
            f"{size / 2**20:.1f} MiB at JPEG quality {quality}, over {max_bytes / 2**20:.1f} MiB"
        )
    out.mkdir(parents=True)
    for source in exact:
        target = out / source.relative_to(data_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    written: set[Path] = set()
    for source, data in zip(pictures, encoded, strict=True):
        target = (out / source.relative_to(data_root)).with_suffix(".jpg")
        if target in written:  # pictures of one name in two formats: both are kept
            target = target.with_name(f"{source.name}.jpg")
        written.add(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.tobytes())
    return Packed(len(exact), len(pictures), quality, size)
