"""The network is exactly the authors': their checkpoints load and give their outputs."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.conftest import FIXTURES, ROOT
from training import DCSFNConfig, build_network, load_config, load_model
from training.dcsfn import RECURRENT_UNITS
from training.weights import infer_config

PARITY = {
    "gru_c8_n2_dp": DCSFNConfig(channels=8, num_blocks=2),
    "lstm_c8_n2": DCSFNConfig(channels=8, num_blocks=2, unit="LSTM"),
    "rnn_c8_n2": DCSFNConfig(channels=8, num_blocks=2, unit="RNN"),
    "single_c8_n3_s3": DCSFNConfig(channels=8, num_blocks=3, scale_num=3, single=True, cross=False),
    "nocross_c6_n2_s2": DCSFNConfig(channels=6, num_blocks=2, scale_num=2, cross=False),
    "paper_c20_n16_dp": DCSFNConfig(),
}


@pytest.mark.parametrize("name", sorted(PARITY))
def test_original_checkpoint_reproduces_original_output(shared, name):
    model = load_model(FIXTURES / f"{name}.pth")
    io = torch.load(FIXTURES / f"{name}.io.pt", weights_only=True)
    with torch.inference_mode():  # the original code reads BGR; the model takes RGB
        out = model(io["input"].flip(1)).flip(1)
    assert out.shape == io["output"].shape
    assert (out - io["output"]).abs().max().item() <= 1e-4
    assert model.config == PARITY[name]
    assert model.channel_order == "BGR"
    assert not model.training


def test_a_perturbed_weight_breaks_parity(shared):
    model = load_model(FIXTURES / "gru_c8_n2_dp.pth")
    io = torch.load(FIXTURES / "gru_c8_n2_dp.io.pt", weights_only=True)
    with torch.no_grad():
        model.net.merge[2].weight[0, 0, 1, 1] += 0.05
        out = model(io["input"].flip(1)).flip(1)
    assert (out - io["output"]).abs().max().item() > 1e-4


def test_paper_config_has_the_papers_parameter_count():
    net = build_network(load_config(ROOT / "configs" / "dcsfn-paper.toml"))
    assert sum(p.numel() for p in net.parameters()) == 6_453_147


VARIANTS = [
    DCSFNConfig(channels=4, num_blocks=2, scale_num=s, conv_num=c, unit=u, cross=x, single=single)
    for u in RECURRENT_UNITS
    for s in (2, 3, 4)
    for (c, x, single) in ((1, True, False), (2, False, False), (2, True, True))
]


@pytest.mark.parametrize(
    "config", VARIANTS, ids=lambda c: f"{c.unit}-s{c.scale_num}-x{c.cross:d}-single{c.single:d}"
)
@pytest.mark.parametrize("size", [(37, 53), (361, 641), (5, 3)])
def test_every_variant_keeps_odd_frame_sizes(config, size):
    from training.weights import DerainModel, ModelInfo

    model = DerainModel(build_network(config), ModelInfo(config, "RGB", "test")).eval()
    x = torch.rand(1, 3, *size)
    with torch.inference_mode():
        y = model(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    # A single-network checkpoint has no recurrent units or cross fusion to read back.
    expected = replace(config, cross=False, unit="GRU") if config.single else config
    assert infer_config(model.net.state_dict()) == expected


def test_bad_options_raise_value_error():
    with pytest.raises(ValueError, match="scale_num"):
        DCSFNConfig(scale_num=1)
    with pytest.raises(ValueError, match="unit"):
        DCSFNConfig(unit="Transformer")
    with pytest.raises(ValueError, match="unknown"):
        DCSFNConfig.from_dict({"chanels": 3})
