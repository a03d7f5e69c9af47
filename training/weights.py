"""One loader for every DCSFN checkpoint: bundled names, our own files, the authors' files.

Checkpoints are untrusted input: they are read with ``torch.load(..., weights_only=True)``
only, so a file that tries to run code is refused before any of it runs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.config import ConfigError, DCSFNConfig, build_network

FORMAT = "streamderain-dcsfn/1"
WEIGHTS_DIR = Path(__file__).with_name("weights")
DEFAULT_MODEL = "dcsfn-lite"
CHANNEL_ORDERS = ("RGB", "BGR")


class ModelLoadError(Exception):
    """A model could not be loaded; the message names the source and the reason."""


def bundled_models() -> dict[str, Path]:
    """Names of the models shipped inside the package, and their files."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.pt"))}


def _lineage(meta: dict[str, Any]) -> tuple[int, int]:
    """Steps and stages of training behind weights, following ``earlier_stage`` back."""
    steps, stages, stage = 0, 0, meta
    while stage:
        steps += stage.get("steps", 0)
        stages += 1
        stage = stage.get("earlier_stage")
    return steps, stages


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint says about its weights, kept beside them."""

    config: DCSFNConfig
    channel_order: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """The metadata as a few lines a user can read: purpose, training, scores, speed."""
        meta = self.metadata
        lines = [f"for: {meta['purpose']}"] if meta.get("purpose") else []
        lines.append("trained: {:,} steps in {} stage(s)".format(*_lineage(meta)))
        merged = meta.get("averaged_with")
        if merged:
            steps, stages = _lineage(merged["metadata"])
            lines.append(
                f"averaged: {merged['share']:.0%} of its weights from a model of {steps:,} "
                f"steps in {stages} stage(s) ({merged['name']})"
            )
        presets = meta.get("training_data", {}).get("rain_presets")
        if presets:
            lines.append(f"last stage's rain: {', '.join(presets)}")
        scores = []
        metrics = meta.get("metrics", {})
        for key, value in metrics.items():
            if isinstance(value, dict):
                value = value.get("derained", value).get("psnr_y")
            if key.startswith("eval_only_") and key.removeprefix("eval_only_") in metrics:
                continue  # the training log's score of a set the export scored again
            if isinstance(value, float | int):
                scores.append(f"{key} {value:.2f} dB")
        if scores:
            lines.append(f"PSNR-Y: {'; '.join(scores)}")
        if meta.get("mirror_scale"):
            lines.append(f"--flip-average: its mirror image run at {meta['mirror_scale']:.0%} size")
        if meta.get("cpu_fps_640x360"):
            fps = meta["cpu_fps_640x360"]
            lines.append(f"speed: {fps} frames/s at 640x360, whole pipeline on a 2-core CPU")
        return lines


class DerainModel(nn.Module):
    """A DCSFN network ready for RGB frames of any size.

    Maps float tensors N x 3 x H x W in [0, 1], RGB, to the same, whatever channel order the
    checkpoint's network was trained in (:attr:`channel_order`: the authors' weights expect
    BGR, and are flipped to it here, so no caller handles channel order). Frames smaller than
    the network's minimum side are padded and cropped back. Outputs are not clamped (so they
    match the original code exactly); clamp when converting to pixels.
    """

    def __init__(self, net: nn.Module, info: ModelInfo) -> None:
        super().__init__()
        self.net = net
        self.info = info

    @property
    def channel_order(self) -> str:
        """The channel order of the network inside (its checkpoint's)."""
        return self.info.channel_order

    @property
    def config(self) -> DCSFNConfig:
        return self.info.config

    def digest(self) -> str:
        """A fingerprint of the network's configuration and weights: what a network converted
        from them (OpenVINO's, cached or shipped) was made from."""
        digest = hashlib.sha256()
        for name, tensor in self.net.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().numpy().tobytes())
        digest.update(repr(self.config).encode())
        return digest.hexdigest()

    def to_net_order(self, x: Tensor) -> Tensor:
        """RGB to the network's channel order, and back (a flip undoes itself)."""
        return x.flip(1) if self.channel_order == "BGR" else x

    def rgb_weights(self) -> dict[str, Tensor]:
        """The network's weights as a network for RGB pictures has them, to train on: a BGR
        checkpoint's with the colours of its first convolution's input and its last one's
        output reversed, the same function (colour meets the network only there and in its
        residual ``x - rain``)."""
        state = self.net.state_dict()
        if self.channel_order == "RGB":
            return state
        flips = {"convert.0.weight": (1,), "merge.2.weight": (0,), "merge.2.bias": (0,)}
        return {k: v.flip(flips[k]) if k in flips else v for k, v in state.items()}

    def forward(self, x: Tensor) -> Tensor:
        x = self.to_net_order(x)
        h, w = x.shape[-2:]
        need = self.net.min_size
        if h >= need and w >= need:
            return self.to_net_order(self.net(x))
        pad_h, pad_w = max(need - h, 0), max(need - w, 0)
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.to_net_order(self.net(padded)[..., :h, :w])


def infer_config(state_dict: dict[str, Tensor]) -> DCSFNConfig:
    """The configuration an original-code state dict was built with, from its names and shapes."""
    if "convert.0.weight" not in state_dict:
        raise ValueError("no 'convert.0.weight' tensor: not a DCSFN state dict")
    single = "encoder.units.0.scale1.0.0.weight" in state_dict
    prefix = "encoder" if single else "encoder_scale1"
    unit_ids = {
        int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}\.units\.(\d+)\.", k))
    }
    if not unit_ids:
        raise ValueError(f"no '{prefix}.units.*' tensors: not a DCSFN state dict")
    levels = {
        int(m.group(1))
        for k in state_dict
        if (m := re.match(rf"{prefix}\.units\.0\.scale(\d+)\.", k))
    }
    conv_num = len(
        {k for k in state_dict if re.fullmatch(rf"{prefix}\.units\.0\.scale1\.\d+\.0\.weight", k)}
    )
    unit = "GRU"
    for name, marker in (
        ("GRU", "conv_xz"),
        ("LSTM", "conv_xf"),
        ("RNN", "conv_x"),
        ("Conv", "conv"),
    ):
        if f"rec1_1.{marker}.weight" in state_dict:
            unit = name
            break
    return DCSFNConfig(
        channels=int(state_dict["convert.0.weight"].shape[0]),
        num_blocks=max(unit_ids) + 1,
        scale_num=len(levels),
        conv_num=conv_num,
        unit=unit,
        cross="fusion_1_2_1.0.weight" in state_dict,
        single=single,
    )


def _strip_prefix(state_dict: dict[str, Any]) -> dict[str, Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k.removeprefix("module."): v for k, v in state_dict.items()}
    return dict(state_dict)


def _read(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols on odd files
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL [\w.]+", str(exc))
        detail = found.group(0) if found else "content other than tensors and plain values"
        raise ModelLoadError(
            f"{path}: refused: not a plain tensor checkpoint ({detail}); nothing in it was run"
        ) from None
    except Exception as exc:  # the unpickler raises many types on junk; all mean the same here
        raise ModelLoadError(f"{path}: not a PyTorch checkpoint ({type(exc).__name__})") from None


def _holds_tensors(state: Any) -> bool:
    return isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values())


def _unpack(payload: Any, path: Path) -> tuple[dict[str, Tensor], ModelInfo]:
    """Split a loaded file into a state dict and what it says about itself."""
    if not isinstance(payload, dict):
        raise ModelLoadError(f"{path}: not a checkpoint (holds a {type(payload).__name__})")
    if payload.get("format") == FORMAT:
        try:
            config = DCSFNConfig.from_dict(payload["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path}: bad model config ({exc})") from None
        order = payload.get("channel_order")
        if order not in CHANNEL_ORDERS:
            raise ModelLoadError(f"{path}: bad channel order {order!r}")
        metadata = payload.get("metadata", {})
        scale = metadata.get("mirror_scale", 1.0) if isinstance(metadata, dict) else None
        if not isinstance(scale, (int, float)) or not 0 < scale <= 1:
            raise ModelLoadError(f"{path}: bad metadata (a table, with mirror_scale in (0, 1])")
        info = ModelInfo(config, order, str(path), dict(metadata))
        state = payload.get("state_dict")
        if not _holds_tensors(state):
            raise ModelLoadError(f"{path}: no state dict of tensors")
        return state, info
    if TRAINING_KEYS <= payload.keys():  # a run's last.pt: our own network, in RGB
        return _from_training_checkpoint(payload, path)
    state = payload
    for key in ("net", "params_ema", "params", "state_dict"):
        if isinstance(payload.get(key), dict):
            state = payload[key]
            break
    if not _holds_tensors(state):
        raise ModelLoadError(f"{path}: not a DCSFN checkpoint (no state dict of tensors)")
    state = _strip_prefix(state)
    try:
        config = infer_config(state)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: not a DCSFN checkpoint ({exc})") from None
    # The authors' code reads images with OpenCV, so their weights expect BGR.
    info = ModelInfo(config, "BGR", str(path), {"origin": "original DCSFN code"})
    return state, info


# What a training run's checkpoint (its last.pt) holds besides the optimizer's state.
TRAINING_KEYS = frozenset({"step", "net", "opt", "sched", "model_config"})


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A run's last.pt, read as untrusted as any checkpoint, refused if it is something else."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    state = _read(path)
    if not isinstance(state, dict) or not TRAINING_KEYS <= state.keys():
        raise ModelLoadError(f"{path}: not a training run's checkpoint")
    return state


def _from_training_checkpoint(state: dict[str, Any], path: Path) -> tuple[dict, ModelInfo]:
    """The weights a run would export (its weight average, where it keeps one)."""
    try:
        config = DCSFNConfig.from_dict(state["model_config"])
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: bad model config ({exc})") from None
    ema = state.get("ema")  # runs from before 2026-12-03 kept none
    weights = (
        state["net"]
        if ema is None
        else _strip_prefix({k: v for k, v in ema.items() if k.startswith("module.")})
    )
    if not _holds_tensors(weights):
        raise ModelLoadError(f"{path}: no state dict of tensors")
    metadata = {"origin": "a training run's checkpoint", "steps": state["step"]}
    return weights, ModelInfo(config, "RGB", str(path), metadata)


def resolve_source(source: str | Path | None) -> Path:
    """The file behind a bundled model name or a path."""
    name = DEFAULT_MODEL if source is None else str(source)
    if not name.strip():  # an unset shell variable: Path("") is the working folder
        raise ModelLoadError("no model named (an empty name); use a bundled model, auto or a file")
    bundled = bundled_models()
    if name in bundled:
        return bundled[name]
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ModelLoadError(f"{path}: a folder, not a model file")
    if path.exists():
        raise ModelLoadError(f"{path}: not a file")
    if isinstance(source, Path) or path.suffix or "/" in name or "\\" in name:
        raise ModelLoadError(f"{path}: no such file")
    known = ", ".join(bundled) or "none"
    raise ModelLoadError(f"{name}: unknown model name (bundled models: {known}; or auto)")


def pick_device(name: str = "auto") -> torch.device:
    """Where a network runs, for training and the runtime alike: ``auto`` is the first GPU if
    there is one, else the CPU.

    Raises:
        ValueError: a device that is not the CPU or a CUDA GPU this machine has (one line).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif device.type != "cpu":
        raise ConfigError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


def load_model(source: str | Path | None = None, device: str | torch.device = "cpu") -> DerainModel:
    """A model in eval mode, from a bundled name, our checkpoint or an original-code checkpoint.

    Raises:
        ModelLoadError: the source is missing, not a checkpoint, of another network, or holds
            code; the message names the file and the reason.
    """
    path = resolve_source(source)
    state, info = _unpack(_read(path), path)
    _check_tensors(state, info.config, path)
    net = build_network(info.config)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise ModelLoadError(f"{path}: weights do not fit DCSFN {info.config} ({first})") from None
    model = DerainModel(net, info).eval().requires_grad_(False)
    return model.to(device)


def _check_tensors(state: dict[str, Tensor], config: DCSFNConfig, path: Path) -> None:
    """Refuse weights that cannot work before anything is built from them: a config that claims
    another shape than its tensors (building it could ask for petabytes), or NaN/Inf values
    (the output would be black)."""
    try:
        found = infer_config(state)
    except (ValueError, KeyError, IndexError) as exc:
        raise ModelLoadError(f"{path}: not a DCSFN checkpoint ({exc})") from None
    # A single sub-network has no cross-scale unit and no fusion: those two fields leave no trace.
    shape = ("channels", "num_blocks", "scale_num", "conv_num", "single")
    names = shape if config.single else (*shape, "unit", "cross")
    if any(getattr(found, n) != getattr(config, n) for n in names):
        raise ModelLoadError(f"{path}: its config {config} does not match its tensors ({found})")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelLoadError(f"{path}: tensor {name} holds NaN or infinite values")


def save_model(
    path: str | Path,
    net: nn.Module,
    config: DCSFNConfig,
    channel_order: str = "RGB",
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write weights with their metadata (config, channel order, data, metrics) beside them."""
    if channel_order not in CHANNEL_ORDERS:
        raise ConfigError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "channel_order": channel_order,
        "metadata": dict(metadata or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
    }
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")  # a write cut short leaves ``path`` whole
    torch.save(payload, partial)
    os.replace(partial, path)


def average_models(
    base: DerainModel, other: DerainModel, share: float, other_name: str
) -> tuple[nn.Module, dict[str, Any]]:
    """``base``'s network with ``share`` of each parameter taken from ``other`` (a model soup).

    Why: two fine-tunings of one lineage (here the light-rain and the heavy-rain stages) average
    into one network that keeps much of each one's strengths, at no cost in speed. The metadata
    is ``base``'s, with ``other``'s kept under ``averaged_with``."""
    if base.config != other.config:
        raise ConfigError(
            "only models of one config can be averaged "
            f"({base.config.differences(other.config, 'in the first', f'in {other_name}')})"
        )
    if base.channel_order != other.channel_order:
        raise ConfigError("only models of one channel order can be averaged")
    if not 0.0 <= share <= 1.0:
        raise ConfigError("share must be between 0 and 1")
    net = build_network(base.config)
    theirs = other.net.state_dict()
    net.load_state_dict(
        {
            k: (1 - share) * v.float() + share * theirs[k].float()
            for k, v in base.net.state_dict().items()
        }
    )
    meta = dict(base.info.metadata)
    meta["averaged_with"] = {"name": other_name, "share": share, "metadata": other.info.metadata}
    return net, meta
