"""DCSFN hyper-parameters as a frozen dataclass, read from TOML, and the one model builder."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from training.dcsfn import DCSFN, RECURRENT_UNITS, SingleDCSFN


class ConfigError(ValueError):
    """A setting the user chose (in a config file or an option) that cannot be used.

    ``python -m training`` shows it as one line; any other ValueError is a bug and keeps its
    traceback."""


@dataclass(frozen=True)
class DCSFNConfig:
    """The network's shape. Field names are ours; the original code's names are in brackets.

    Args:
        channels: feature channels [channel].
        num_blocks: blocks per encoder and decoder [Num_encoder].
        scale_num: levels per inner-scale block, 2 to 4 [scale_num].
        conv_num: 3x3 conv units per level [conv_num].
        unit: cross-scale unit, Conv, RNN, GRU or LSTM [uint].
        cross: cross-scale fusion between sub-networks [Net_cross].
        single: one sub-network only [single].
    """

    channels: int = 20
    num_blocks: int = 16
    scale_num: int = 4
    conv_num: int = 4
    unit: str = "GRU"
    cross: bool = True
    single: bool = False

    def __post_init__(self) -> None:
        for name in ("channels", "num_blocks", "conv_num"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.scale_num not in (2, 3, 4):
            raise ConfigError(f"scale_num must be 2, 3 or 4, got {self.scale_num!r}")
        if self.unit not in RECURRENT_UNITS:
            raise ConfigError(f"unit must be one of {RECURRENT_UNITS}, got {self.unit!r}")
        for name in ("cross", "single"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DCSFNConfig:
        """Build from a plain mapping, refusing names this config does not have."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown DCSFN option(s): {', '.join(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, other: DCSFNConfig, here: str, there: str) -> str:
        """Where ``other`` differs, for messages: "channels 8 in this run, 16 in x.pt"."""
        mine, theirs = self.to_dict(), other.to_dict()
        return "; ".join(
            f"{k} {v!r} {here}, {theirs[k]!r} {there}" for k, v in mine.items() if theirs[k] != v
        )


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file (a config from ``configs/``, a feeds file); its path in any error."""
    with open(path, "rb") as f:
        try:
            values = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        except UnicodeDecodeError:  # a video given as the config
            raise ConfigError(f"{path}: not a TOML file (not UTF-8 text)") from None
    return values


def load_config(path: str | Path) -> DCSFNConfig:
    """The ``[model]`` table of a config file as a :class:`DCSFNConfig`."""
    return DCSFNConfig.from_dict(read_toml(path).get("model", {}))


def build_network(config: DCSFNConfig) -> nn.Module:
    """The bare network for ``config``, with fresh weights."""
    if config.single:
        return SingleDCSFN(config.channels, config.num_blocks, config.scale_num, config.conv_num)
    return DCSFN(
        config.channels,
        config.num_blocks,
        config.scale_num,
        config.conv_num,
        config.unit,
        config.cross,
    )


def typed(name: str, value: Any, kind: str) -> Any:
    """A setting of the kind its dataclass field declares (``kind``: the annotation, such as
    ``float | None``; TOML's lists come back as tuples), or a one-line refusal: a string where a
    list belongs would be read letter by letter, ``true`` taken for 1, ``nan`` for a number."""
    kind = kind.removesuffix(" | None")
    if kind.startswith("tuple"):
        item_ok = (lambda v: isinstance(v, str)) if "str" in kind else _is_number
        if isinstance(value, list) and all(item_ok(v) for v in value):
            return tuple(value)
    elif kind.startswith("dict"):
        if isinstance(value, dict) and all(_is_number(v) for v in value.values()):
            return value
    elif {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": _is_number(value),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]:
        return value
    raise ConfigError(f"{name} must be {_KINDS.get(kind, kind)}, got {value!r}")


def _is_number(value: Any) -> bool:
    """A finite int or float (TOML's ``nan`` and ``inf`` are floats too)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_KINDS = {
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "tuple[str, ...]": "a list of strings",
    "tuple[float, ...]": "a list of numbers",
    "tuple[float, float]": "a list of two numbers",
    "dict[str, float]": "a table of numbers",
}
