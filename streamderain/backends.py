"""Inference backends for the CPU: the fastest exact one measured on our machines is OpenVINO.

Measured on the 2-core dev CPU (lite model, 640x360, fp32, benchmarks/README figures):
OpenVINO with an f32 precision hint is 1.5-1.7x faster than PyTorch channels_last at a max
abs error of 2.4e-7. OpenVINO's default precision on CPUs with bf16 is not exact (3.7e-3), so
the hint is set explicitly. The conversion of a checkpoint is cached, so only the first run
of a model pays for its conversion (about 10 s); the converted network (OpenVINO IR) is kept in
the user's cache folder, and so is each compiled network (OpenVINO's model cache: about 1.2 s
less per model and frame size at the next start, the newest ``kept_compiled`` only).
``--precision int8`` runs the 8-bit network shipped beside a bundled model's weights
(:mod:`training.quantize`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from streamderain.errors import StreamDerainError
from training import DerainModel
from training.quantize import int8_network_file, to_openvino

log = logging.getLogger(__name__)
# What a user waits for, said where it happens; the command line shows it unless -q.
notice = logging.getLogger("streamderain.notice")


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "streamderain"


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # pruned meanwhile by another run
        return 0.0


class OpenVINOBackend:
    """The network compiled by OpenVINO for the CPU, once per input shape.

    Frames smaller than the network's minimum side go through PyTorch, which pads them.
    """

    max_shapes = 4
    kept_compiled = 32

    def __init__(self, model: DerainModel, threads: int, int8: bool = False) -> None:
        import openvino as ov

        self.model = model
        self.threads = threads
        self.core = ov.Core()
        self.compiled_cache = _cache_dir() / "compiled"
        try:
            self.compiled_cache.mkdir(parents=True, exist_ok=True)
        except OSError:
            log.debug("no cache for compiled networks in %s", self.compiled_cache, exc_info=True)
        if os.access(self.compiled_cache, os.W_OK):
            self.core.set_property({"CACHE_DIR": str(self.compiled_cache)})
        self.network = self.core.read_model(int8_network_file(model) if int8 else self._ir_file())
        self._compiled: dict[tuple[int, int, int], object] = {}

    def _ir_file(self) -> Path:
        """The network as OpenVINO IR, converted once per set of weights and kept in the cache."""
        name = f"dcsfn-{self.model.digest()[:16]}.xml"
        for folder in (_cache_dir(), Path(tempfile.gettempdir()) / "streamderain"):
            path = folder / name
            if path.exists():
                return path
            try:
                folder.mkdir(parents=True, exist_ok=True)
                self._convert(path)
                return path
            except OSError:
                log.debug("cannot cache the converted network in %s", folder, exc_info=True)
        raise StreamDerainError(
            f"no folder to keep the model converted for OpenVINO in ({_cache_dir()}, "
            f"{tempfile.gettempdir()}): free some disk space, set XDG_CACHE_HOME, or run "
            "--backend torch"
        )

    def _convert(self, path: Path) -> None:
        """Trace the PyTorch network into OpenVINO with any batch and frame size."""
        import openvino as ov

        notice.info("preparing the model for this CPU (once per model, about 10-20 s)...")
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.xml")
        try:
            try:
                ov.save_model(to_openvino(self.model), tmp, compress_to_fp16=False)
            except RuntimeError as exc:  # how OpenVINO says it cannot write there
                raise OSError(f"cannot write {tmp}: {exc}") from None
            os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
            os.replace(tmp, path)
        finally:
            for leftover in (tmp, tmp.with_suffix(".bin")):
                leftover.unlink(missing_ok=True)

    def prepare(self, n: int, h: int, w: int) -> None:
        """Compile for frames of this shape now, before the first frame waits for it."""
        if min(h, w) >= self.model.net.min_size:
            self._compiled_for(n, h, w)

    def _compiled_for(self, n: int, h: int, w: int):
        key = (n, h, w)
        if key in self._compiled:  # the most recently used last: the least goes first
            self._compiled[key] = self._compiled.pop(key)
        else:
            if len(self._compiled) >= self.max_shapes:
                self._compiled.pop(next(iter(self._compiled)))
            network = self.network.clone()
            network.reshape([n, 3, h, w])
            self._compiled[key] = self.core.compile_model(
                network,
                "CPU",
                {
                    "INFERENCE_PRECISION_HINT": "f32",
                    "INFERENCE_NUM_THREADS": self.threads,
                    "PERFORMANCE_HINT": "LATENCY",
                },
            )
            self._prune_compiled()
        return self._compiled[key]

    def _prune_compiled(self) -> None:
        """Keep the cache of compiled networks from growing with every frame size ever seen."""
        blobs = sorted(self.compiled_cache.glob("*.blob"), key=_modified, reverse=True)
        for blob in blobs[self.kept_compiled :]:
            blob.unlink(missing_ok=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if min(h, w) < self.model.net.min_size:
            return self.model(x)
        compiled = self._compiled_for(n, h, w)
        array = self.model.to_net_order(x).detach().float().contiguous().numpy()
        result = compiled({0: array})[0]
        return self.model.to_net_order(torch.from_numpy(result.copy()))
