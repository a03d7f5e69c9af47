"""DCSFN: the network, its weights and loader, data, synthetic rain, training and evaluation."""

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
