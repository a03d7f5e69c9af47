"""DCSFN: the network, its weights and loader, data, synthetic rain, training and evaluation.

The names below load on first use: ``training.data`` and ``training.rain`` need no PyTorch, and a
command that only checks its arguments should not wait two seconds for it to load."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import DCSFNConfig, build_network, load_config
    from training.weights import (
        DEFAULT_MODEL,
        DerainModel,
        ModelInfo,
        ModelLoadError,
        bundled_models,
        load_model,
        pick_device,
        save_model,
    )

_HOMES = {
    "DCSFNConfig": "training.config",
    "build_network": "training.config",
    "load_config": "training.config",
    "DEFAULT_MODEL": "training.weights",
    "DerainModel": "training.weights",
    "ModelInfo": "training.weights",
    "ModelLoadError": "training.weights",
    "bundled_models": "training.weights",
    "load_model": "training.weights",
    "pick_device": "training.weights",
    "save_model": "training.weights",
}

__all__ = [
    "DEFAULT_MODEL",
    "DCSFNConfig",
    "DerainModel",
    "ModelInfo",
    "ModelLoadError",
    "build_network",
    "bundled_models",
    "load_config",
    "load_model",
    "pick_device",
    "save_model",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
