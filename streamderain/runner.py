"""Runs the model over batches: the best path measured on CPU, overlapped streams on CUDA."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from functools import partial

import torch
import torch.nn.functional as F

from streamderain.backends import OpenVINOBackend, openvino_available
from streamderain.errors import ModelError, StreamDerainError, UsageError
from streamderain.frames import Batch
from streamderain.options import ModelOptions
from streamderain.pipeline import Stage, usable_cores
from training import DerainModel, ModelLoadError, load_model
from training import pick_device as network_device
from training.quantize import int8_models
from training.route import (
    AUTO,
    HEAVY_MODEL,
    LIGHT_MODEL,
    VIDEO_CHECK_EVERY,
    FlipAverage,
    Router,
    below_input,
    mirror_scale,
    model_names,
)

log = logging.getLogger(__name__)

# int8 is the network's own number format (OpenVINO's); frames reach it in fp32
PRECISIONS = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "int8": torch.float32,
}


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is the first GPU if there is one, else the CPU; ``cuda`` without one is an error."""
    try:
        return network_device(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


#: PyTorch's names of the x86 CPUs whose 8-bit speed was measured (``get_cpu_capability``)
X86_INT8 = ("AVX2", "AVX512")


def ships_int8(model: str | None) -> bool:
    """Whether every model a ``--model`` value loads has an 8-bit network in the package."""
    return all(name in int8_models() for name in model_names(model))


def pick_precision(precision: str, device: torch.device, backend: str, model: str | None) -> str:
    """``auto``: the bundled models' 8-bit networks on x86 CPUs (AVX2 or AVX-512), else fp32.

    Why: the default must keep 2 frames/s at 640x360 on a file, mirror average included, and
    2-core CPUs of either kind run fp32 at the edge of it: 1.90 frames/s against int8's 2.44 with
    AVX2, 2.09 (single runs down to 1.81) against 3.28 with AVX-512 (README, Performance). The 8
    bits cost 0.08 dB or less in light and heavy rain, 0.22-0.26 on pictures without rain."""
    if precision != "auto":
        return precision
    eight_bits = (
        device.type == "cpu"
        and backend != "torch"
        and torch.backends.cpu.get_cpu_capability() in X86_INT8
        and openvino_available()
        and ships_int8(model)
    )
    return "int8" if eight_bits else "fp32"


# Context each tile keeps around its core. With the stage-3 default model 128 pixels left tiles
# 1.3e-3 from the whole frame; 160 gives 8.8e-5 (test frame of tests/test_pipeline.py).
TILE_CONTEXT = 160


def min_tile(stride: int) -> int:
    """The smallest tile worth its context: a core of 4 strides between the context bands."""
    return 2 * _round_up(TILE_CONTEXT, stride) + 4 * stride


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def tiled(
    run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, stride: int
) -> torch.Tensor:
    """``run`` over tiles of at most ``tile`` pixels, each with context around its core.

    Tiles start on the network's pooling grid (``stride``, 32 for 4 scales) so that every
    tile pools the same pixels as the whole frame would, and each tile keeps only its core,
    with at least :data:`TILE_CONTEXT` pixels of context cut away. Every tile of a frame has
    one size (those at the far edges reach further in instead of being cut short): OpenVINO
    compiles once per size, and with the edge tiles' 6 sizes it recompiled for every tile.
    On frames whose sides are multiples of the stride the result is within 1e-3 of the
    untiled one; other frames are padded to such a size first (the network itself maps sizes
    off the grid slightly differently).
    """
    h, w = x.shape[-2:]
    if h <= tile and w <= tile:
        return run(x)
    context = _round_up(TILE_CONTEXT, stride)
    window = tile // stride * stride
    core = window - 2 * context
    if tile < min_tile(stride):
        raise StreamDerainError(f"--tile must be at least {min_tile(stride)} for this model")
    ph, pw = _round_up(h, stride), _round_up(w, stride)
    padded = F.pad(x, (0, pw - w, 0, ph - h), mode="replicate") if (ph, pw) != (h, w) else x
    out = torch.empty_like(padded)
    wh, ww = min(window, ph), min(window, pw)
    # a side the window spans whole is one core, not several tiles of the same pixels
    ch, cw = core if ph > window else ph, core if pw > window else pw
    for cy in range(0, ph, ch):
        for cx in range(0, pw, cw):
            y0 = min(max(cy - context, 0), ph - wh)
            x0 = min(max(cx - context, 0), pw - ww)
            piece = run(padded[..., y0 : y0 + wh, x0 : x0 + ww])
            ey, ex = min(cy + ch, ph), min(cx + cw, pw)
            out[..., cy:ey, cx:ex] = piece[..., cy - y0 : ey - y0, cx - x0 : ex - x0]
    return out[..., :h, :w]


def flip_on(mode: str, live: bool) -> bool:
    """``--flip-average``: ``auto`` is on for files and folders, off for live sources."""
    return mode == "on" or (mode == "auto" and not live)


class ModelRunner(Stage):
    """Turns batches of RGB uint8 frames into batches of derained RGB uint8 frames.

    Args:
        options: the model, device, precision, backend and tiling (``options.batch`` is the
            batcher's).
        threads: CPU threads for the model (default: every core).
    """

    def __init__(self, options: ModelOptions | None = None, threads: int | None = None) -> None:
        self._busy = threading.Lock()
        try:
            self._load(options or ModelOptions(), threads)
        except ModelLoadError as exc:  # a StreamDerainError to the API's callers too
            raise ModelError(str(exc)) from None

    def _load(self, options: ModelOptions, threads: int | None) -> None:
        self.options = options
        self.device = pick_device(options.device)
        names = model_names(options.model)
        self.precision = pick_precision(
            options.precision, self.device, options.backend, options.model
        )
        if self.precision == "fp16" and self.device.type == "cpu":
            raise UsageError("fp16 needs a CUDA GPU; use fp32 or int8 on a CPU")
        if self.precision == "bf16" and self.device.type == "cpu":  # OpenVINO's is not exact
            log.warning("bf16 on a CPU runs through PyTorch, several times slower than auto")
        if self.precision == "int8" and self.device.type != "cpu":
            raise UsageError("int8 runs on a CPU; use fp16 on a GPU")
        self.dtype = PRECISIONS[self.precision]
        self.tile = options.tile
        self.threads = threads or usable_cores()
        # PyTorch's threads are the whole process's: a caller's own setting (a detector's beside
        # us) is kept unless it asks for more than the cores this process may use
        if self.device.type == "cpu" and (threads or torch.get_num_threads() > self.threads):
            torch.set_num_threads(self.threads)
        log.debug("loading the model (%s) on %s", options.model or AUTO, self.device)
        models = [
            load_model(name, device=self.device).to(
                memory_format=torch.channels_last, dtype=self.dtype
            )
            for name in names
        ]
        self.model: DerainModel = models[0]
        self.stride = max(m.net.min_size for m in models)
        if self.tile and self.tile < min_tile(self.stride):
            raise UsageError(f"--tile must be 0 (off) or at least {min_tile(self.stride)}")
        self.backend = self._pick_backend(options.backend, self.precision)
        self.forwards: list[Callable[[torch.Tensor], torch.Tensor]] = [
            OpenVINOBackend(m, self.threads, int8=self.precision == "int8")
            if self.backend == "openvino"
            else m
            for m in models
        ]
        # off under auto until prepare() says the source is not live (Derainer never does)
        on = flip_on(options.flip_average, live=True)
        # tiles inside the router: with auto, a whole frame chooses its model
        self.mirrors = [
            FlipAverage(
                partial(tiled, f, tile=self.tile, stride=self.stride) if self.tile else f,
                mirror_scale(m),
                on,
            )
            for f, m in zip(self.forwards, models, strict=True)
        ]
        self.forward: Callable[[torch.Tensor], torch.Tensor] = (
            Router(*self.mirrors, every=VIDEO_CHECK_EVERY)
            if len(self.mirrors) > 1
            else self.mirrors[0]
        )
        self._cuda = self.device.type == "cuda"
        if self._cuda:
            self._upload = torch.cuda.Stream(self.device)
            self._compute = torch.cuda.Stream(self.device)
            self._pending: tuple[Batch, torch.Tensor, torch.cuda.Event] | None = None

    def expect(self, one_scene: bool = True, live: bool = True) -> None:
        """What the next frames are: the mirror average on or off, ``auto``'s checks anew (by
        default, frames given one by one, as a :class:`~streamderain.api.Derainer` gives them)."""
        for mirror in self.mirrors:
            mirror.on = flip_on(self.options.flip_average, live)
        if self._cuda:
            # A video's frames share one size: cuDNN times its kernels for it on the first
            # batch and keeps the fastest. A folder's pictures may each have their own size,
            # where timing every size would cost more than it saves.
            torch.backends.cudnn.benchmark = one_scene
        if isinstance(self.forward, Router):
            self.forward.reset(VIDEO_CHECK_EVERY if one_scene else 1)

    def prepare(
        self,
        height: int,
        width: int,
        one_scene: bool = True,
        live: bool = False,
        frames: int | None = None,
    ) -> None:
        """Get ready for a stream of frames of this size (OpenVINO compiles per shape: seconds),
        so that the time before the first frame is setup, not processing; for batches of at
        most ``frames`` (about how many the stream has, where known). With ``auto`` the
        stream's first frames choose its model anew, and then every
        :data:`~training.route.VIDEO_CHECK_EVERY` frames, or every frame where they are not
        ``one_scene`` (a folder of pictures). ``--flip-average auto`` is on unless ``live``."""
        self.expect(one_scene, live)
        if self._cuda:
            self._pending = None  # a stopped run's last batch, never collected, is not this one's
        # a model behind the router compiles its smaller mirror only once the rain asks for it:
        # 1 s and 40 MB that light rain, most videos, never needs (int8, 640x360)
        alone = not isinstance(self.forward, Router)
        batch = min(self.options.batch, frames) if frames else self.options.batch
        for forward, mirror in zip(self.forwards, self.mirrors, strict=True):
            if isinstance(forward, OpenVINOBackend) and not self.tile:
                forward.prepare(batch, height, width)
                if alone and mirror.on:  # the same size again is already compiled
                    forward.prepare(batch, *mirror.mirror_size(height, width))

    def describe(self) -> str:
        """One line on what runs, for the banner of ``-v``."""
        info = self.model.info
        name = self.options.model or f"{AUTO} (default)"
        if isinstance(self.forward, Router):
            name += f": {LIGHT_MODEL}, {HEAVY_MODEL} where the rain leaves a veil"
        params = sum(p.numel() for p in self.model.parameters())
        tile = f"tiles of {self.tile}" if self.tile else "whole frames"
        tile += ", averaged with their mirror images" if self.mirrors[0].on else ""
        threads = f", {self.threads} threads" if self.device.type == "cpu" else ""
        return (
            f"{name}: DCSFN {info.config.channels} channels x {info.config.num_blocks} blocks, "
            f"{params:,} parameters; {self.device} {self.precision} with {self.backend}"
            f"{threads}, batch {self.options.batch}, {tile}"
        )

    def _pick_backend(self, backend: str, precision: str) -> str:
        on_openvino = self.device.type == "cpu" and precision in ("fp32", "int8")
        if backend == "openvino" or precision == "int8":
            if not on_openvino:
                raise UsageError("the openvino backend runs fp32 or int8 on a CPU only")
            if not openvino_available():
                raise UsageError(
                    "the openvino backend (fp32 or int8 on a CPU) needs: pip install openvino"
                )
            return "openvino"
        if backend == "auto":
            return "openvino" if on_openvino and openvino_available() else "torch"
        return backend

    def stands_for(self, name: str, value: object) -> bool:
        """This runner, as loaded, gives what the model option ``name=value`` asks: ``auto``
        and None are one model choice, and ``cpu`` is what ``auto`` found on a machine without
        a GPU."""
        own = getattr(self.options, name)
        if name == "model":
            return (value or AUTO) == (own or AUTO)
        found = {"device": (str(self.device), self.device.type), "precision": (self.precision,),
                 "backend": (self.backend,)}.get(name, ())  # fmt: skip
        return value == own or value in found

    @torch.inference_mode()
    def derain(self, x: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W RGB in [0, 1], channels-last on the runner's device and dtype -> the
        same, derained: in [0, 1] and never brighter than ``x`` (rain only adds light).

        One call at a time: a compiled network has one request, which a second thread found
        busy (OpenVINO's "Infer Request is busy")."""
        with self._busy:
            return below_input(self.forward(x), x)

    @torch.inference_mode()
    def infer(self, images: torch.Tensor) -> torch.Tensor:
        """N x H x W x 3 uint8 RGB on the runner's device -> the same, derained."""
        x = images.permute(0, 3, 1, 2).to(self.dtype).div_(255.0)
        y = self.derain(x.contiguous(memory_format=torch.channels_last))
        return y.mul_(255.0).round_().to(torch.uint8).permute(0, 2, 3, 1)

    def process(self, batch: Batch) -> Iterable[Batch]:
        if not self._cuda:
            out = self.infer(torch.from_numpy(batch.images)).contiguous().numpy()
            return [batch.with_images(out)]
        return self._process_cuda(batch)

    def _process_cuda(self, batch: Batch) -> list[Batch]:
        """Upload batch n+1 on one stream while batch n computes on another; copy back async.

        Returns the previous batch's result (one batch of latency): this batch is queued on
        the GPU before the host waits for that one, so the GPU never idles on the host.
        """
        host = torch.from_numpy(batch.images).pin_memory()
        with torch.cuda.stream(self._upload):
            dev = host.to(self.device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record(self._upload)
        previous, self._pending = self._pending, None
        with torch.cuda.stream(self._compute):
            self._compute.wait_event(uploaded)
            dev.record_stream(self._compute)
            result = self.infer(dev)
            out = torch.empty(result.shape, dtype=torch.uint8, pin_memory=True)
            out.copy_(result, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._compute)
        self._pending = (batch, out, ready)
        return self._collect(previous)

    def _collect(self, pending: tuple[Batch, torch.Tensor, torch.cuda.Event] | None) -> list[Batch]:
        if pending is None:
            return []
        batch, out, ready = pending
        ready.synchronize()
        return [batch.with_images(out.numpy())]

    def finish(self) -> Iterable[Batch]:
        if not self._cuda:
            return []
        pending, self._pending = self._pending, None
        return self._collect(pending)
