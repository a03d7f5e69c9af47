"""One loader for every model source, with one documented error for every bad one."""

from __future__ import annotations

import pickle

import pytest
import torch

from tests.conftest import FIXTURES
from training import (
    DEFAULT_MODEL,
    DCSFNConfig,
    ModelLoadError,
    build_network,
    bundled_models,
    load_model,
    save_model,
)


class _Exploit:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_original_checkpoint_without_module_prefix_and_bare_state_dict(tmp_path, shared):
    state = torch.load(FIXTURES / "lstm_c8_n2.pth", weights_only=True)["net"]
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    model = load_model(bare)
    assert model.config.unit == "LSTM"
    assert model.channel_order == "BGR"


def test_own_checkpoint_round_trip_keeps_metadata(tmp_path):
    config = DCSFNConfig(channels=4, num_blocks=1, conv_num=1)
    net = build_network(config)
    path = tmp_path / "mine.pt"
    save_model(path, net, config, "RGB", {"training_data": "test", "metrics": {"psnr_y": 1.5}})
    model = load_model(path)
    assert model.config == config
    assert model.channel_order == "RGB"
    assert model.info.metadata["metrics"] == {"psnr_y": 1.5}
    x = torch.rand(2, 3, 40, 40)
    with torch.inference_mode():
        assert torch.equal(model(x), net.eval()(x))


def test_default_model_is_bundled():
    assert DEFAULT_MODEL in bundled_models()


@pytest.mark.parametrize("name", sorted(bundled_models()))
def test_every_bundled_model_runs_and_its_metadata_matches_it(name):
    model = load_model(name)
    meta = model.info.metadata
    assert meta["num_params"] == sum(p.numel() for p in model.parameters())
    assert model.channel_order == "RGB"
    assert meta["steps"] > 0
    assert "training_data" in meta and "metrics" in meta
    assert meta["metrics"]["rain100L-test"]["derained"]["psnr_y"] >= 32.5, "no shipped step below"
    frame = torch.rand(1, 3, 45, 67)
    with torch.inference_mode():
        assert model(frame).shape == frame.shape


def _bad_sources(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("this is not a checkpoint\n")
    other = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.bias": torch.zeros(10)}, other)
    wrong_shape = tmp_path / "wrong.pth"
    state = torch.load(FIXTURES / "rnn_c8_n2.pth", weights_only=True)["net"]
    state["merge.2.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(state, wrong_shape)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    return {
        "missing": (tmp_path / "nope.pth", "no such file"),
        "text": (text, "not a PyTorch checkpoint"),
        "empty": (empty, "not a PyTorch checkpoint"),
        "other network": (other, "not a DCSFN checkpoint"),
        "wrong shapes": (wrong_shape, "do not fit DCSFN"),
        "folder": (tmp_path, "a folder, not a model file"),
        "unknown name": ("dcsfn-huge", "unknown model name"),
        "empty name": ("", "no model named (an empty name)"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "text",
        "empty",
        "other network",
        "wrong shapes",
        "folder",
        "unknown name",
        "empty name",
    ],
)
def test_bad_sources_raise_model_load_error_naming_file_and_reason(tmp_path, shared, case):
    source, reason = _bad_sources(tmp_path)[case]
    with pytest.raises(ModelLoadError) as err:
        load_model(source)
    message = str(err.value)
    assert reason in message
    assert str(source) in message
    assert "\n" not in message


@pytest.mark.parametrize("wrap", [False, True], ids=["bare", "inside-dict"])
def test_malicious_pickle_is_refused_and_runs_no_code(tmp_path, wrap):
    marker = tmp_path / "pwned"
    payload = {"net": _Exploit(marker)} if wrap else _Exploit(marker)
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump(payload, f)
    torch_saved = tmp_path / "evil-torch.pth"
    torch.save(payload, torch_saved)
    assert not marker.exists()
    for path in (evil, torch_saved):
        with pytest.raises(ModelLoadError, match="refused: not a plain tensor checkpoint"):
            load_model(path)
    assert not marker.exists()


def _tiny_checkpoint(path, edit) -> None:
    config = DCSFNConfig(channels=4, num_blocks=1, scale_num=2, conv_num=1)
    net = build_network(config)
    save_model(path, net, config)
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


def test_weights_with_nan_or_inf_are_refused(tmp_path):
    for value in (float("nan"), float("inf")):
        path = tmp_path / "bad.pt"
        _tiny_checkpoint(
            path, lambda p, v=value: p["state_dict"]["convert.0.weight"].view(-1).__setitem__(0, v)
        )
        with pytest.raises(ModelLoadError, match="convert.0.weight holds NaN or infinite"):
            load_model(path)


def test_a_config_that_does_not_match_its_tensors_is_refused_before_building(tmp_path):
    """10^7 channels would ask for petabytes if it were built."""
    path = tmp_path / "huge.pt"
    _tiny_checkpoint(path, lambda p: p["config"].update(channels=10**7))
    with pytest.raises(ModelLoadError, match="does not match its tensors"):
        load_model(path)


def test_our_format_without_its_tensors_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "empty.pt"
    _tiny_checkpoint(path, lambda p: p.pop("state_dict"))
    with pytest.raises(ModelLoadError, match=f"{path}: no state dict of tensors"):
        load_model(path)


def test_passwords_are_masked_up_to_the_last_at_sign():
    from streamderain.live import mask_url

    assert mask_url("rtsp://admin:p@ss@127.0.0.1:1/x") == "rtsp://admin:***@127.0.0.1:1/x"
    assert mask_url("rtsp://admin:secret@cam/x") == "rtsp://admin:***@cam/x"
    assert mask_url("rtsp://cam/x@y") == "rtsp://cam/x@y"
    # a password with what ends an authority: it was shown whole in every message
    for password in ("p#ss", "p/ss", "p?ss"):
        assert mask_url(f"rtsp://admin:{password}@cam:1/x") == "rtsp://admin:***@cam:1/x"


def test_averaging_two_models_mixes_their_parameters_and_keeps_both_records():
    from training.weights import average_models

    base, other = load_model("dcsfn-lite"), load_model("dcsfn-lite-heavy")
    net, meta = average_models(base, other, 0.25, "dcsfn-lite-heavy")
    for (name, a), b, mixed in zip(
        base.net.state_dict().items(),
        other.net.state_dict().values(),
        net.state_dict().values(),
        strict=True,
    ):
        assert torch.allclose(mixed, 0.75 * a + 0.25 * b, atol=1e-6), name
    assert meta["averaged_with"]["share"] == 0.25
    assert meta["averaged_with"]["metadata"] == other.info.metadata
    assert meta["steps"] == base.info.metadata["steps"]
    with pytest.raises(ValueError, match="one config"):
        average_models(base, load_model(FIXTURES / "rnn_c8_n2.pth"), 0.5, "authors'")
