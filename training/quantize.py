"""The network for OpenVINO, in fp32 and in 8 bits (``--precision int8``).

The 8-bit networks of the bundled models ship inside the package beside their weights, so a user
needs OpenVINO only; making them needs NNCF (``pip install nncf``). They are post-training
quantized: calibrated on seeded synthetic rain over training-side pictures (never the
validation or evaluation pictures), then NNCF's accuracy control puts the layers whose 8 bits
cost most back to fp32 until PSNR-Y on light rain falls by at most ``max_drop`` dB. Light rain
is where the network's error is smallest, so rounding shows there first: quantized in one go,
``dcsfn-lite`` lost 0.07-0.09 dB on such a set, 0.15 on the light validation and 0.26 on Rain100L.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from training.data import list_images, read_rgb
from training.metrics import luma, psnr
from training.rain import add_rain
from training.route import below_input
from training.weights import WEIGHTS_DIR, DerainModel, ModelLoadError, load_model

if TYPE_CHECKING:
    import openvino as ov

INT8_SUFFIX = ".int8.xml"
#: where an 8-bit network records the weights it was made from (:meth:`DerainModel.digest`)
WEIGHTS_KEY = "streamderain_weights"
#: training-side pictures only: the validation uses Kodak, the evaluation Rain100L
CALIBRATION_DIRS = ("clean/images/urban100", "clean/images/sun-hays80")
CALIBRATION_RAINS = ("light", "heavy-streaks", "jorder-heavy", "varied", "light-long")
CHECK_RAINS = ("light", "light-long")


def to_openvino(model: DerainModel) -> ov.Model:
    """The fp32 network as an OpenVINO model taking any batch and frame size, in the network's
    channel order."""
    import openvino as ov

    size = model.net.min_size * 2
    net = copy.deepcopy(model.net).float().to(memory_format=torch.contiguous_format)
    return ov.convert_model(net, example_input=torch.rand(1, 3, size, size), input=[-1, 3, -1, -1])


def rained_pictures(
    data_root: Path, rains: tuple[str, ...], count: int, skip: int, side: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` (rainy, clean) pictures, seeded: the training-side pictures in one fixed
    shuffle from ``skip`` on, shrunk to ``side``, cut to a multiple of 8, rained on in turn."""
    files = [f for d in CALIBRATION_DIRS for f in list_images(data_root / d)]
    np.random.default_rng(7).shuffle(files)
    rng = np.random.default_rng(skip)
    pairs = []
    for i, path in enumerate(files[skip : skip + count]):
        clean = read_rgb(path, side)
        clean = np.ascontiguousarray(clean[: clean.shape[0] // 8 * 8, : clean.shape[1] // 8 * 8])
        pairs.append((add_rain(clean, rains[i % len(rains)], rng), clean))
    return pairs


def _net_input(model: DerainModel, rainy: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(rainy).permute(2, 0, 1)[None].float().div(255.0)
    return model.to_net_order(x).numpy()


def quantize(model: DerainModel, data_root: Path, max_drop: float = 0.03) -> ov.Model:
    """The 8-bit OpenVINO network of ``model`` (see the module's docstring); its ``rt_info``
    names the weights it was made from."""
    import nncf

    calibration = [
        _net_input(model, rainy)
        for rainy, _ in rained_pictures(data_root, CALIBRATION_RAINS, 64, 0, 640)
    ]
    check = rained_pictures(data_root, CHECK_RAINS, 24, 64, 320)

    def light_rain_psnr(compiled, pairs) -> tuple[float, list[float]]:
        scores = []
        for rainy, clean in pairs:
            x = torch.from_numpy(_net_input(model, rainy))
            y = torch.from_numpy(compiled(x.numpy())[0].copy())
            y = below_input(y, x)  # as the product gives it
            out = model.to_net_order(y)[0].mul(255.0).round().byte().permute(1, 2, 0).numpy()
            scores.append(psnr(luma(out), luma(clean)))
        return float(np.mean(scores)), scores

    network = nncf.quantize_with_accuracy_control(
        to_openvino(model),
        nncf.Dataset(calibration),
        nncf.Dataset(check),
        light_rain_psnr,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(calibration),
    )
    network.set_rt_info(model.digest(), WEIGHTS_KEY)
    return network


def int8_models() -> dict[str, Path]:
    """The bundled models that ship an 8-bit network made from their weights as they are now,
    and its file: weights replaced since (``average`` or ``export`` into the package) leave a
    stale network, which is not theirs to run."""
    shipped = {}
    for path in sorted(WEIGHTS_DIR.glob(f"*{INT8_SUFFIX}")):
        name = path.name[: -len(INT8_SUFFIX)]
        weights = WEIGHTS_DIR / f"{name}.pt"
        if weights.is_file() and _digest_of(path) == _digest_of(weights):
            shipped[name] = path
    return shipped


def _digest_of(path: Path) -> str | None:
    """:meth:`DerainModel.digest` of a bundled model's weights, or of the weights an 8-bit
    network was made from: read once per version of the file (start-up asks more than once)."""
    return _read_digest(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _read_digest(path: Path, version: int) -> str | None:
    if not path.name.endswith(INT8_SUFFIX):
        return load_model(path).digest()
    import openvino as ov

    network = ov.Core().read_model(path)
    return network.get_rt_info(WEIGHTS_KEY).value if network.has_rt_info(WEIGHTS_KEY) else None


def int8_network_file(model: DerainModel) -> Path:
    """The shipped 8-bit network made from exactly these weights."""
    digest = model.digest()
    for path in int8_models().values():
        if _digest_of(path) == digest:
            return path
    shipped = ", ".join(int8_models())
    raise ModelLoadError(f"--precision int8 runs these bundled models only: {shipped}; use fp32")
