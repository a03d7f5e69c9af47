"""``--precision int8``: the 8-bit networks shipped beside the bundled weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamderain.runner import X86_INT8
from tests.media import clean_frames, decode_all, make_clip
from tests.test_reliability import run_cli
from training import load_model, save_model
from training.metrics import psnr
from training.quantize import WEIGHTS_KEY, int8_models, int8_network_file
from training.route import HEAVY_MODEL, LIGHT_MODEL
from training.weights import WEIGHTS_DIR, ModelLoadError


def test_every_int8_network_was_made_from_the_weights_shipped_beside_it():
    import openvino as ov

    shipped = int8_models()
    assert {LIGHT_MODEL, HEAVY_MODEL} <= set(shipped)  # the default, auto, runs in 8 bits
    assert all(path.parent == WEIGHTS_DIR for path in shipped.values())
    for name, path in shipped.items():
        model = load_model(name)
        assert ov.Core().read_model(path).get_rt_info(WEIGHTS_KEY).value == model.digest()
        assert int8_network_file(model) == path


def test_int8_is_close_to_fp32_but_its_own_network(shared):
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner
    from tests.conftest import DATA
    from training.data import read_rgb

    frame = read_rgb(DATA / "real-rain" / "nturain-rb2" / "00001.jpg")
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    exact = ModelRunner(ModelOptions(model=LIGHT_MODEL, device="cpu", precision="fp32"))
    fast = ModelRunner(ModelOptions(model=LIGHT_MODEL, device="cpu", precision="int8"))
    assert fast.backend == "openvino" and "int8 with openvino" in fast.describe()
    with torch.inference_mode():
        a, b = exact.derain(x), fast.derain(x)
    pixels = [t[0].mul(255).round().byte().permute(1, 2, 0).numpy() for t in (a, b)]
    assert not np.array_equal(*pixels)  # the 8-bit network, not the fp32 one
    assert psnr(*pixels) > 50.0  # 59.8 dB (mean 0.06 grey levels) when made
    assert (b <= x).all()  # never brighter than the input, as in fp32


def test_int8_from_the_command_line_and_its_clean_refusals(tmp_path, shared):
    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(3, (96, 64)))
    done = run_cli(src, tmp_path / "out.mp4", "--precision", "int8", "-v")
    assert done.returncode == 0, done.stderr
    assert "int8 with openvino" in done.stderr
    assert len(decode_all(tmp_path / "out.mp4")[0]) == 3

    own = tmp_path / "own.pt"
    model = load_model(LIGHT_MODEL)
    with torch.no_grad():
        next(model.net.parameters()).mul_(1.01)  # weights no 8-bit network was made from
    save_model(own, model.net, model.config, "RGB", {})
    for flags, words in (
        (("--model", str(own)), "bundled models only"),
        (("--backend", "torch"), "openvino backend"),
        (("--device", "cuda"), ""),
    ):
        result = run_cli(src, tmp_path / "x.mp4", "--precision", "int8", *flags)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr
    with pytest.raises(ModelLoadError, match="bundled models only: dcsfn-lite"):
        int8_network_file(model)


def test_the_default_precision_is_int8_where_fp32_is_slow(monkeypatch):
    """``--precision auto``: the 8-bit networks on x86 CPUs (where fp32 runs the default near
    2 frames/s), for bundled models only; fp32 anywhere else."""
    from streamderain.runner import pick_precision

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert pick_precision("auto", cpu, "auto", None) == "int8"
    assert pick_precision("auto", cpu, "openvino", HEAVY_MODEL) == "int8"
    for device, backend, model in (
        (cpu, "torch", None),  # PyTorch has no 8-bit network to run
        (cpu, "auto", "dcsfn-deep"),  # no 8-bit network shipped
        (cpu, "auto", "own.pt"),
        (gpu, "auto", None),
    ):
        assert pick_precision("auto", device, backend, model) == "fp32", (device, backend, model)
    assert pick_precision("fp32", cpu, "auto", None) == "fp32"  # asked for, kept
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert pick_precision("auto", cpu, "auto", None) == "int8"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert pick_precision("auto", cpu, "auto", None) == "fp32"  # no measured 8-bit speed


def test_weights_replaced_in_the_package_run_in_fp32_not_their_old_8_bit_network(
    tmp_path, monkeypatch
):
    """README's ``average ... --out training/weights/dcsfn-lite.pt`` leaves the 8-bit network of
    the weights before: the default must run the new weights (fp32), not refuse or run the old."""
    import shutil

    import training.quantize
    import training.weights
    from streamderain.runner import pick_precision

    package = tmp_path / "weights"
    shutil.copytree(WEIGHTS_DIR, package)
    monkeypatch.setattr(training.weights, "WEIGHTS_DIR", package)
    monkeypatch.setattr(training.quantize, "WEIGHTS_DIR", package)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert pick_precision("auto", torch.device("cpu"), "auto", None) == "int8"
    light = load_model(LIGHT_MODEL)
    with torch.no_grad():
        next(light.net.parameters()).mul_(0.5)
    save_model(package / f"{LIGHT_MODEL}.pt", light.net, light.config, "RGB", {})
    assert set(int8_models()) == {HEAVY_MODEL}
    assert pick_precision("auto", torch.device("cpu"), "auto", None) == "fp32"
    with pytest.raises(ModelLoadError, match="bundled models only"):
        int8_network_file(load_model(LIGHT_MODEL))


def test_the_default_runs_what_this_cpu_picks(tmp_path, shared):
    """The command line's default is ``auto``, and ``-v`` says what it picked."""
    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(3, (96, 64)))
    done = run_cli(src, tmp_path / "out.mp4", "-v")
    assert done.returncode == 0, done.stderr
    picked = "int8" if torch.backends.cpu.get_cpu_capability() in X86_INT8 else "fp32"
    assert f"cpu {picked} with openvino" in done.stderr


def test_quantize_refuses_what_it_could_not_write_before_it_starts(tmp_path):
    """Quantizing takes half an hour: a wrong output is refused first (no NNCF needed)."""
    import subprocess
    import sys

    own = tmp_path / "own.pt"
    model = load_model(LIGHT_MODEL)
    save_model(own, model.net, model.config, "RGB", {})
    quantize = [sys.executable, "-m", "training", "quantize"]
    for args, words in (
        ((str(own),), "not a bundled model: give --out"),
        ((str(own), "--out", str(WEIGHTS_DIR / "own.int8.xml")), "outside the package"),
        ((LIGHT_MODEL, "--out", str(tmp_path / "no" / "x.int8.xml")), "no such folder"),
    ):
        result = subprocess.run([*quantize, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and words in result.stderr, result.stderr
    assert not (WEIGHTS_DIR / "own.int8.xml").exists()
