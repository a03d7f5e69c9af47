"""Batch workers: each loads the model once and derains one file after another.

The same :class:`Worker` runs in a local process pool (:func:`run_local`) and as a Ray actor
(``streamderain.cluster``).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path

from streamderain.errors import StreamDerainError, reason
from streamderain.jobs import Job, Result
from streamderain.options import RunOptions
from streamderain.pipeline import Pipeline, Stats, usable_cores

log = logging.getLogger(__name__)

# On a CPU, one worker per CPU_THREADS cores, each with that many threads. On our 2-core machine
# (`python -m benchmarks.batch`, nothing else running) one 2-thread worker did 0.262 files/s and
# two 1-thread workers 0.178: every worker loads and converts its own model and they share the
# memory bandwidth. Beyond a few threads a video-sized frame gains little from more, so bigger
# CPUs are split into workers of CPU_THREADS cores (not measured: this machine has 2).
CPU_THREADS = 4
PR_SET_PDEATHSIG = 1  # prctl(2)
#: the driver's stop, passed on to its worker processes (POSIX; elsewhere they take Ctrl-C)
STOP_SIGNAL = getattr(signal, "SIGUSR1", None)

Report = Callable[[Result], None]


class Worker:
    """Loads the model once, then derains one file after another.

    Args:
        options: the batch's options, the same for every file.
        device: this worker's device (``cpu``, ``cuda``, ``cuda:N``).
        threads: CPU threads for the model (None: every core).
    """

    def __init__(self, options: RunOptions, device: str, threads: int | None) -> None:
        from streamderain.runner import ModelRunner
        from training import ModelLoadError

        self.options = options
        self.pipeline: Pipeline | None = None  # the file in progress, for Ctrl-C
        self.stopping = False
        self.stop_file = threading.Event()  # set: the file in progress stops reading
        self.runner, self.setup_error = None, ""
        try:
            self.runner = ModelRunner(replace(options.model, device=device), threads)
        except (StreamDerainError, ModelLoadError) as exc:
            self.setup_error = str(exc)

    def derain(self, job: Job) -> Result:
        """Derain ``job``; every failure is a ``failed`` result with a one-line reason."""
        from training import ModelLoadError

        if self.setup_error:
            return Result.of(job, "fatal", self.setup_error)
        if self.stopping:
            return Result.of(job, "cancelled")
        t0 = time.perf_counter()
        try:
            Path(job.output).parent.mkdir(parents=True, exist_ok=True)
            if Path(job.input).is_dir():  # pictures come out as pictures, dots in its name or not
                Path(job.output).mkdir(exist_ok=True)
            stats = self.derain_video(job.input, job.output)
        except (StreamDerainError, ModelLoadError) as exc:
            return Result.failed(job, reason(exc))
        except KeyboardInterrupt:
            return Result.failed(job, "interrupted")
        except Exception as exc:  # one bad file must never stop the others
            return Result.failed(job, f"unexpected {type(exc).__name__}: {reason(exc)}")
        seconds = time.perf_counter() - t0
        if stats.interrupted:
            return Result.failed(
                job, f"interrupted; the output holds the {stats.frames} frames done"
            )
        if stats.frames == 0:
            return Result.failed(job, "no frame could be decoded")
        fps = round(stats.frames / seconds, 3)
        return Result.of(job, "done", frames=stats.frames, seconds=round(seconds, 3), fps=fps)

    def derain_video(self, src: str, dst: str, **values: object) -> Stats:
        """``derain_video`` with this worker's runner instead of a new model per file."""
        from streamderain.api import derain_video

        self.stop_file = threading.Event()  # what a stop sets for the file in progress
        if self.stopping:
            self.stop_file.set()
        runner = self.runner  # it stands for the model options: its device is this worker's
        options = replace(self.options, model=runner.options) if runner else self.options
        try:
            return derain_video(
                src,
                dst,
                options,
                runner=runner,
                on_start=self._started,
                stop=self.stop_file,
                **values,
            )
        finally:
            self.pipeline = None

    def _started(self, pipeline: Pipeline, decoder: object) -> None:
        self.pipeline = pipeline
        if self.stopping:  # stopped while it was still connecting
            pipeline.request_stop()

    def interrupt(self) -> None:
        """Ctrl-C: finish the file in progress as a playable partial output, start no other;
        a second time: stop at once."""
        pipeline = self.pipeline
        if pipeline is not None and self.stopping:
            pipeline.abort()
        elif pipeline is not None:
            pipeline.request_stop()
        self.stopping = True
        self.stop_file.set()  # also while its live source is still connecting


_worker: Worker | None = None  # a local pool process's worker
_started = None  # where it says which process took which input


def _start_process(options: RunOptions, devices, threads: int | None, started) -> None:
    """A worker process finishes its file and stops on the driver's word (:func:`tell_workers`),
    which passes on every stop it gets, also one sent to it alone (``kill PID``, ``docker
    stop``), which never reached the workers; and on SIGTERM (a service manager's stop to the
    whole group, the pool's own on a crash). A terminal's Ctrl-C, which reaches the whole
    group, is left to the driver: taken here too, it would be a second stop."""
    global _worker, _started
    _die_with_parent()
    _started = started
    stopped = threading.Event()  # told to stop while the model still loads
    if STOP_SIGNAL is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for signum in (signal.SIGTERM, STOP_SIGNAL):
            signal.signal(signum, lambda signum, frame: _stop(stopped))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)  # held since the driver started us
    _worker = Worker(options, devices.get(), threads)
    if STOP_SIGNAL is None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda signum, frame: _worker.interrupt())
    if stopped.is_set():
        _worker.interrupt()


def _stop(stopped: threading.Event) -> None:
    """Finish the file in progress and stop; the same however many times it is asked."""
    if _worker is None:
        stopped.set()
    elif not _worker.stopping:
        _worker.interrupt()


#: signals a new worker process holds until it has its handlers (a Ctrl-C while it imports
#: torch printed a traceback); it inherits them held from the driver, which holds them while
#: it starts workers
HELD = {signal.SIGINT, signal.SIGTERM, STOP_SIGNAL} if STOP_SIGNAL is not None else set()


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold :data:`HELD` while worker processes start; one that came meanwhile is taken after."""
    if not HELD:
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def tell_workers(pool: ProcessPoolExecutor) -> None:
    """Pass the driver's stop on to each worker process: it finishes its file, as a playable
    partial output. (A second stop does not wait for them: they die with the driver.)"""
    if STOP_SIGNAL is None:
        return  # they took the terminal's Ctrl-C themselves
    for process in list(pool._processes.values()):  # noqa: SLF001 - the pool's own processes
        if process.is_alive():  # not reaped: its pid is still its own
            os.kill(process.pid, STOP_SIGNAL)


def _die_with_parent() -> None:
    """Linux: this process is killed when the driver dies, even by SIGKILL, instead of living
    on as an orphan that finishes a file the manifest never hears of."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the driver died before the call
            os._exit(1)


def _derain_in_process(job: Job) -> Result:
    _started.put((job.input, os.getpid()))
    return _worker.derain(job)


def deliver(result: Result, report: Report) -> bool:
    """Report a result; False if the worker, interrupted, refused the job.

    Raises:
        StreamDerainError: the model or device cannot work, so every input would fail.
    """
    if result.status == "fatal":
        raise StreamDerainError(result.reason)
    if result.status == "cancelled":
        return False
    report(result)
    return True


def run_local(
    jobs: list[Job],
    options: RunOptions,
    report: Report,
    workers: int | None = None,
    threads: int | None = None,
) -> bool:
    """Derain ``jobs`` in local worker processes; ``report`` gets each result as it comes.

    A worker per GPU, or one per ``CPU_THREADS`` cores on a CPU, each with ``cores / workers``
    threads. A worker process that dies takes its pool down: the inputs in flight go on in a
    fresh pool, and the one whose process died fails if it takes it down again. Returns
    whether Ctrl-C stopped the run.
    """
    devices = worker_devices(options.model.device, workers)
    if devices[0] == "cpu":
        threads = threads or max(1, usable_cores() // len(devices))
    log.info("%d worker process(es) on %s", len(devices), ", ".join(sorted(set(devices))))
    todo, crashes, stopping = deque(jobs), Counter(), False
    context = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
    while todo:
        queue, started, pids = context.SimpleQueue(), context.SimpleQueue(), {}
        for device in devices:
            queue.put(device)
        setup = (options, queue, threads, started)
        with ProcessPoolExecutor(
            len(devices), context, initializer=_start_process, initargs=setup
        ) as pool:
            running: dict[Future, Job] = {}
            broken = False
            while running or (todo and not broken):
                try:
                    with held_signals():  # the pool starts its processes as jobs come
                        while todo and not broken and len(running) < len(devices):
                            job = todo.popleft()
                            running[pool.submit(_derain_in_process, job)] = job
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    tell_workers(pool)
                    if stopping:
                        for job in running.values():  # ours to replace on the next run
                            report(Result.failed(job, "aborted; the next run redoes it"))
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
                    stopping = True
                    todo.clear()
                    log.warning("stopping: finishing the files in progress (Ctrl-C again to abort)")
                    continue
                _drain(started, pids)  # a pipe: read as it fills, or the workers block on it
                lost = []
                while finished:
                    for future in finished:
                        job = running.pop(future)
                        try:
                            if not deliver(future.result(), report):
                                stopping = True  # the worker was interrupted: stop, as on Ctrl-C
                                todo.clear()
                        except BrokenProcessPool:
                            lost.append(job)
                    finished = wait(running)[0] if lost else set()  # the rest end with the pool
                if lost:
                    broken = True
                    for job in _to_blame(lost, pool, started, pids):
                        crashes[job] += 1
                    for job in [] if stopping else lost:  # stopping: the next run does them
                        if crashes[job] < 2:
                            todo.appendleft(job)
                        else:
                            report(Result.failed(job, "its worker process died on it, twice"))
            if broken and todo:
                log.warning("a worker process died; starting a fresh pool")
    return stopping


def _drain(started, pids: dict[str, int]) -> None:
    """Which process took which input, as the workers said it."""
    while not started.empty():
        name, pid = started.get()
        pids[name] = pid


def _to_blame(
    lost: list[Job], pool: ProcessPoolExecutor, started, pids: dict[str, int]
) -> list[Job]:
    """The inputs a broken pool lost whose own worker process died (by a signal other than the
    pool's SIGTERM to the rest): a crash takes the whole pool down, and the files beside it are
    not to blame. Where none is (a process died loading the model), all of them are, so that
    no input is retried forever."""
    _drain(started, pids)
    processes = pool._processes or {}  # noqa: SLF001 - which of the pool's processes died
    dead = {
        name
        for name, pid in pids.items()
        if pid in processes and processes[pid].exitcode not in (None, 0, -signal.SIGTERM)
    }
    return [job for job in lost if job.input in dead] or lost


def worker_devices(device: str, workers: int | None) -> list[str]:
    """One device per local worker: a worker per GPU, or one per ``CPU_THREADS`` cores."""
    from streamderain.runner import pick_device

    picked = pick_device(device)
    if picked.type == "cpu":
        return ["cpu"] * (workers or max(1, usable_cores() // CPU_THREADS))
    if picked.index is not None:  # cuda:N: every worker on that GPU
        return [str(picked)] * (workers or 1)
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i % count}" for i in range(workers or count)]
