"""The DCSFN network (Wang et al., ACM MM 2020), exactly as the authors built it.

Parameter names follow the original code so that its checkpoints load with
``load_state_dict(strict=True)``. This module holds only ``nn.Module``s built from explicit
arguments; building one from a config lives in :mod:`training.config`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RECURRENT_UNITS = ("Conv", "RNN", "GRU", "LSTM")


def conv_unit(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """A convolution followed by LeakyReLU(0.2): the building brick of the whole network."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2), nn.LeakyReLU(0.2)
    )


def _up(t: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(t, size=size, mode="nearest")


def _hw(t: Tensor) -> tuple[int, int]:
    return (t.shape[-2], t.shape[-1])


class InnerScaleBlock(nn.Module):
    """Inner-scale connection block: 2 to 4 pooled levels, coarse to fine, fused at the end.

    Args:
        channels: feature channels C.
        scale_num: number of levels (2, 3 or 4): levels 1, 2, 4 and 8 in that order.
        conv_num: 3x3 conv units per level.
    """

    def __init__(self, channels: int, scale_num: int, conv_num: int) -> None:
        super().__init__()
        if scale_num not in (2, 3, 4):
            raise ValueError(f"scale_num must be 2, 3 or 4, got {scale_num}")
        self.factors = (1, 2, 4, 8)[:scale_num]
        for f in self.factors:
            convs = nn.ModuleList(conv_unit(channels, channels, 3) for _ in range(conv_num))
            setattr(self, f"scale{f}", convs)
        for fine, coarse in zip(self.factors, self.factors[1:]):
            setattr(self, f"fusion{coarse}{fine}", conv_unit(2 * channels, channels, 1))
        self.fusion_all = conv_unit(scale_num * channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        levels: list[Tensor] = []
        coarser: Tensor | None = None
        for f in reversed(self.factors):
            h = F.max_pool2d(x, f, f) if f > 1 else x
            if coarser is not None:
                fusion = getattr(self, f"fusion{f * 2}{f}")
                h = fusion(torch.cat([h, _up(coarser, _hw(h))], dim=1))
            for conv in getattr(self, f"scale{f}"):
                h = conv(h)
            levels.append(h)
            coarser = h
        size = _hw(x)
        fine_first = [levels[-1]] + [_up(t, size) for t in reversed(levels[:-1])]
        return self.fusion_all(torch.cat(fine_first, dim=1)) + x


class _DenseBlocks(nn.Module):
    """B inner-scale blocks, densely connected: block i's 1x1 conv squeezes the input and
    all i + 1 outputs so far back to C channels. The encoder and the decoder share this shape
    and differ only in what each block is fed.

    Args:
        channels: feature channels C.
        num_blocks: blocks B.
        scale_num: levels per inner-scale block.
        conv_num: 3x3 conv units per level.
    """

    def __init__(self, channels: int, num_blocks: int, scale_num: int, conv_num: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            InnerScaleBlock(channels, scale_num, conv_num) for _ in range(num_blocks)
        )
        self.conv1x1 = nn.ModuleList(
            conv_unit((i + 2) * channels, channels, 1) for i in range(num_blocks)
        )


class Encoder(_DenseBlocks):
    """The dense blocks on the input; also returns each block's output for the decoder."""

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        outs, h = [x], x
        for unit, squeeze in zip(self.units, self.conv1x1):
            outs.append(unit(h))
            h = squeeze(torch.cat(outs, dim=1))
        return h, outs[1:]


class Decoder(_DenseBlocks):
    """The dense blocks, each fed the matching encoder block's output."""

    def forward(self, x: Tensor, feats: list[Tensor]) -> Tensor:
        outs, h = [x], x
        for unit, squeeze, skip in zip(self.units, self.conv1x1, feats):
            outs.append(unit(h + skip))
            h = squeeze(torch.cat(outs, dim=1))
        return h


def _conv3(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, 1, 1)


class ConvCell(nn.Module):
    """The ``Conv`` fusion unit: no state at all (an ablation of the paper)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3(channels)

    def forward(self, x: Tensor, state: None = None) -> tuple[Tensor, None]:
        return F.leaky_relu(self.conv(x), 0.2), None


class RNNCell(nn.Module):
    """Plain convolutional RNN cell."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_x = _conv3(channels)
        self.conv_h = _conv3(channels)

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        pre = self.conv_x(x) if state is None else self.conv_x(x) + self.conv_h(state)
        h = F.leaky_relu(torch.tanh(pre), 0.2)
        return h, h


class GRUCell(nn.Module):
    """Convolutional GRU cell: the paper's cross-scale fusion unit."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        for name in ("xz", "xr", "xn", "hz", "hr", "hn"):
            setattr(self, f"conv_{name}", _conv3(channels))

    def forward(self, x: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if state is None:
            h = torch.sigmoid(self.conv_xz(x)) * torch.tanh(self.conv_xn(x))
        else:
            z = torch.sigmoid(self.conv_xz(x) + self.conv_hz(state))
            r = torch.sigmoid(self.conv_xr(x) + self.conv_hr(state))
            n = torch.tanh(self.conv_xn(x) + self.conv_hn(r * state))
            h = (1 - z) * state + z * n
        h = F.leaky_relu(h, 0.2)
        return h, h


class LSTMCell(nn.Module):
    """Convolutional LSTM cell; its state is the pair ``[h, c]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        for name in ("xf", "xi", "xo", "xj", "hf", "hi", "ho", "hj"):
            setattr(self, f"conv_{name}", _conv3(channels))

    def forward(self, x: Tensor, state: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        if state is None:
            i = torch.sigmoid(self.conv_xi(x))
            o = torch.sigmoid(self.conv_xo(x))
            c = i * torch.tanh(self.conv_xj(x))
            h = o * c
        else:
            h, c = state
            f = torch.sigmoid(self.conv_xf(x) + self.conv_hf(h))
            i = torch.sigmoid(self.conv_xi(x) + self.conv_hi(h))
            o = torch.sigmoid(self.conv_xo(x) + self.conv_ho(h))
            c = f * c + i * torch.tanh(self.conv_xj(x) + self.conv_hj(h))
            h = o * torch.tanh(c)
        h = F.leaky_relu(h, 0.2)
        return h, [h, c]


_CELLS: dict[str, type[nn.Module]] = {
    "Conv": ConvCell,
    "RNN": RNNCell,
    "GRU": GRUCell,
    "LSTM": LSTMCell,
}


class DCSFN(nn.Module):
    """Three sub-networks (full, 1/2 and 1/4 scale) fused across scales by recurrent units.

    Predicts the rain layer and returns ``x - rain``. Input and output are N x 3 x H x W in
    the channel order the weights were trained on; the smallest side must be at least
    :attr:`min_size` (callers pad smaller frames).

    Args:
        channels: feature channels C (``channel`` in the original code).
        num_blocks: blocks per encoder and decoder (``Num_encoder``).
        scale_num: levels in each inner-scale block (2, 3 or 4).
        conv_num: 3x3 conv units per level.
        unit: cross-scale fusion unit: ``"Conv"``, ``"RNN"``, ``"GRU"`` or ``"LSTM"``.
        cross: fuse the sub-networks across scales (``Net_cross``).
    """

    def __init__(
        self,
        channels: int,
        num_blocks: int,
        scale_num: int,
        conv_num: int,
        unit: str,
        cross: bool,
    ) -> None:
        super().__init__()
        if unit not in _CELLS:
            raise ValueError(f"unit must be one of {RECURRENT_UNITS}, got {unit!r}")
        self.unit = unit
        self.cross = cross
        self.min_size = 4 * 2 ** (scale_num - 1)
        self.convert = conv_unit(3, channels, 3)
        for s in (1, 2, 4):
            setattr(self, f"encoder_scale{s}", Encoder(channels, num_blocks, scale_num, conv_num))
        if cross:
            for name in ("fusion_1_2_1", "fusion_1_2_2", "fusion_2_2_1", "fusion_2_2_2"):
                setattr(self, name, conv_unit(2 * channels, channels, 1))
        for s in (1, 2, 4):
            setattr(self, f"decoder_scale{s}", Decoder(channels, num_blocks, scale_num, conv_num))
        cell = _CELLS[unit]
        for name in ("rec1_1", "rec1_2", "rec1_4", "rec2_1", "rec2_2", "rec2_4"):
            setattr(self, name, cell(channels))
        self.merge = nn.Sequential(
            nn.Conv2d(3 * channels, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(3, 3, 3, 1, 1)
        )

    def _resize_state(self, state, size: tuple[int, int]):
        if state is None:
            return None
        if self.unit == "LSTM":
            return [_up(state[0], size), _up(state[1], size)]
        return _up(state, size)

    def _fuse_states(self, fusions: tuple[nn.Module, nn.Module], a, b):
        if a is None:
            return None
        if self.unit == "LSTM":
            return [
                fusions[0](torch.cat([a[0], b[0]], dim=1)),
                fusions[1](torch.cat([a[1], b[1]], dim=1)),
            ]
        return fusions[0](torch.cat([a, b], dim=1))

    def _cross_pass(self, cells, features, sizes, fusions, first_state_last: bool):
        """One pass of recurrent fusion through three scales, ``features[0]`` first.

        The ``Conv`` unit has no state, so nothing crosses scales with it (the original code
        fails on that combination). The original code resizes an LSTM's first state in place,
        so its second resize starts from the already resized tensor; that is kept here, or its
        checkpoints drift.
        """
        out0, a = cells[0](features[0])
        a_mid = self._resize_state(a, sizes[0])
        out1, b = cells[1](features[1], a_mid)
        a_last = self._resize_state(a_mid if self.unit == "LSTM" else a, sizes[1])
        b_last = self._resize_state(b, sizes[1])
        pair = (b_last, a_last) if first_state_last else (a_last, b_last)
        out2, _ = cells[2](features[2], self._fuse_states(fusions, *pair))
        return out0, out1, out2

    def forward(self, x: Tensor) -> Tensor:
        f1 = self.convert(x)
        f2 = F.max_pool2d(f1, 2, 2)
        f4 = F.max_pool2d(f1, 4, 4)
        s1, s2, s4 = _hw(f1), _hw(f2), _hw(f4)
        e1, feats1 = self.encoder_scale1(f1)
        e2, feats2 = self.encoder_scale2(f2)
        e4, feats4 = self.encoder_scale4(f4)
        if self.cross:
            c4, c2, c1 = self._cross_pass(
                (self.rec1_4, self.rec1_2, self.rec1_1),
                (e4, e2, e1),
                (s2, s1),
                (self.fusion_1_2_1, self.fusion_1_2_2),
                first_state_last=True,
            )
            d1, d2, d4 = self._cross_pass(
                (self.rec2_1, self.rec2_2, self.rec2_4),
                (c1, c2, c4),
                (s2, s4),
                (self.fusion_2_2_1, self.fusion_2_2_2),
                first_state_last=False,
            )
        else:
            d1, d2, d4 = e1, e2, e4
        o1 = self.decoder_scale1(d1, feats1)
        o2 = self.decoder_scale2(d2, feats2)
        o4 = self.decoder_scale4(d4, feats4)
        rain = self.merge(torch.cat([o1, _up(o2, s1), _up(o4, s1)], dim=1))
        return x - rain


class SingleDCSFN(nn.Module):
    """The one-sub-network ablation (``single`` in the original code): no cross-scale fusion.

    Args:
        channels: feature channels C.
        num_blocks: blocks per encoder and decoder.
        scale_num: levels in each inner-scale block (2, 3 or 4).
        conv_num: 3x3 conv units per level.
    """

    def __init__(self, channels: int, num_blocks: int, scale_num: int, conv_num: int) -> None:
        super().__init__()
        self.min_size = 2 ** (scale_num - 1)
        self.convert = conv_unit(3, channels, 3)
        self.encoder = Encoder(channels, num_blocks, scale_num, conv_num)
        self.decoder = Decoder(channels, num_blocks, scale_num, conv_num)
        self.merge = nn.Sequential(
            nn.Conv2d(channels, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(3, 3, 3, 1, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x - self.merge(self.decoder(*self.encoder(self.convert(x))))
