"""Wires decoder -> batcher -> runner -> encoder with threads and bounded queues.

Each stage runs in its own thread and knows only its inbox and outbox. A stage that fails
hands its exception to the main thread and sets a shared stop event; the pipeline then stops
every stage, keeps what was written, and re-raises the first failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from streamderain.errors import StreamDerainError

log = logging.getLogger(__name__)

_END = object()
POLL = 0.05
YIELDING_NICE = 10


#: how long a stage's thread may take to stop once the pipeline stops
JOIN_TIMEOUT = 10.0
#: the same for the last stage (the encoder), which closes the output on a stop: flushing an
#: encoder's delayed frames at 4K or waiting for ffmpeg to exit can take longer, and a thread cut
#: short by the process's exit leaves a broken file
FINISH_TIMEOUT = 120.0


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system has one: Linux;
    all of them on macOS and Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class Stage:
    """One step of the pipeline, run in its own thread: items in, zero or more items out.

    Subclasses implement :meth:`process` and override what else they need.
    """

    #: run this stage's thread at a lower priority, so the model gets the cores first
    yields_cpu: bool = False

    def process(self, item: Any) -> Iterable[Any]:
        raise NotImplementedError

    def poll(self) -> Iterable[Any]:
        """Called when no item came for a while (flush what has waited too long)."""
        return []

    def finish(self) -> Iterable[Any]:
        """The end of the stream: what is still held back."""
        return []

    def abort(self, failed: bool) -> None:
        """The run is stopping early: on an error (``failed``) or a second Ctrl-C."""

    def stalled(self) -> StreamDerainError | None:
        """Asked from the main thread while the run waits: the error to end it with where this
        stage is stuck in a call nothing else can end (a write to a live receiver that stopped
        reading), else None. The stage's thread is then given up."""
        return None


class Source(Protocol):
    """Where frames come from: the decoder."""

    yields_cpu: bool

    def __iter__(self) -> Iterator[Any]: ...
    def stop(self) -> None: ...


@dataclass
class Stats:
    """What a run did: frames, time (``setup`` before the first frame, ``wall`` from it), and
    how busy each stage was."""

    frames: int = 0
    wall: float = 0.0
    setup: float = 0.0
    busy: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    corrupt_packets: int = 0
    dropped: int = 0
    reconnects: int = 0
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.wall if self.wall > 0 else 0.0

    def summary(self) -> str:
        shares = ", ".join(
            f"{name} {100 * t / self.wall:.0f}%" for name, t in self.busy.items() if self.wall > 0
        )
        frames = "1 frame" if self.frames == 1 else f"{self.frames} frames"
        text = f"{frames} in {self.wall:.1f} s ({self.fps:.2f} fps)"
        if self.setup >= 0.05:
            text += f", after {self.setup:.1f} s opening the input and loading the model"
        text += f"; busy: {shares}; peak memory {self.peak_rss_mb:.0f} MB"
        if self.corrupt_packets:
            text += f"; {self.corrupt_packets} corrupt packets skipped or concealed"
        if self.dropped:
            text += f"; {self.dropped} frames dropped to keep up with the live source"
        if self.reconnects:
            text += f"; {self.reconnects} reconnects"
        return f"interrupted: {text}" if self.interrupted else text


def _yield_cpu() -> None:
    """Run this thread at a lower priority, so the model's threads get the cores first and a
    stage that only has to keep up fills the gaps. Linux keeps a nice value per thread."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), YIELDING_NICE)


class Pipeline:
    """Runs a frame source through stages, the last of which writes the output.

    Args:
        source: the frames (the decoder).
        stages: ``(name, stage)`` in order; each turns items into zero or more items.
        queue_size: items each queue holds at most (back-pressure: files lose nothing).
        drop_oldest: when the first stage falls behind, drop the oldest waiting frame instead
            of waiting (live sources: delay stays bounded; each drop is counted).
        on_frame: called in the main thread for every frame the last stage has taken.
    """

    def __init__(
        self,
        source: Source,
        stages: list[tuple[str, Stage]],
        queue_size: int = 4,
        drop_oldest: bool = False,
        on_frame: Callable[[int], None] | None = None,
    ) -> None:
        self.source = source
        self.stages = stages
        self.queue_size = queue_size
        self.drop_oldest = drop_oldest
        self.on_frame = on_frame
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.stats = Stats(busy={"decode": 0.0, **{name: 0.0 for name, _ in stages}})
        self._done = queue.Queue()
        self._lock = threading.Lock()
        self._stalled: set[str] = set()

    def request_stop(self) -> None:
        """Stop reading the source; everything already read goes through to the output."""
        self.stats.interrupted = True
        self.source.stop()

    def abort(self) -> None:
        """Stop every stage now."""
        self.stats.interrupted = True
        self.stop_event.set()
        self.source.stop()

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self.stop_event.is_set():
            try:
                q.put(item, timeout=POLL)
                return True
            except queue.Full:
                continue
        return False

    def _put_newest(self, q: queue.Queue, item: Any) -> bool:
        """Put without waiting; if the queue is full, the oldest item makes room."""
        while not self.stop_event.is_set():
            try:
                q.put_nowait(item)
                return True
            except queue.Full:
                try:
                    q.get_nowait()
                    self.stats.dropped += 1
                except queue.Empty:
                    continue
        return False

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
        self.stop_event.set()
        self.source.stop()  # a source waiting to reconnect waits no more

    def _read(self, out: queue.Queue) -> None:
        try:
            if self.source.yields_cpu:
                _yield_cpu()
            it: Iterator[Any] = iter(self.source)
            while not self.stop_event.is_set():
                t0 = time.perf_counter()
                item = next(it, _END)
                self.stats.busy["decode"] += time.perf_counter() - t0
                if item is _END:
                    break
                put = self._put_newest if self.drop_oldest else self._put
                if not put(out, item):
                    break
        except BaseException as exc:  # noqa: BLE001 - carried to the main thread
            self._fail(exc)
        finally:
            self._put(out, _END)

    def _work(self, name: str, stage: Stage, inbox: queue.Queue, out: queue.Queue | None) -> None:
        """One stage's loop. The last stage (``out`` is None) reports each item it took."""
        busy = self.stats.busy

        def timed(call: Callable[[], Iterable[Any]]) -> list[Any]:
            t0 = time.perf_counter()
            items = list(call())
            busy[name] += time.perf_counter() - t0
            return items

        def emit(items: list[Any]) -> bool:
            return out is None or all(self._put(out, item) for item in items)

        try:
            if stage.yields_cpu:
                _yield_cpu()
            while not self.stop_event.is_set():
                try:
                    item = inbox.get(timeout=POLL)
                except queue.Empty:
                    emit(timed(stage.poll))
                    continue
                if item is _END:
                    break
                results = timed(lambda item=item: stage.process(item))
                if out is None:
                    self._done.put(item)
                if not emit(results):
                    break
            if not self.stop_event.is_set():
                emit(timed(stage.finish))
        except BaseException as exc:  # noqa: BLE001 - carried to the main thread
            self._fail(exc)
        finally:
            if self.stop_event.is_set():  # a stop met inside a stage is the user's, no failure
                stage.abort(failed=any(not isinstance(e, KeyboardInterrupt) for e in self.errors))
            if out is None:
                self._done.put(_END)
            elif not self.stop_event.is_set():
                self._put(out, _END)

    def run(self) -> Stats:
        """Run to the end of the source (or a stop); returns the stats, raises the first error."""
        queues = [queue.Queue(self.queue_size) for _ in self.stages]
        threads = [
            threading.Thread(target=self._read, args=(queues[0],), name="decode", daemon=True)
        ]
        for i, (name, stage) in enumerate(self.stages):
            out = queues[i + 1] if i + 1 < len(self.stages) else None
            threads.append(
                threading.Thread(
                    target=self._work, args=(name, stage, queues[i], out), name=name, daemon=True
                )
            )
        t0 = time.perf_counter()
        try:
            for t in threads:
                t.start()
            self._wait()
        except KeyboardInterrupt:  # as a second Ctrl-C: the output is kept
            self.stats.interrupted = True
            raise
        except BaseException as exc:  # the caller's on_frame, or no thread to start
            self._fail(exc)  # as any stage's failure: a partial output replaces nothing
            raise
        finally:
            self.stop_event.set()
            for t in threads:
                self._join(t, last=t is threads[-1])
            self.stats.wall = time.perf_counter() - t0
            self.stats.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # a stop a stage met (ffmpeg's, signalled with us) while the user stops is no error
        stopped = KeyboardInterrupt if self.stats.interrupted else ()
        errors = [e for e in self.errors if not isinstance(e, stopped)]
        if errors:
            first = errors[0]
            if isinstance(first, StreamDerainError | KeyboardInterrupt):
                raise first
            raise StreamDerainError(f"{type(first).__name__}: {first}") from first
        return self.stats

    def _join(self, thread: threading.Thread, last: bool) -> None:
        """Wait for a stage's thread. One still busy after a stop the user asked for (a model
        call of seconds, after a second Ctrl-C) is left to end by itself: the stages after it
        have closed the output already. Otherwise a stage that does not stop is an error."""
        if thread.ident is None or thread.name in self._stalled:
            return  # never started, or given up: it cannot be stopped
        limit = FINISH_TIMEOUT if last else JOIN_TIMEOUT
        thread.join(timeout=limit)
        if not thread.is_alive():
            return
        if self.stats.interrupted and not self.errors and not last:
            log.warning("stage %s is still busy; not waiting for it", thread.name)
            return
        log.error("stage %s did not stop within %g s", thread.name, limit)
        self._fail(StreamDerainError(f"the {thread.name} stage did not stop"))

    def _wait(self) -> None:
        while True:
            try:
                item = self._done.get(timeout=POLL)
            except queue.Empty:
                if self.stop_event.is_set() and self.errors:
                    return
                self._check_stalls()
                continue
            if item is _END:
                return
            n = len(item)
            self.stats.frames += n
            if self.on_frame is not None:
                self.on_frame(n)

    def _check_stalls(self) -> None:
        for name, stage in self.stages:
            if error := stage.stalled():
                self._stalled.add(name)
                self._fail(error)
