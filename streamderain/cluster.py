"""Ray: batch inputs on a pool of actors, and live feeds on actors that come back when they die.

One connection helper, one way of sizing actors (a GPU each, or a share of one; else some CPU
cores), used by both. Inputs and outputs are paths that every node must see (shared storage).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from streamderain.errors import StreamDerainError, reason
from streamderain.feeds import Feed, FeedWorker
from streamderain.jobs import Job, Result
from streamderain.options import RunOptions
from streamderain.pipeline import usable_cores
from streamderain.workers import CPU_THREADS, Report, Worker, deliver

log = logging.getLogger(__name__)
notice = logging.getLogger("streamderain.notice")

# A feed told to stop ends within its source's open timeout (10 s) and a segment's close.
FEED_STOP_WAIT = 20.0
# How many times a feed's actor that Ray gave up is replaced before the feed is said to fail.
FEED_REPLACEMENTS = 3
# The logger of Ray's notice that it turned token authentication on.
RAY_AUTH_NOTICE = "ray._private.authentication.authentication_token_setup"


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[ModuleType]:
    """Ray, started or joined for the ``with`` block (unless this process already has it).

    ``address``: ``local`` (or ``""``) starts Ray on this machine, bound to 127.0.0.1; ``auto``
    joins the cluster this machine belongs to; ``ray://host:10001`` connects a Ray client.
    Ray's own errors come out as one-line :class:`StreamDerainError`.
    """
    try:
        import ray
    except ImportError:
        raise StreamDerainError("Ray is not installed (pip install 'streamderain[ray]')") from None
    connected = False
    if not ray.is_initialized():
        quiet = {"logging_level": logging.WARNING, "include_dashboard": False}
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            if address in ("", "local"):
                cpus = usable_cores()
                # Ray turns token authentication on for a cluster it starts (our own, bound to
                # 127.0.0.1) and says so in a warning on every run; it stays on, unsaid.
                logging.getLogger(RAY_AUTH_NOTICE).setLevel(logging.ERROR)
                # "local": a new Ray of our own, even where `ray start` left a cluster behind
                ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.1", **quiet)
            else:
                ray.init(address=address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise StreamDerainError(
                f"cannot start or join Ray at {address!r}: {reason(exc)}"
            ) from None
        connected = True
        # Ray's driver takes SIGTERM for itself (a crash report, its local processes killed,
        # the process ended), so a service manager's stop would skip ours: closing the outputs.
        if sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
    try:
        yield ray
    except ray.exceptions.RayError as exc:
        raise StreamDerainError(f"Ray: {reason(exc)}") from exc
    finally:
        if connected:
            ray.shutdown()


@contextlib.contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """An event that Ctrl-C or SIGTERM sets while the block runs; a second one raises
    :class:`KeyboardInterrupt` at once.

    Why: while it waits, Ray runs Python callbacks of its own on the main thread, and a
    KeyboardInterrupt raised inside one of them can be printed as "Exception ignored" and lost
    (ray-project/ray#7734); a handler that only sets a flag has nothing to lose. Off the main
    thread (no signals there) the event is never set.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_signal(_signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def actor_resources(
    ray: ModuleType, device: str, threads: int | None, per_gpu: float = 1
) -> tuple[str, int | None, dict[str, float]]:
    """(device, CPU threads, Ray resources) of one actor: a GPU (or ``1/per_gpu`` of one) where
    the cluster has GPUs and ``device`` allows it, else ``threads`` CPU cores."""
    gpu = device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
    if device.startswith("cuda") and not gpu:
        raise StreamDerainError(f"--device {device}: the Ray cluster has no GPU")
    if gpu:
        return "cuda", None, {"num_cpus": 1, "num_gpus": 1 / per_gpu}
    threads = threads or 1
    return "cpu", threads, {"num_cpus": threads}


class RoomWatch:
    """Says when no node of the cluster could hold a worker any more (its nodes lost): Ray then
    holds a new worker's work until a node joins, without a word, and the run seemed hung."""

    def __init__(self, ray: ModuleType, per_actor: dict[str, float]) -> None:
        self.ray, self.said = ray, False
        self.need = {"CPU": per_actor.get("num_cpus", 0), "GPU": per_actor.get("num_gpus", 0)}

    def check(self) -> None:
        total = self.ray.cluster_resources()
        short = [f"{v:g} {k}" for k, v in self.need.items() if v and total.get(k, 0) < v]
        if short and not self.said:
            log.warning(
                "no node of the Ray cluster has %s for a worker (nodes lost?); waiting for one "
                "to join (Ctrl-C stops)",
                " and ".join(short),
            )
        elif self.said and not short:
            log.warning("a node with room joined the Ray cluster")
        self.said = bool(short)


def run_ray(
    jobs: list[Job],
    options: RunOptions,
    report: Report,
    address: str = "local",
    workers: int | None = None,
    threads: int | None = None,
) -> bool:
    """Derain ``jobs`` on Ray actors, each holding a model and given one file at a time.

    One actor per GPU, or on CPUs one per ``threads`` cores (default up to ``CPU_THREADS``, or
    the cores shared among ``workers``); never more than the cluster can place, as an actor
    that cannot be placed would hold its file forever. An actor that dies (its process or its
    node lost) is dropped and its file goes to the next free actor, or, where it was the last,
    to a new one (where the others live on, a new one might never be placed, its node gone); a
    file whose actor dies twice fails. Returns whether Ctrl-C stopped the run (at once: the files in
    flight are redone by the next run).
    """
    with ray_session(address) as ray, stop_requested() as stop:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = threads or min(CPU_THREADS, max(1, cpus // (workers or 1)))
        device, threads, per_actor = actor_resources(ray, options.model.device, threads)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        fits = max(gpus if device == "cuda" else cpus // threads, 1)
        n = max(workers or fits, 1)
        if n > fits:
            log.warning("--workers %d: the Ray cluster has room for %d; running %d", n, fits, fits)
            n = fits
        log.info("%d Ray actor(s), each with %s", n, per_actor)
        actor = ray.remote(Worker).options(**per_actor, max_restarts=0)
        idle = [actor.remote(options, device, threads) for _ in range(n)]
        todo, running, deaths, room = deque(jobs), {}, Counter(), RoomWatch(ray, per_actor)
        while (running or (todo and idle)) and not stop.is_set():
            while todo and idle:
                worker, job = idle.pop(), todo.popleft()
                running[worker.derain.remote(job)] = (worker, job)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            if not ready:
                room.check()
                continue
            worker, job = running.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:  # died, or cut off: never used again
                ray.kill(worker)
                if not idle and not running:  # the last one: a new one, or the batch ends here
                    idle.append(actor.remote(options, device, threads))
                deaths[job] += 1
                log.warning("a Ray worker died on %s: %s", job.input, reason(exc))
                if deaths[job] < 2:
                    todo.appendleft(job)
                else:
                    report(Result.failed(job, "its Ray worker died on it, twice"))
                continue
            idle.append(worker)
            deliver(result, report)
        return stop.is_set()


def run_feeds(
    feeds: list[Feed],
    options: RunOptions,
    address: str = "local",
    threads: int | None = None,
    per_gpu: int = 1,
) -> list[dict[str, Any]]:
    """Run every feed on its own restartable Ray actor until they end or Ctrl-C stops them.

    If an actor's process dies (a crash, the out-of-memory killer, its node going away), Ray
    starts it again (``max_restarts=-1``) and calls ``run`` again (``max_task_retries``), so
    the feed resumes by itself. On a cluster with GPUs, ``per_gpu`` feeds share one GPU; on
    CPUs each feed's actor takes ``threads`` cores (default 1).
    """
    with ray_session(address) as ray, stop_requested() as stop:
        device, threads, per_actor = actor_resources(ray, options.model.device, threads, per_gpu)
        restartable = {"max_restarts": -1, "max_task_retries": -1, "max_concurrency": 2}
        actor = ray.remote(FeedWorker)

        def start(feed: Feed, attempt: int = 0) -> tuple[Any, Any]:
            """A feed's actor (named, with the attempt after the first) and its run."""
            name = f"feed:{feed.name}" + (f":{attempt}" if attempt else "")
            worker = actor.options(name=name, **per_actor, **restartable).remote(
                options, device, threads
            )
            return worker, worker.run.remote(feed)

        started = {f.name: start(f) for f in feeds}
        log.warning("%d feed(s) running on Ray: %s", len(feeds), ", ".join(started))
        room = RoomWatch(ray, per_actor)
        return _wait_for_feeds(ray, {f.name: f for f in feeds}, started, start, stop, room)


def _wait_for_feeds(
    ray: ModuleType,
    feeds: dict[str, Feed],
    started: dict[str, tuple[Any, Any]],
    start: Callable[[Feed, int], tuple[Any, Any]],
    stop: threading.Event,
    room: RoomWatch,
) -> list[dict[str, Any]]:
    """Collect each feed's end; once ``stop`` is set, stop every feed and wait for its segment
    to close, then raise :class:`KeyboardInterrupt`.

    Ray restarts a feed's actor where its process dies, but where Ray gives it up (its node
    lost while no other had room, seen as "the actor died unexpectedly") the feed gets a new
    actor, up to :data:`FEED_REPLACEMENTS` times."""
    done: list[dict[str, Any]] = []
    runs = {ref: name for name, (_, ref) in started.items()}
    replaced: Counter[str] = Counter()
    while runs and not stop.is_set():
        finished, _ = ray.wait(list(runs), num_returns=1, timeout=1.0)
        if not finished:
            room.check()
        for ref in finished:
            name = runs.pop(ref)
            try:
                done.append(_outcome(ray, ref, name))
            except ray.exceptions.RayActorError as exc:
                if replaced[name] >= FEED_REPLACEMENTS:
                    done.append(_outcome_of_error(name, f"its Ray worker was lost: {reason(exc)}"))
                    continue
                replaced[name] += 1
                log.warning(
                    "feed %s: its Ray worker was lost (%s); starting another", name, reason(exc)
                )
                started[name] = start(feeds[name], replaced[name])
                runs[started[name][1]] = name
    if not stop.is_set():
        return done
    log.warning("stopping %d feed(s)", len(runs))
    for name in runs.values():
        started[name][0].stop.remote()
    deadline = time.monotonic() + FEED_STOP_WAIT
    while runs and time.monotonic() < deadline:
        finished, _ = ray.wait(list(runs), num_returns=1, timeout=1.0)
        for ref in finished:
            name = runs.pop(ref)
            with contextlib.suppress(ray.exceptions.RayActorError):  # stopping anyway
                done.append(_outcome(ray, ref, name))
    raise KeyboardInterrupt


def _outcome(ray: ModuleType, ref: Any, name: str) -> dict[str, Any]:
    """A feed's end, said as it comes: a feed that fails while the others run is not left
    unsaid until they stop."""
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        return _outcome_of_error(name, reason(exc.cause if exc.cause else exc))
    notice.info("feed %s ended: %d frames into %s", name, outcome["frames"], outcome["output"])
    return outcome


def _outcome_of_error(name: str, error: str) -> dict[str, Any]:
    log.error("feed %s ended: %s", name, error)
    return {"feed": name, "error": error}
