"""The Python API: derain single frames inside your own loop, or whole videos."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from streamderain.batcher import Batcher
from streamderain.decoder import Decoder
from streamderain.encoder import Encoder, check_target, live_target_format
from streamderain.errors import InputError
from streamderain.pipeline import Pipeline, Stats
from streamderain.runner import ModelRunner


class Derainer:
    """Removes rain from frames you already have, e.g. before object detection.

    ``derainer(frame)`` takes a H x W x 3 or N x H x W x 3 ``uint8`` array in ``channel_order``
    (``"BGR"`` for frames from OpenCV, ``"RGB"`` for PyAV/PIL) and returns the same shape,
    dtype and order; or a float tensor N x 3 x H x W in [0, 1], RGB, and returns the same.

    Args:
        model: bundled model name or checkpoint path (default: the bundled lite model).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        channel_order: channel order of the numpy frames you pass.
        precision: ``fp32``, or ``fp16``/``bf16`` where the device has it.
        tile: process frames larger than this in overlapping tiles (0: never).
        backend: ``auto`` (the fastest exact one: OpenVINO on a CPU), ``torch`` or ``openvino``.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        device: str = "auto",
        channel_order: str = "RGB",
        precision: str = "fp32",
        tile: int = 0,
        backend: str = "auto",
    ) -> None:
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        self.channel_order = channel_order
        self.runner = ModelRunner(
            str(model) if model is not None else None,
            device,
            precision,
            tile,
            threads=None,
            backend=backend,
        )

    def __call__(self, frames: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if isinstance(frames, torch.Tensor):
            return self._tensor(frames)
        array = np.asarray(frames)
        if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 H x W x 3 or N x H x W x 3, got {array.dtype} {array.shape}"
            )
        batch = array[None] if array.ndim == 3 else array
        if self.channel_order == "BGR":
            batch = batch[..., ::-1]
        images = torch.from_numpy(np.ascontiguousarray(batch)).to(self.runner.device)
        out = self.runner.infer(images).cpu().numpy()
        if self.channel_order == "BGR":
            out = out[..., ::-1]
        out = np.ascontiguousarray(out)
        return out[0] if array.ndim == 3 else out

    @torch.inference_mode()
    def _tensor(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(
                f"expected a float tensor N x 3 x H x W, got {x.dtype} {tuple(x.shape)}"
            )
        model = self.runner.model
        inp = x.to(self.runner.device, self.runner.dtype)
        if model.channel_order == "BGR":
            inp = inp.flip(1)
        y = model(inp.contiguous(memory_format=torch.channels_last)).clamp(0, 1)
        if model.channel_order == "BGR":
            y = y.flip(1)
        return y.to(x.device, x.dtype).contiguous()


def derain_video(
    src: str | Path,
    dst: str | Path,
    *,
    model: str | Path | None = None,
    device: str = "auto",
    batch: int = 1,
    precision: str = "fp32",
    tile: int = 0,
    backend: str = "auto",
    codec: str | None = None,
    crf: int | None = None,
    preset: str | None = None,
    encoder: str = "pyav",
    compare: str | None = None,
    start: float | None = None,
    duration: float | None = None,
    max_frames: int | None = None,
    rtsp_transport: str = "tcp",
    reconnect_timeout: float = 30.0,
    live_drop: bool | None = None,
    runner: ModelRunner | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_start: Callable[[Pipeline, Decoder], None] | None = None,
) -> Stats:
    """Derain a whole video (file, stream, camera or image folder) into ``dst``.

    ``dst`` (a file) is written through a temporary file and renamed into place, so an existing
    ``dst`` is replaced only by a finished (or cleanly interrupted) output. ``dst`` may also be a
    live URL to publish to. A live source reconnects for up to ``reconnect_timeout`` seconds
    (0: forever) and, with ``live_drop`` (default for live sources), drops its oldest waiting
    frame when the model falls behind, so the delay stays bounded. ``runner`` reuses a loaded
    model across calls; ``model``, ``device``, ``precision``, ``tile`` and ``backend`` are then
    the runner's.
    """
    check_target(dst)
    with Decoder(
        src,
        start=start,
        duration=duration,
        max_frames=max_frames,
        rtsp_transport=rtsp_transport,
        reconnect_timeout=reconnect_timeout,
    ) as decoder:
        if runner is None:
            runner = ModelRunner(
                str(model) if model is not None else None,
                device,
                precision,
                tile,
                keep_original=compare is not None,
                backend=backend,
            )
        elif runner.keep_original != (compare is not None):
            raise ValueError("runner.keep_original must be True exactly when compare is set")
        is_file = Path(str(src)).is_file() and live_target_format(dst) is None
        encoder = Encoder(
            dst,
            decoder.info,
            codec=codec,
            crf=crf,
            preset=preset,
            encoder=encoder,
            copy_streams_from=str(src) if is_file else None,
            start=decoder.start,
            end=decoder.end,
            compare=compare,
        )
        stages = [("batch", Batcher(batch)), ("model", runner), ("encode", encoder)]
        drop = decoder.live if live_drop is None else live_drop
        pipeline = Pipeline(
            decoder, stages, queue_size=1 if drop else 4, drop_oldest=drop, on_frame=on_frame
        )
        if on_start is not None:
            on_start(pipeline, decoder)
        stats = pipeline.run()
        if stats.frames == 0 and not stats.interrupted:
            raise InputError(f"{decoder.name}: no video frame could be decoded")
        stats.corrupt_packets = decoder.corrupt_packets
        stats.reconnects = decoder.reconnects
        return stats
