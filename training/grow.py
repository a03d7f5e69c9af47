"""Grow a trained DCSFN into a deeper one that starts out computing exactly the same function.

Why: a deeper network trained from random weights needs days of this CPU just to catch up with
the lite model's lineage; one grown from it starts at the lite model's scores and only has to
learn what the extra blocks add (Net2Net, Chen et al. 2016, "net2deeper").

How: in every encoder and decoder, block ``i`` ends in a 1x1 "squeeze" over the block input and
all block outputs so far. A new block's squeeze gets the last old squeeze's weights on the
inputs that one saw and zeros on the new blocks' outputs, so it reproduces the old squeeze's
output exactly; the new inner-scale blocks keep their fresh weights and start to matter as
soon as training moves those zeros.
"""

from __future__ import annotations

import dataclasses
import re

import torch
from torch import Tensor

from training.config import ConfigError, DCSFNConfig, build_network

_SQUEEZE = re.compile(r"^(?P<stack>.*)\.conv1x1\.(?P<block>\d+)\.0\.(?P<kind>weight|bias)$")


def deepen(state: dict[str, Tensor], config: DCSFNConfig, num_blocks: int) -> dict[str, Tensor]:
    """The weights of ``config`` with ``num_blocks`` blocks per encoder and decoder, grown from
    ``state`` (weights of ``config``) so that both networks give the same output."""
    old = config.num_blocks
    if num_blocks < old:
        raise ConfigError(f"cannot grow {old} blocks into fewer ({num_blocks})")
    grown = build_network(dataclasses.replace(config, num_blocks=num_blocks)).state_dict()
    for name, tensor in state.items():
        grown[name] = tensor.clone()
    for name in list(grown):
        m = _SQUEEZE.match(name)
        if m is None or int(m["block"]) < old:
            continue
        last = state[f"{m['stack']}.conv1x1.{old - 1}.0.{m['kind']}"]
        if m["kind"] == "bias":
            grown[name] = last.clone()
        else:
            weight = torch.zeros_like(grown[name])
            weight[:, : last.shape[1]] = last
            grown[name] = weight
    return grown
