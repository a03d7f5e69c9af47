"""A run's options as data: what to read, how to run the model, how to write.

Each group is a frozen dataclass that checks itself when it is made, with the one-line message
a user sees, so the command line, the Python API, batch workers and Ray actors all take the
same values and refuse the same mistakes. Messages name the command-line flag, which is what
most users typed.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from streamderain.errors import UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")
BACKENDS = ("auto", "torch", "openvino")
ENCODERS = ("pyav", "ffmpeg")
COMPARE_MODES = ("side-by-side", "stacked")
# x264's and x265's (the only encoders --preset goes to); checked here, as x264 prints its own line
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
           "veryslow", "placebo")  # fmt: skip
RTSP_TRANSPORTS = ("tcp", "udp")
AUTO_ON_OFF = ("auto", "on", "off")


def _check(rules: list[tuple[bool, str]]) -> None:
    for bad, message in rules:
        if bad:
            raise UsageError(message)


def _choice(flag: str, value: object, allowed: tuple[str, ...]) -> tuple[bool, str]:
    return value not in allowed, f"{flag} must be one of {', '.join(allowed)}, got {value!r}"


def _optional_choice(flag: str, value: object, allowed: tuple[str, ...]) -> tuple[bool, str]:
    return _choice(flag, value, allowed) if value is not None else (False, "")


_KIND_NAMES = {"int": "a whole number", "float": "a number", "bool": "True or False", "str": "text"}


def _of_kind(value: object, kind: str) -> bool:
    """``value`` is of ``kind`` (a field's annotation less ``| None``); True is no number, and
    NumPy's numbers are numbers."""
    if isinstance(value, bool | np.bool_) or kind == "bool":
        return kind == "bool" and isinstance(value, bool | np.bool_)
    if kind == "float":
        return isinstance(value, numbers.Real) and math.isfinite(value)
    return isinstance(value, {"int": numbers.Integral, "str": str}[kind])


_PLAIN = {"int": int, "float": float, "bool": bool, "str": str}


def _check_kinds(group: object) -> None:
    """Each option of the kind its field declares, before any rule compares it, kept as
    Python's own (``np.int64(2)`` was refused as no whole number): ``batch=2.0`` failed deep in
    a run, ``start="1"`` with a TypeError, and ``live_drop="no"`` dropped frames of a file (a
    non-empty string is true)."""
    for f in fields(group):
        value, kind = getattr(group, f.name), str(f.type).removesuffix(" | None")
        if value is not None and not _of_kind(value, kind):
            flag = f"--{f.name.replace('_', '-')}"
            raise UsageError(f"{flag} must be {_KIND_NAMES[kind]}, got {value!r}")
        if value is not None:
            object.__setattr__(group, f.name, _PLAIN[kind](value))


#: seconds no video runs to (a year): times past it are typing errors
LONGEST = 365 * 86400.0
YEAR = f"and under a year ({LONGEST:.0f} s)"


@dataclass(frozen=True)
class DecodeOptions:
    """What to read of the source, and how a live source is kept.

    Args:
        start: seconds to skip from the start.
        duration: seconds to read after ``start``.
        max_frames: frames to read at most.
        rtsp_transport: ``tcp`` (no losses) or ``udp`` for RTSP sources.
        reconnect_timeout: seconds a live source may stay lost before the run fails (0: never).
        live_drop: drop the oldest waiting frame when a live source's model falls behind
            (None: on), so the delay stays bounded; a file's frames are always all kept.
    """

    start: float | None = None
    duration: float | None = None
    max_frames: int | None = None
    rtsp_transport: str = "tcp"
    reconnect_timeout: float = 30.0
    live_drop: bool | None = None

    def __post_init__(self) -> None:
        _check_kinds(self)
        s, d, n = self.start, self.duration, self.max_frames
        _check(
            [
                # bounded: --start 1e308 overflowed deep in a run (as did --max-frames 1e23)
                (s is not None and not 0 <= s < LONGEST, f"--start must be >= 0 {YEAR}, got {s}"),
                (d is not None and not 0 < d < LONGEST, f"--duration must be > 0 {YEAR}, got {d}"),
                (
                    n is not None and not 1 <= n < 2**62,
                    f"--max-frames must be >= 1 and < 2**62, got {n}",
                ),
                _choice("--rtsp-transport", self.rtsp_transport, RTSP_TRANSPORTS),
                (
                    self.reconnect_timeout < 0,
                    f"--reconnect-timeout must be >= 0, got {self.reconnect_timeout}",
                ),
            ]
        )


@dataclass(frozen=True)
class ModelOptions:
    """Which model runs, where, and how many frames per call.

    Args:
        model: a bundled model name, ``auto`` or a checkpoint path (None: ``auto``, the
            light-rain model or the heavy-rain one by the rain, :mod:`training.route`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto``: ``int8`` where fp32 cannot keep the pace, else ``fp32``
            (:func:`~streamderain.runner.pick_precision`); ``fp16``/``bf16`` on CUDA (``bf16``
            also on CPUs that have it); ``int8`` on a CPU with OpenVINO, for the bundled models
            (faster, a little less exact: :mod:`training.quantize`).
        backend: ``auto`` (OpenVINO for fp32 and int8 on a CPU when installed, else PyTorch),
            ``torch`` or ``openvino``.
        batch: frames per model call.
        tile: run frames larger than this in overlapping tiles of this size (0: never).
        temporal: combine each derained frame with its neighbours where the scene holds still
            (``on``; ``auto``: on for video, off for a folder of unrelated pictures; ``off``).
        flip_average: also run the model on each frame's mirror image and average the two
            (+0.3 to +0.7 dB, at about twice the model's time; :class:`training.route.FlipAverage`):
            ``on``; ``auto``: on for files and folders, off for live sources, where frames/s
            is what counts, and in :class:`~streamderain.api.Derainer`; ``off``.
    """

    model: str | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    batch: int = 1
    tile: int = 0
    temporal: str = "auto"
    flip_average: str = "auto"

    def __post_init__(self) -> None:
        if self.model is not None:
            object.__setattr__(self, "model", str(self.model))
        if type(self.device).__module__ == "torch":  # torch.device("cuda:0"), as detectors take
            object.__setattr__(self, "device", str(self.device))
        _check_kinds(self)
        _check(
            [
                (self.batch < 1, f"--batch must be at least 1, got {self.batch}"),
                (self.tile < 0, f"--tile must be 0 (off) or positive, got {self.tile}"),
                _choice("--precision", self.precision, PRECISIONS),
                _choice("--backend", self.backend, BACKENDS),
                (
                    self.precision == "int8" and self.backend == "torch",
                    "--precision int8 runs with the openvino backend, not torch",
                ),
                _choice("--temporal", self.temporal, AUTO_ON_OFF),
                _choice("--flip-average", self.flip_average, AUTO_ON_OFF),
            ]
        )


@dataclass(frozen=True)
class EncodeOptions:
    """How the output is written.

    Args:
        codec: video codec (None: H.264 for mp4/mov/mkv, VP9 for webm).
        crf: constant quality (None: visually lossless for the codec).
        preset: x264 speed preset (None: ``fast``).
        encoder: ``pyav`` (PyAV's own FFmpeg) or ``ffmpeg`` (an ffmpeg binary on PATH).
        compare: ``side-by-side`` or ``stacked`` to write before and after together.
    """

    codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    encoder: str = "pyav"
    compare: str | None = None

    def __post_init__(self) -> None:
        _check_kinds(self)
        crf = self.crf
        _check(
            [
                (crf is not None and not 0 <= crf <= 63, f"--crf must be in 0..63, got {crf}"),
                _choice("--encoder", self.encoder, ENCODERS),
                _optional_choice("--preset", self.preset, PRESETS),
                _optional_choice("--compare", self.compare, COMPARE_MODES),
            ]
        )


@dataclass(frozen=True)
class RunOptions:
    """Everything one run takes besides its input and output."""

    decode: DecodeOptions = field(default_factory=DecodeOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    encode: EncodeOptions = field(default_factory=EncodeOptions)

    def __post_init__(self) -> None:
        """Each group of its own kind: ``RunOptions(model="dcsfn-lite")`` failed in the run with
        a TypeError about dataclasses."""
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not f.default_factory:
                raise TypeError(
                    f"RunOptions({f.name}=...) takes {f.default_factory.__name__}, got "
                    f"{type(value).__name__} {value!r} (options by name: "
                    "RunOptions.of(model='dcsfn-lite', crf=0))"
                )

    @classmethod
    def names(cls) -> set[str]:
        """Every option's name, across the groups (what :meth:`of` takes)."""
        base = cls()
        return {name for f in fields(base) for name in _names(getattr(base, f.name))}

    @classmethod
    def of(cls, **values: Any) -> RunOptions:
        """Options from flat keyword values (``crf=0, device="cpu"``), each sent to its group."""
        return cls().replace(**values)

    def shaping(self) -> dict[str, Any]:
        """The options that shape an output, not where or how fast it is made: a batch redoes
        an output that other ones made."""
        d, m = self.decode, self.model
        return {
            **{k: getattr(d, k) for k in ("start", "duration", "max_frames", "live_drop")},
            **{
                k: getattr(m, k)
                for k in ("model", "precision", "backend", "tile", "temporal", "flip_average")
            },
            **dataclasses.asdict(self.encode),
        }

    def replace(self, **values: Any) -> RunOptions:
        """A copy with some flat values changed (``options.replace(max_frames=2)``)."""
        parts: dict[str, dict[str, Any]] = {f.name: {} for f in fields(self)}
        for key, value in values.items():
            group = next((g for g in parts if key in _names(getattr(self, g))), None)
            if group is None:
                raise TypeError(f"unknown option {key!r}")
            parts[group][key] = value
        return RunOptions(
            **{g: dataclasses.replace(getattr(self, g), **v) for g, v in parts.items()}
        )


def _names(group: object) -> set[str]:
    return {f.name for f in fields(group)}


#: the model's options: one loaded model stands for them (a runner lent to a run, a feed's actor)
MODEL_OPTIONS = frozenset(_names(ModelOptions))
