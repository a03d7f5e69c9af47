"""Runs the model over batches: the best path measured on CPU, overlapped streams on CUDA."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import torch

from streamderain.errors import StreamDerainError
from streamderain.frames import Batch
from training import DerainModel, load_model

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is the first GPU if there is one, else the CPU; ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise StreamDerainError(
            f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StreamDerainError(f"device {name!r} asked for, but no CUDA GPU is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise StreamDerainError(
                f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif device.type != "cpu":
        raise StreamDerainError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return device


def tiled(model: torch.nn.Module, x: torch.Tensor, tile: int, overlap: int = 32) -> torch.Tensor:
    """The model over overlapping tiles of ``x``, blended with linear ramps, to bound memory.

    Each tile sees ``overlap`` pixels of context on every inner side; the ramps cross-fade
    neighbouring tiles over that band so no seam shows.
    """
    n, c, h, w = x.shape
    if h <= tile and w <= tile:
        return model(x)
    step = max(tile - overlap, 1)
    out = torch.zeros_like(x)
    weight = torch.zeros((1, 1, h, w), dtype=x.dtype, device=x.device)
    ys = list(range(0, max(h - tile, 0) + 1, step))
    xs = list(range(0, max(w - tile, 0) + 1, step))
    if ys[-1] + tile < h:
        ys.append(h - tile)
    if xs[-1] + tile < w:
        xs.append(w - tile)
    for y0 in ys:
        for x0 in xs:
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            piece = model(x[..., y0:y1, x0:x1])
            ramp = (
                _ramp(y1 - y0, y0 > 0, y1 < h, overlap, x)[:, None]
                * _ramp(x1 - x0, x0 > 0, x1 < w, overlap, x)[None, :]
            )
            out[..., y0:y1, x0:x1] += piece * ramp
            weight[..., y0:y1, x0:x1] += ramp
    return out / weight


def _ramp(
    length: int, fade_in: bool, fade_out: bool, overlap: int, like: torch.Tensor
) -> torch.Tensor:
    r = torch.ones(length, dtype=like.dtype, device=like.device)
    band = min(overlap, length // 2)
    if band > 0:
        edge = torch.linspace(1.0 / (band + 1), band / (band + 1), band, dtype=like.dtype)
        if fade_in:
            r[:band] = edge.to(like.device)
        if fade_out:
            r[-band:] = edge.flip(0).to(like.device)
    return r


class ModelRunner:
    """Turns batches of RGB uint8 frames into batches of derained RGB uint8 frames.

    Args:
        model: a bundled model name or checkpoint path (see ``training.load_model``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32``; ``fp16``/``bf16`` on CUDA (``bf16`` also on CPUs that have it).
        tile: run frames larger than this in overlapping tiles of this size (0: never).
        threads: CPU threads for the model (default: every core).
        keep_original: keep each source picture beside its result (for before/after output).
    """

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        precision: str = "fp32",
        tile: int = 0,
        threads: int | None = None,
        keep_original: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise StreamDerainError(f"unknown precision {precision!r} (use fp32, fp16 or bf16)")
        if tile < 0:
            raise StreamDerainError(f"--tile must be 0 or positive, got {tile}")
        self.device = pick_device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise StreamDerainError("fp16 needs a CUDA GPU; use fp32 or bf16 on a CPU")
        self.dtype = PRECISIONS[precision]
        self.tile = tile
        self.keep_original = keep_original
        if self.device.type == "cpu":
            torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
        self.model: DerainModel = load_model(model, device=self.device)
        self.model = self.model.to(memory_format=torch.channels_last, dtype=self.dtype)
        self.bgr = self.model.channel_order == "BGR"
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            self._upload = torch.cuda.Stream(self.device)
            self._compute = torch.cuda.Stream(self.device)
            self._pending: tuple[Batch, torch.Tensor, torch.cuda.Event] | None = None

    @torch.inference_mode()
    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 uint8 RGB on the runner's device -> the same, derained."""
        x = images.permute(0, 3, 1, 2).to(self.dtype).div_(255.0)
        if self.bgr:
            x = x.flip(1)
        x = x.contiguous(memory_format=torch.channels_last)
        y = tiled(self.model, x, self.tile) if self.tile else self.model(x)
        if self.bgr:
            y = y.flip(1)
        return y.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)

    def process(self, batch: Batch) -> Iterable[Batch]:
        if not self._cuda:
            out = self.infer(torch.from_numpy(batch.images)).contiguous().numpy()
            return [batch.with_images(out, self.keep_original)]
        return self._process_cuda(batch)

    def _process_cuda(self, batch: Batch) -> list[Batch]:
        """Upload batch n+1 on one stream while batch n computes on another; copy back async.

        Returns the previous batch's result (one batch of latency), so the host never waits
        on the GPU except for a result that is already due.
        """
        host = torch.from_numpy(batch.images).pin_memory()
        with torch.cuda.stream(self._upload):
            dev = host.to(self.device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record(self._upload)
        done = self._take_pending()
        with torch.cuda.stream(self._compute):
            self._compute.wait_event(uploaded)
            dev.record_stream(self._compute)
            result = self.infer(dev)
            out = torch.empty(result.shape, dtype=torch.uint8, pin_memory=True)
            out.copy_(result, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._compute)
        self._pending = (batch, out, ready)
        return done

    def _take_pending(self) -> list[Batch]:
        if self._pending is None:
            return []
        batch, out, ready = self._pending
        self._pending = None
        ready.synchronize()
        return [batch.with_images(out.numpy(), self.keep_original)]

    def finish(self) -> Iterable[Batch]:
        return self._take_pending() if self._cuda else []
