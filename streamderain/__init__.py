"""streamderain: remove rain from video files and live feeds with DCSFN."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from streamderain.errors import (
    InputError,
    ModelError,
    OutputError,
    StreamDerainError,
    UsageError,
)
from streamderain.options import DecodeOptions, EncodeOptions, ModelOptions, RunOptions

if TYPE_CHECKING:
    from streamderain.api import Derainer, derain_video
    from streamderain.pipeline import Stats

__all__ = [
    "DecodeOptions",
    "Derainer",
    "EncodeOptions",
    "InputError",
    "ModelError",
    "ModelOptions",
    "OutputError",
    "RunOptions",
    "Stats",
    "StreamDerainError",
    "UsageError",
    "derain_video",
]
__version__ = "0.1.0"

# The API pulls in PyTorch (seconds to import): loaded on first use, so that the command line
# starts at once (its --help, its first error, its Ctrl-C and SIGTERM handling).
_LAZY = {
    "Derainer": "streamderain.api",
    "derain_video": "streamderain.api",
    "Stats": "streamderain.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamderain' has no attribute {name!r}")
