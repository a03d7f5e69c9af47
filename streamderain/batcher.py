"""Groups frames of one size into batches, so the model sees as many frames per call as it can."""

from __future__ import annotations

import time
from collections.abc import Iterable

from streamderain.frames import Batch, Frame
from streamderain.pipeline import Stage


class Batcher(Stage):
    """Collects frames into batches of up to ``size`` frames of the same frame size.

    A batch goes out when it is full, when a frame of another size arrives, when the stream
    ends (:meth:`finish`), or when its first frame has waited ``timeout`` seconds
    (:meth:`poll`), so a slow live source is never held back waiting for company.
    """

    def __init__(self, size: int = 1, timeout: float = 0.25) -> None:
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        self.size = size
        self.timeout = timeout
        self._pending: list[Frame] = []
        self._since = 0.0

    def process(self, frame: Frame) -> Iterable[Batch]:
        out = []
        if self._pending and frame.size != self._pending[0].size:
            out.append(self._flush())
        if not self._pending:
            self._since = time.monotonic()
        self._pending.append(frame)
        if len(self._pending) >= self.size:
            out.append(self._flush())
        return out

    def poll(self) -> Iterable[Batch]:
        """Flush a batch whose first frame has waited too long."""
        if self._pending and time.monotonic() - self._since >= self.timeout:
            return [self._flush()]
        return []

    def finish(self) -> Iterable[Batch]:
        return [self._flush()] if self._pending else []

    def _flush(self) -> Batch:
        batch = Batch(tuple(self._pending))
        self._pending = []
        return batch
