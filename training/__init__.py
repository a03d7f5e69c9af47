"""DCSFN: the network, its weights and loader, data, synthetic rain, training and evaluation.

The names below load on first use: ``training.data`` and ``training.rain`` need no PyTorch, and a
command that only checks its arguments should not wait two seconds for it to load."""

from __future__ import annotations

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
    if name not in __all__:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    from training import config, weights

    return getattr(weights if hasattr(weights, name) else config, name)
