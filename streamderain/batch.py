"""``streamderain batch``: many inputs into one folder, in local processes or on a Ray cluster.

Every input goes through :func:`streamderain.api.derain_video` with the same options. A worker
(a local process or a Ray actor) loads the model once and then derains one file after another;
the driver plans the outputs, hands out the inputs, and appends each outcome to
``OUT_DIR/manifest.jsonl`` as it comes back, so a re-run skips what is already done.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, fields
from glob import glob
from pathlib import Path

import click

from streamderain.errors import StreamDerainError

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
# On a CPU, one worker per CPU_THREADS cores, each with that many threads. On our 2-core machine
# (`python -m benchmarks.batch`, nothing else running) one 2-thread worker did 0.262 files/s and
# two 1-thread workers 0.178: every worker loads and converts its own model and they share the
# memory bandwidth. Beyond a few threads a video-sized frame gains little from more, so bigger
# CPUs are split into workers of CPU_THREADS cores (not measured: this machine has 2).
CPU_THREADS = 4
RUNNER_OPTIONS = ("model", "device", "precision", "tile", "backend")
PIPELINE_OPTIONS = (
    *("batch", "codec", "crf", "preset", "encoder", "compare"),
    *("start", "duration", "max_frames"),
)
# Options taken from ``streamderain run`` as they are, so the two commands never drift apart.
RUN_OPTIONS = (*RUNNER_OPTIONS, *PIPELINE_OPTIONS, "overwrite", "quiet", "verbose")


@dataclass(frozen=True)
class Job:
    """One input to derain and where its output goes (absolute paths)."""

    input: str
    output: str


@dataclass
class Result:
    """One input's outcome; ``done`` and ``failed`` ones are the lines of the manifest."""

    input: str
    output: str
    status: str  # done, failed; skipped (done in an earlier run); internal: fatal, cancelled
    reason: str = ""
    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0

    @classmethod
    def failed(cls, job: Job, reason: str) -> Result:
        return cls(job.input, job.output, "failed", reason)


# ---------------------------------------------------------------------------------------------
# Workers: the same class is a local pool process's worker and a Ray actor.


class Worker:
    """Loads the model once, then derains one file after another.

    Args:
        options: the batch's options (``RUNNER_OPTIONS`` and ``PIPELINE_OPTIONS``).
        device: this worker's device (``cpu``, ``cuda``, ``cuda:N``).
        threads: CPU threads for the model (None: every core).
    """

    def __init__(self, options: dict, device: str, threads: int | None) -> None:
        from streamderain.runner import ModelRunner
        from training import ModelLoadError

        self.options = {name: options[name] for name in PIPELINE_OPTIONS}
        self.pipeline = None  # the file in progress, for Ctrl-C
        self.stopping = False
        self.runner, self.setup_error = None, ""
        model = options["model"]
        try:
            self.runner = ModelRunner(
                str(model) if model is not None else None,
                device,
                options["precision"],
                options["tile"],
                threads=threads,
                keep_original=options["compare"] is not None,
                backend=options["backend"],
            )
        except (StreamDerainError, ModelLoadError) as exc:
            self.setup_error = str(exc)

    def derain(self, job: Job) -> Result:
        """Derain ``job``; every failure is a ``failed`` result with a one-line reason."""
        from training import ModelLoadError

        if self.setup_error:
            return Result(job.input, job.output, "fatal", self.setup_error)
        if self.stopping:
            return Result(job.input, job.output, "cancelled")
        t0 = time.perf_counter()
        try:
            stats = self._derain_video(job)
        except (StreamDerainError, ModelLoadError) as exc:
            return Result.failed(job, _one_line(exc))
        except KeyboardInterrupt:
            return Result.failed(job, "interrupted")
        except Exception as exc:  # one bad file must never stop the others
            return Result.failed(job, f"unexpected {type(exc).__name__}: {_one_line(exc)}")
        finally:
            self.pipeline = None
        seconds = time.perf_counter() - t0
        if stats.interrupted:
            return Result.failed(
                job, f"interrupted; the output holds the {stats.frames} frames done"
            )
        if stats.frames == 0:
            return Result.failed(job, "no frame could be decoded")
        fps = round(stats.frames / seconds, 3)
        return Result(job.input, job.output, "done", "", stats.frames, round(seconds, 3), fps)

    def _derain_video(self, job: Job):
        """``derain_video`` with this worker's runner instead of a new model per file."""
        from streamderain import api

        self.runner.finish()  # a file that failed on CUDA may have left one batch in flight
        call = {"on_start": self._started, **self.options}
        return api.derain_video(job.input, job.output, runner=self.runner, **call)

    def _started(self, pipeline, decoder) -> None:
        self.pipeline = pipeline

    def interrupt(self) -> None:
        """Ctrl-C: finish the file in progress as a playable partial output, start no other;
        a second time: stop at once."""
        pipeline = self.pipeline
        if pipeline is not None and self.stopping:
            pipeline.abort()
        elif pipeline is not None:
            pipeline.request_stop()
        self.stopping = True


_worker: Worker | None = None  # a local pool process's worker


def _start_process(options: dict, devices, threads: int | None) -> None:
    global _worker
    _worker = Worker(options, devices.get(), threads)
    signal.signal(signal.SIGINT, lambda signum, frame: _worker.interrupt())


def _derain_in_process(job: Job) -> Result:
    return _worker.derain(job)


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Planning: inputs -> outputs, the manifest, what is done already.


def expand_inputs(items: Iterable[str], list_file: str | Path | None = None) -> list[str]:
    """Paths and globs (``*``, ``?``, ``[...]``, ``**``), plus a list file's lines, in order,
    each once. A list file names one input per line; blank lines and ``#`` comments are skipped."""
    items = list(items)
    if list_file is not None:
        try:
            lines = Path(list_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise StreamDerainError(f"{list_file}: cannot read the list ({exc})") from None
        items += [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    found: dict[str, str] = {}
    for item in items:
        if "://" not in item and any(c in item for c in "*?["):
            matches = sorted(glob(item, recursive=True))
            if not matches:
                log.warning("%s matches nothing", item)
        else:
            matches = [item]
        for m in matches:
            found.setdefault(m if "://" in m else os.path.abspath(m), m)
    return list(found)


def read_manifest(path: Path) -> dict[str, Result]:
    """The latest outcome of every input the manifest records (a torn last line is ignored)."""
    records: dict[str, Result] = {}
    if not path.exists():
        return records
    names = {f.name for f in fields(Result)}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = Result(**{k: v for k, v in json.loads(line).items() if k in names})
        except (ValueError, TypeError):
            log.warning("%s: line %d is not a record; ignored", path, n)
            continue
        records[record.input] = record
    return records


def plan(
    inputs: list[str], out_dir: Path, overwrite: bool = False
) -> tuple[list[Job], dict[str, Result]]:
    """The jobs to run, and the outcome of each input that needs no run (skipped or refused).

    An output mirrors its input's name in ``out_dir`` (a folder of images maps to a folder). An
    input the manifest records as done, whose output exists, is skipped. An existing output the
    manifest does not know is replaced only with ``overwrite``.
    """
    out_dir = out_dir.resolve()
    manifest = read_manifest(out_dir / MANIFEST)
    jobs: list[Job] = []
    known: dict[str, Result] = {}
    owner: dict[str, str] = {}
    for src in inputs:
        if "://" not in src and Path(src).is_relative_to(out_dir):
            log.info("%s is inside --out-dir: not an input", src)
            continue
        job = Job(src, str(out_dir / Path(src).name))
        if job.output in owner:
            raise StreamDerainError(
                f"{owner[job.output]} and {src} would both write {job.output}; "
                "run them in separate batches"
            )
        owner[job.output] = src
        before = manifest.get(src)
        output = Path(job.output)
        if "://" in src:
            known[src] = Result.failed(
                job, "batch takes files and folders; derain a live feed with: streamderain URL OUT"
            )
        elif before and before.status == "done" and before.output == job.output and output.exists():
            known[src] = Result(**{**asdict(before), "status": "skipped"})
        elif output.exists() and before is None and not overwrite:
            known[src] = Result.failed(job, f"{job.output} exists (pass -y to overwrite)")
        else:
            jobs.append(job)
    return jobs, known


# ---------------------------------------------------------------------------------------------
# Running: local processes, or Ray actors.


def run_local(
    jobs: list[Job],
    options: dict,
    report: Callable[[Result], None],
    workers: int | None = None,
    threads: int | None = None,
) -> bool:
    """Derain ``jobs`` in local worker processes; ``report`` gets each result as it comes.

    A worker per GPU, or one per ``CPU_THREADS`` cores on a CPU, each with ``cores / workers``
    threads. A worker process that dies takes its pool down: the inputs in flight get one more
    try in a fresh pool, and fail if they take it down again. Returns whether Ctrl-C stopped
    the run.
    """
    devices = worker_devices(options["device"], workers)
    if devices[0] == "cpu":
        threads = threads or max(1, len(os.sched_getaffinity(0)) // len(devices))
    log.info("%d worker process(es) on %s", len(devices), ", ".join(sorted(set(devices))))
    todo, crashes, stopping = deque(jobs), Counter(), False
    context = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
    while todo:
        queue = context.SimpleQueue()
        for device in devices:
            queue.put(device)
        with ProcessPoolExecutor(
            len(devices), context, initializer=_start_process, initargs=(options, queue, threads)
        ) as pool:
            running: dict[Future, Job] = {}
            broken = False
            while running or (todo and not broken):
                while todo and not broken and len(running) < len(devices):
                    job = todo.popleft()
                    running[pool.submit(_derain_in_process, job)] = job
                try:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    if stopping:
                        for job in running.values():  # ours to replace on the next run
                            report(Result.failed(job, "aborted; the output holds what was done"))
                        pool.shutdown(wait=False, cancel_futures=True)
                        raise
                    stopping = True
                    todo.clear()
                    log.warning("stopping: finishing the files in progress (Ctrl-C again to abort)")
                    continue
                for future in finished:
                    job = running.pop(future)
                    try:
                        if not _check(future.result(), report):
                            stopping = True  # the worker was interrupted: stop, as on Ctrl-C
                            todo.clear()
                    except BrokenProcessPool:
                        broken = True
                        crashes[job] += 1
                        if stopping:
                            continue  # not recorded: the next run does it
                        if crashes[job] < 2:
                            todo.appendleft(job)
                        else:
                            report(Result.failed(job, "its worker process died on it, twice"))
            if broken and todo:
                log.warning("a worker process died; starting a fresh pool")
    return stopping


def run_ray(
    jobs: list[Job],
    options: dict,
    report: Callable[[Result], None],
    address: str = "local",
    workers: int | None = None,
    threads: int | None = None,
) -> bool:
    """Derain ``jobs`` on Ray actors, each holding a model, dispatched by ``ActorPool``.

    ``address``: ``local`` (or ``""``) starts Ray on this machine, bound to 127.0.0.1; ``auto``
    joins the cluster this machine belongs to; ``ray://host:10001`` connects a Ray client. One
    actor per GPU (``num_gpus=1``), or on CPUs one per ``threads`` cores (default up to
    ``CPU_THREADS``). Inputs and outputs are paths that every node must see (shared storage).
    Returns whether Ctrl-C stopped the run (at once: the files in flight are redone by the next
    run).
    """
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise StreamDerainError(
            "--ray needs Ray, which is not installed (pip install 'streamderain[ray]')"
        ) from None
    connected = _connect(ray, address)
    try:
        resources = ray.cluster_resources()
        device = options["device"]
        gpu = device != "cpu" and resources.get("GPU", 0) >= 1
        if device.startswith("cuda") and not gpu:
            raise StreamDerainError(f"--device {device}: the Ray cluster has no GPU")
        threads = None if gpu else threads or min(CPU_THREADS, int(resources.get("CPU", 1)))
        per_actor = {"num_cpus": 1, "num_gpus": 1} if gpu else {"num_cpus": threads}
        n = workers or int(resources["GPU"] if gpu else resources.get("CPU", 1) // threads)
        log.info("%d Ray actor(s), each with %s", max(n, 1), per_actor)
        actor = ray.remote(Worker).options(**per_actor, max_restarts=0)
        pool = ActorPool(
            [actor.remote(options, "cuda" if gpu else "cpu", threads) for _ in range(max(n, 1))]
        )
        for job in jobs:
            pool.submit(lambda a, job: a.derain.remote(job), job)
        left = {job.input: job for job in jobs}
        while pool.has_next():
            try:
                result = pool.get_next_unordered()
            except ray.exceptions.RayActorError as exc:
                log.warning("a Ray worker died: %s", _one_line(exc))
                continue
            left.pop(result.input, None)
            _check(result, report)
        for job in left.values():  # every actor died before these ran
            report(Result.failed(job, "its Ray worker died"))
        return False
    except KeyboardInterrupt:
        return True
    except ray.exceptions.RayError as exc:
        raise StreamDerainError(f"Ray: {_one_line(exc)}") from exc
    finally:
        if connected:
            ray.shutdown()


def _connect(ray, address: str) -> bool:
    """Start or join Ray unless this process already has; returns whether it did."""
    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "include_dashboard": False}
    try:
        if address in ("", "local"):
            ray.init(num_cpus=len(os.sched_getaffinity(0)), _node_ip_address="127.0.0.1", **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise StreamDerainError(
            f"cannot start or join Ray at {address!r}: {_one_line(exc)}"
        ) from None
    return True


def _check(result: Result, report: Callable[[Result], None]) -> bool:
    """Report a result; False if the worker, interrupted, refused the job."""
    if result.status == "fatal":  # the model or device cannot work: every input would fail
        raise StreamDerainError(result.reason)
    if result.status == "cancelled":
        return False
    report(result)
    return True


def worker_devices(device: str, workers: int | None) -> list[str]:
    """One device per local worker: a worker per GPU, or one per ``CPU_THREADS`` cores."""
    from streamderain.runner import pick_device

    picked = pick_device(device)
    if picked.type == "cpu":
        return ["cpu"] * (workers or max(1, len(os.sched_getaffinity(0)) // CPU_THREADS))
    if picked.index is not None:  # cuda:N: every worker on that GPU
        return [str(picked)] * (workers or 1)
    import torch

    count = torch.cuda.device_count()
    return [f"cuda:{i % count}" for i in range(workers or count)]


# ---------------------------------------------------------------------------------------------
# The command.


class RunOptionsCommand(click.Command):
    """Takes ``streamderain run``'s options named in ``borrowed`` as they are, when first asked.

    ``cli`` imports this module at its end, so the options are looked up only once both modules
    are loaded.
    """

    borrowed: tuple[str, ...] = RUN_OPTIONS

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not any(p.name == "model" for p in self.params):
            from streamderain.cli import run

            self.params += [p for p in run.params if p.name in self.borrowed]
        return super().get_params(ctx)


@click.command(cls=RunOptionsCommand)
@click.argument("inputs", metavar="INPUTS...", nargs=-1)
@click.option(
    "-o",
    "--out-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the outputs (named as their inputs) and manifest.jsonl.",
)
@click.option(
    "--list",
    "list_file",
    type=click.Path(dir_okay=False),
    help="A file naming one input per line (# comments).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel workers, each holding the model [default: one per GPU, or one per 4 CPU "
    "cores; on Ray one actor per GPU, or per --threads CPUs].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads per worker [default: cores / workers; up to 4 per Ray actor].",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Run on Ray: local (default: start one here), auto, or ray://HOST:10001.",
)
def batch(
    inputs: tuple[str, ...],
    out_dir: Path,
    list_file: str | None,
    workers: int | None,
    threads: int | None,
    ray_address: str | None,
    **options,
) -> None:
    """Derain many INPUTS (files, folders of images, globs) into --out-dir.

    \b
    Outputs take their input's name; OUT_DIR/manifest.jsonl records each input's outcome, and
    a re-run skips the inputs done. One bad input is reported and skipped; the exit status is
    1 if any failed. Ctrl-C: the files in progress are finished (again: stop at once).
    """
    from streamderain.cli import _setup_logging, _validate, one_line_errors

    quiet, verbose = options.pop("quiet"), options.pop("verbose")
    overwrite = options.pop("overwrite")
    _setup_logging(verbose, quiet)
    with one_line_errors(verbose):
        o = options
        _validate(o["batch"], o["crf"], o["start"], o["duration"], o["max_frames"], o["tile"], 0)
        if ray_address is not None and Path(ray_address).exists():
            raise StreamDerainError(
                f"--ray {ray_address}: that is a path; put --ray after the inputs (or --ray local)"
            )
        srcs = expand_inputs(inputs, list_file)
        if not srcs:
            raise StreamDerainError("no inputs (give paths, globs or --list FILE)")
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs, results = plan(srcs, out_dir, overwrite)
        interrupted = _run(jobs, results, out_dir, options, quiet, workers, threads, ray_address)
    failed = any(r.status == "failed" for r in results.values())
    if not quiet or failed:
        shown = [results[s] for s in srcs if s in results]
        click.echo(summary_table(shown, failed_only=quiet), err=True)
    if interrupted:
        click.echo(f"streamderain: interrupted; run again to finish ({MANIFEST})", err=True)
        sys.exit(130)
    sys.exit(1 if failed else 0)


def _run(
    jobs: list[Job],
    results: dict[str, Result],
    out_dir: Path,
    options: dict,
    quiet: bool,
    workers: int | None,
    threads: int | None,
    ray_address: str | None,
) -> bool:
    """Run the jobs with a progress bar, recording each outcome in ``results`` and the manifest."""
    from tqdm import tqdm

    skipped = sum(r.status == "skipped" for r in results.values())
    if skipped and not quiet:
        click.echo(f"streamderain: {skipped} input(s) done in an earlier run: skipped", err=True)
    with open(out_dir / MANIFEST, "a") as manifest:

        def report(result: Result) -> None:
            results[result.input] = result
            manifest.write(json.dumps(asdict(result)) + "\n")
            manifest.flush()
            bar.update(1)
            if not quiet:
                text = f"{result.status}: {result.input}"
                text += f" ({result.frames} frames, {result.fps:.2f} fps)" if result.frames else ""
                text += f": {_why(result)}" if result.reason else ""
                bar.write(f"streamderain: {text}", file=sys.stderr)

        for result in results.values():
            if result.status == "failed":
                manifest.write(json.dumps(asdict(result)) + "\n")
        show = not quiet and sys.stderr.isatty()
        with tqdm(total=len(jobs), unit="file", disable=not show, dynamic_ncols=True) as bar:
            if not jobs:
                return False
            if ray_address is not None:
                return run_ray(jobs, options, report, ray_address, workers, threads)
            return run_local(jobs, options, report, workers, threads)


def summary_table(results: list[Result], failed_only: bool = False) -> str:
    """Input, status, frames, and fps or the reason: one row per input."""
    rows = [("input", "status", "frames", "fps / reason")]
    for r in results:
        if failed_only and r.status != "failed":
            continue
        detail = _why(r) if r.status == "failed" else f"{r.fps:.2f}"
        rows.append((_short(r.input), r.status, str(r.frames) if r.frames else "", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[3]]).rstrip()
        for row in rows
    )


def _why(result: Result) -> str:
    """The reason, less the input's name it usually starts with."""
    return result.reason.removeprefix(f"{result.input}: ")


def _short(path: str) -> str:
    """A path relative to the current folder when it is below it."""
    relative = os.path.relpath(path) if "://" not in path else path
    return path if relative.startswith("..") else relative
