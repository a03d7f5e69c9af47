"""The Python API: derain single frames inside your own loop, or whole videos."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamderain.batcher import Batcher
from streamderain.compare import Compose, KeepOriginals
from streamderain.decoder import Decoder
from streamderain.encoder import Encoder
from streamderain.errors import InputError, UsageError
from streamderain.frames import Frame, expected_frames
from streamderain.options import (
    MODEL_OPTIONS,
    DecodeOptions,
    EncodeOptions,
    ModelOptions,
    RunOptions,
)
from streamderain.pipeline import Pipeline, Stage, Stats
from streamderain.runner import ModelRunner
from streamderain.targets import (
    check_codec,
    check_not_input,
    check_target,
    is_picture_target,
)
from streamderain.temporal import TemporalFilter, TemporalStage

log = logging.getLogger(__name__)
notice = logging.getLogger("streamderain.notice")


class Derainer:
    """Removes rain from frames you already have, e.g. before object detection.

    ``derainer(frame)`` takes a H x W x 3 or N x H x W x 3 ``uint8`` array in ``channel_order``
    (``"BGR"`` for frames from OpenCV, ``"RGB"`` for PyAV/PIL) and returns the same shape,
    dtype and order; or a float tensor N x 3 x H x W in [0, 1], RGB, and returns the same.

    One Derainer per stream, or :meth:`reset` between streams: ``model="auto"`` picks its model
    on a stream's first frames and checks again every 50, and with ``temporal="on"`` it keeps
    the last frames it was given and combines each new one with them where the scene holds
    still (past frames only, so every call returns its own frame at once); ``auto`` (the
    default) is off here, as the frames may not come from one scene. ``flip_average="auto"``
    is off here too (frames may be live); ``"on"`` averages each frame with its mirror image,
    at twice the model's time.

    Args:
        options: the model and where it runs (or give its fields as keywords:
            ``Derainer(device="cpu", tile=1024)``; keywords beside ``options`` change it).
        channel_order: channel order of the numpy frames you pass.
    """

    def __init__(
        self, options: ModelOptions | None = None, channel_order: str = "RGB", **values: Any
    ) -> None:
        if channel_order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
        self.channel_order = channel_order
        if isinstance(options, RunOptions):
            options = options.model
        if options is not None and not isinstance(options, ModelOptions):
            raise TypeError(
                f"options must be ModelOptions, got {type(options).__name__} "
                "(a model by name: Derainer(model='dcsfn-lite'))"
            )
        options = dataclasses.replace(options or ModelOptions(), **values)
        self.runner = ModelRunner(options)
        self.temporal = TemporalFilter(lookahead=0) if options.temporal == "on" else None
        self._count = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        """A new stream begins: ``auto`` chooses its model anew and the temporal stage forgets
        the last stream's frames (they were carried over, a veiled stream run for up to 100
        frames on a light one's model), without loading the model again."""
        with self._lock:
            self.runner.expect()
            if self.temporal is not None:
                self.temporal.reset()
            self._count = 0

    def __call__(self, frames: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        with self._lock:  # threads sharing one stream: its frames go through one at a time
            if isinstance(frames, torch.Tensor):
                return self._tensor(frames)
            return self._array(frames)

    def _array(self, frames: np.ndarray) -> np.ndarray:
        if not isinstance(frames, (np.ndarray, list, tuple)):
            raise TypeError(
                f"expected frames (a NumPy array or a tensor), got {type(frames).__name__}"
            )
        if isinstance(frames, (list, tuple)) and len({np.shape(f) for f in frames}) > 1:
            raise ValueError("frames of several sizes: give them one call each")
        array = np.asarray(frames)
        if (
            array.dtype != np.uint8
            or array.ndim not in (3, 4)
            or array.shape[-1] != 3
            or not array.size
        ):
            raise ValueError(
                f"expected uint8 H x W x 3 or N x H x W x 3, none of them 0, got {array.dtype} "
                f"{array.shape}"
            )
        batch = array[None] if array.ndim == 3 else array
        batch = batch[..., ::-1] if self.channel_order == "BGR" else batch
        batch = np.array(batch) if not batch.flags.writeable else np.ascontiguousarray(batch)
        images = torch.from_numpy(batch).to(self.runner.device)
        out = self.runner.infer(images).cpu().numpy()
        if self.temporal is not None:
            out = np.stack([self._steady(image, source) for image, source in zip(out, batch)])
        if self.channel_order == "BGR":
            out = out[..., ::-1]
        out = np.ascontiguousarray(out)
        return out[0] if array.ndim == 3 else out

    def _steady(self, image: np.ndarray, source: np.ndarray) -> np.ndarray:
        """One derained frame (of RGB ``source``) through the temporal filter: it returns it at
        once, as there is no lookahead. The source is kept as a copy: the caller may reuse or
        draw on its array after the call."""
        self._count += 1
        frame = Frame(self._count, self._count, Fraction(1, 25), image, original=source.copy())
        (frame,) = self.temporal.push(frame)
        return frame.image

    def _tensor(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point() or not x.numel():
            raise ValueError(
                f"expected a float tensor N x 3 x H x W, none of them 0, got {x.dtype} "
                f"{tuple(x.shape)}"
            )
        low, high = float(x.detach().min()), float(x.detach().max())
        if not 0 <= low <= high <= 1:  # NaN fails too
            raise ValueError(f"expected values in [0, 1], got {low:g}..{high:g}")
        inp = x.to(self.runner.device, self.runner.dtype)
        y = self.runner.derain(inp.contiguous(memory_format=torch.channels_last))
        if self.temporal is not None:  # the filter works on 8-bit pictures, as video has them
            pictures = zip(_as_uint8(y), _as_uint8(x), strict=True)
            steady = np.stack([self._steady(image, source) for image, source in pictures])
            y = torch.from_numpy(steady).permute(0, 3, 1, 2) / 255.0
        # a copy made here, outside the runner's inference mode, is a tensor like any other:
        # it may be changed in place or go into a network that learns
        return y.to(x.device, x.dtype).clone(memory_format=torch.contiguous_format)


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    """N x 3 x H x W floats in [0, 1] as N x H x W x 3 uint8."""
    return (x.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _is_pipe(source: str) -> bool:
    """A source read once only (``cat clip.mkv | streamderain /dev/stdin ...``)."""
    try:
        return Path(source).is_fifo()
    except OSError:  # a web address too long for a file's name
        return False


def temporal_on(mode: str, decoder: Decoder) -> bool:
    """``auto`` is on for video (files, streams, cameras), off for a folder of pictures, which
    may not be frames of one scene."""
    return mode == "on" or (mode == "auto" and not decoder.is_image_folder)


def _run_options(options: object) -> RunOptions:
    """``options`` as a whole run's: one group of them (``ModelOptions()``) stands for itself
    beside the other groups' defaults."""
    if options is None or isinstance(options, RunOptions):
        return options or RunOptions()
    for f in dataclasses.fields(RunOptions):
        if type(options) is f.default_factory:
            return RunOptions(**{f.name: options})
    raise TypeError(f"options must be RunOptions, got {type(options).__name__}")


def _check_lent(runner: ModelRunner, given: ModelOptions, values: dict[str, Any]) -> None:
    """A runner lent to a run stands for its model options: any other asked of the run, as a
    keyword or in the options' model group, is refused (the group's were left out unsaid)."""
    asked = {
        f.name: getattr(given, f.name)
        for f in dataclasses.fields(given)
        if getattr(given, f.name) != f.default
    }
    asked.update((k, v) for k, v in values.items() if k in MODEL_OPTIONS)
    if other := sorted(k for k, v in asked.items() if not runner.stands_for(k, v)):
        raise UsageError(
            f"{', '.join(other)}: a runner's model options stand for the run; set them on "
            "the runner, or give no runner"
        )


def derain_video(
    src: str | Path,
    dst: str | Path,
    options: RunOptions | DecodeOptions | ModelOptions | EncodeOptions | None = None,
    *,
    runner: ModelRunner | Derainer | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_start: Callable[[Pipeline, Decoder], None] | None = None,
    stop: threading.Event | None = None,
    **values: Any,
) -> Stats:
    """Derain a whole video (file, stream, camera or image folder) into ``dst``.

    ``dst`` (a file) is written through a temporary file and renamed into place, so an existing
    ``dst`` is replaced only by a finished (or cleanly interrupted) output. ``dst`` may also be a
    live URL to publish to. ``options`` (or their fields as keywords: ``crf=0``) say what to
    read, which model runs and how to write (one group alone, ``ModelOptions(...)``, stands
    beside the others' defaults); ``runner`` (or a :class:`Derainer`) reuses a loaded model
    across calls, and its model options (batch and temporal stage included) then stand instead
    of ``options.model``. Setting ``stop`` ends the run
    as Ctrl-C does, also while a live source is still connecting. ``on_frame(n)`` is called
    in the caller's thread as the output takes frames, ``n`` of them since the last call (a
    progress count, as the command line's bar uses it); ``on_start(pipeline, decoder)`` once
    the stages run. For the frames themselves, a :class:`Derainer` takes them one by one.
    """
    for name, given in (("on_frame", on_frame), ("on_start", on_start)):
        if given is not None and not callable(given):
            raise TypeError(f"{name} must be callable, got {type(given).__name__}")
    if stop is not None and not callable(getattr(stop, "is_set", None)):
        raise TypeError(f"stop must be a threading.Event, got {type(stop).__name__}")
    for name, path in (("src", src), ("dst", dst)):
        if not isinstance(path, (str, Path)):
            raise TypeError(
                f"{name} must be a path or URL (str or Path), got {type(path).__name__}"
            )
    began = time.perf_counter()
    lent = runner.runner if isinstance(runner, Derainer) else runner
    options = _run_options(options)
    if isinstance(lent, ModelRunner):  # its model options stand: others were left out unsaid
        _check_lent(lent, options.model, values)
    options = options.replace(**values)
    if isinstance(runner, Derainer):  # lent: its own frames then go on as they were
        try:
            return derain_video(
                src,
                dst,
                options,
                runner=runner.runner,
                on_frame=on_frame,
                on_start=on_start,
                stop=stop,
            )
        finally:
            runner.runner.expect()
    if runner is not None and not isinstance(runner, ModelRunner):
        raise TypeError(f"runner must be a ModelRunner or a Derainer, got {type(runner).__name__}")
    check_target(dst)
    check_not_input(dst, src)
    check_codec(options.encode)
    try:
        decoder = Decoder(src, options.decode, stop=stop)
    except InputError:
        if stop is not None and stop.is_set():  # stopped while a live source was connecting
            return Stats(interrupted=True)
        raise
    with decoder:
        runner = runner or ModelRunner(options.model)
        model = runner.options  # a runner given stands for options.model: its batch, its stage
        # a file, or a recording behind a web address read once as one: its sound comes too
        is_file = not (decoder.live or decoder.is_image_folder)
        if is_file and _is_pipe(decoder.source):  # no second reading for its sound: it failed
            notice.warning(
                "%s is a pipe, read once: any sound or subtitles are left out", decoder.name
            )
            is_file = False
        encoder = Encoder(
            dst,
            decoder.info,
            options.encode,
            copy_streams_from=decoder.source if is_file else None,
            sound=decoder.sound,
            start=decoder.start,
            end=decoder.end,
        )
        try:  # until the pipeline runs, nothing else closes the output if this fails
            d = decoder
            frames = expected_frames(d.info, d.start, d.end, options.decode.max_frames)
            photo = frames is None and not d.live and is_picture_target(d.source)
            if encoder.picture and frames != 1 and not photo:
                has = f"{frames} frames" if frames else "frames of a count unknown before reading"
                raise UsageError(
                    f"{dst} is a picture, one frame; the input has {has} "
                    "(add --max-frames 1, or name a folder or a video)"
                )
            compare = options.encode.compare
            temporal = temporal_on(model.temporal, decoder)
            stages: list[tuple[str, Stage]] = [("batch", Batcher(model.batch))]
            if compare or temporal:
                stages.append(("keep", KeepOriginals()))
            stages.append(("model", runner))
            if temporal:
                # files hold a few frames back to look ahead; live sources use past frames only
                stages.append(("temporal", TemporalStage(lookahead=0 if decoder.live else 3)))
            if compare:
                stages.append(("compose", Compose(compare)))
            stages.append(("encode", encoder))
            live_drop = options.decode.live_drop
            if live_drop and not decoder.live:  # read as fast as it decodes: most would go
                log.warning("--live-drop is for live sources; every frame of a file is kept")
            if options.decode.start and decoder.live:
                log.warning("--start is for files; a live source is read from now (ignored)")
            drop = decoder.live and live_drop is not False
            pipeline = Pipeline(
                decoder, stages, queue_size=1 if drop else 4, drop_oldest=drop, on_frame=on_frame
            )
            if on_start is not None:
                on_start(pipeline, decoder)
            runner.prepare(
                decoder.info.height,
                decoder.info.width,
                one_scene=not decoder.is_image_folder,
                live=decoder.live,
                frames=frames,
            )
            if log.isEnabledFor(logging.DEBUG):  # the -v banner; describing costs a little
                log.debug("input   %s", decoder.describe())
                log.debug("model   %s", runner.describe())
                log.debug("stages  %s", " -> ".join(n for n, _ in stages if n != "keep"))
                log.debug("output  %s", encoder.describe())
            pipeline.stats.setup = time.perf_counter() - began
            if decoder.live:
                notice.info("%s: connected, deraining (Ctrl-C stops)", decoder.name)
        except BaseException:
            encoder.abort()
            raise
        stats = pipeline.run()
        stats.interrupted |= stop is not None and stop.is_set()
        if stats.frames == 0 and not stats.interrupted:
            length = decoder.duration
            if decoder.start > 0 and length is not None and decoder.start >= length:
                raise InputError(
                    f"--start {decoder.start:g} s is past the end of {decoder.name} "
                    f"({length:.1f} s)"
                )
            at = f" from --start {decoder.start:g} s on" if decoder.start > 0 else ""
            raise InputError(f"{decoder.name}: no video frame could be decoded{at}")
        stats.corrupt_packets = decoder.corrupt_packets
        stats.reconnects = decoder.reconnects
        return stats
