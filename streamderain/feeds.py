"""``streamderain feeds``: live cameras on Ray, one actor per feed that comes back when it dies.

Each feed's actor holds a model and derains its camera until told to stop, reconnecting to the
camera forever. If the actor's process dies (a crash, the out-of-memory killer, its node going
away), Ray starts it again (``max_restarts=-1``) and calls ``run`` again (``max_task_retries``),
so the feed resumes by itself: into a new segment file when it records to a folder, after the
segment the dead process left is recovered (Matroska stays readable when cut short), or by
publishing again when its output is a live URL.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click

from streamderain.batch import RUN_OPTIONS, RunOptionsCommand, Worker, _connect, _one_line
from streamderain.encoder import live_target_format, partial_path
from streamderain.errors import StreamDerainError

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".mkv"


@dataclass(frozen=True)
class Feed:
    """A camera to derain: ``output`` is a folder of segment files or a live URL."""

    name: str
    source: str
    output: str


def read_feeds(path: str | Path) -> list[Feed]:
    """The ``[[feed]]`` tables (name, source, output) of a TOML file; names are unique."""
    from training.config import read_toml

    try:
        tables = read_toml(path).get("feed", [])
    except (OSError, ValueError) as exc:
        raise StreamDerainError(f"{path}: {_one_line(exc)}") from None
    feeds = []
    for i, table in enumerate(tables):
        missing = [k for k in ("name", "source", "output") if not table.get(k)]
        if missing:
            raise StreamDerainError(f"{path}: feed {i + 1} has no {', '.join(missing)}")
        feeds.append(Feed(str(table["name"]), str(table["source"]), str(table["output"])))
    names = [f.name for f in feeds]
    if not feeds:
        raise StreamDerainError(f"{path}: no [[feed]] tables")
    if len(set(names)) < len(names):
        raise StreamDerainError(f"{path}: feed names must be unique")
    return feeds


def recover_segments(folder: Path, name: str) -> list[Path]:
    """Rename the segments a killed process left half-written into place; returns them."""
    recovered = []
    for partial in sorted(folder.glob(f".{name}-*.partial{SEGMENT_SUFFIX}")):
        target = folder / partial.name[1:].replace(f".partial{SEGMENT_SUFFIX}", SEGMENT_SUFFIX)
        if partial_path(target) == partial and not target.exists():
            os.replace(partial, target)
            recovered.append(target)
            log.warning("feed %s: recovered %s, cut short when its process died", name, target)
    return recovered


class FeedWorker(Worker):
    """A batch worker (the model, loaded once) that derains one live feed until stopped."""

    def pid(self) -> int:
        return os.getpid()

    def run(self, feed: Feed) -> dict:
        """Derain ``feed`` until :meth:`stop`; what a restarted actor calls again to resume."""
        if self.setup_error:
            raise StreamDerainError(self.setup_error)
        if live_target_format(feed.output):
            target = feed.output
        else:
            folder = Path(feed.output)
            folder.mkdir(parents=True, exist_ok=True)
            recover_segments(folder, feed.name)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            target = str(folder / f"{feed.name}-{stamp}{SEGMENT_SUFFIX}")
        log.warning("feed %s: writing %s", feed.name, target)
        from streamderain import api

        call = {"on_start": self._started, **self.options}
        stats = api.derain_video(
            feed.source, target, runner=self.runner, reconnect_timeout=0, **call
        )
        return {"feed": feed.name, "output": target, "frames": stats.frames}

    def stop(self) -> None:
        """End the feed cleanly: its segment is finalized."""
        self.interrupt()

    def _started(self, pipeline, decoder) -> None:
        super()._started(pipeline, decoder)
        if self.stopping:  # stopped while it was still connecting
            pipeline.request_stop()


def run_feeds(
    feeds: list[Feed],
    options: dict,
    address: str = "local",
    threads: int | None = None,
    per_gpu: int = 1,
) -> list[dict]:
    """Run every feed on its own restartable Ray actor until they end or Ctrl-C stops them.

    On a cluster with GPUs, ``per_gpu`` feeds share one GPU (``num_gpus=1/per_gpu``); on CPUs
    each feed's actor takes ``threads`` cores (default 1).
    """
    try:
        import ray
    except ImportError:
        raise StreamDerainError(
            "feeds run on Ray, which is not installed (pip install 'streamderain[ray]')"
        ) from None
    connected = _connect(ray, address)
    try:
        gpu = options["device"] != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
        if options["device"].startswith("cuda") and not gpu:
            raise StreamDerainError(f"--device {options['device']}: the Ray cluster has no GPU")
        per_actor = {"num_cpus": 1, "num_gpus": 1 / per_gpu} if gpu else {"num_cpus": threads or 1}
        restartable = {"max_restarts": -1, "max_task_retries": -1, "max_concurrency": 2}
        actor = ray.remote(FeedWorker)
        actors = {
            f.name: actor.options(name=f"feed:{f.name}", **per_actor, **restartable).remote(
                options, "cuda" if gpu else "cpu", None if gpu else threads or 1
            )
            for f in feeds
        }
        runs = {actors[f.name].run.remote(f): f.name for f in feeds}
        log.warning("%d feed(s) running on Ray: %s", len(feeds), ", ".join(actors))
        return _wait(ray, runs, actors)
    except ray.exceptions.RayError as exc:
        raise StreamDerainError(f"Ray: {_one_line(exc)}") from exc
    finally:
        if connected:
            ray.shutdown()


def _wait(ray, runs: dict, actors: dict) -> list[dict]:
    """Collect each feed's end; on Ctrl-C, stop every feed and wait for its segment to close."""
    done: list[dict] = []
    pending = list(runs)
    try:
        while pending:
            finished, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in finished:
                done.append(_outcome(ray, ref, runs[ref]))
    except KeyboardInterrupt:
        log.warning("stopping %d feed(s)", len(pending))
        for ref in pending:
            actors[runs[ref]].stop.remote()
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            finished, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            done += [_outcome(ray, ref, runs[ref]) for ref in finished]
        raise
    return done


def _outcome(ray, ref, name: str) -> dict:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        return {"feed": name, "error": _one_line(exc.cause if exc.cause else exc)}


class _FeedsCommand(RunOptionsCommand):
    borrowed = tuple(name for name in RUN_OPTIONS if name != "overwrite")


@click.command(cls=_FeedsCommand)
@click.argument("feeds_file", metavar="FEEDS.toml", type=click.Path(dir_okay=False))
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads per feed's actor [default: 1].",
)
@click.option(
    "--per-gpu",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Feeds that share one GPU.",
)
@click.option(
    "--ray",
    "ray_address",
    default="local",
    show_default=True,
    metavar="ADDRESS",
    help="local (start Ray here), auto, or ray://HOST:10001.",
)
def feeds(feeds_file: str, threads: int | None, per_gpu: int, ray_address: str, **options) -> None:
    """Derain the live feeds listed in FEEDS.toml, each on a Ray actor restarted if it dies.

    \b
    FEEDS.toml holds [[feed]] tables: name, source (a URL or camera) and output (a folder for
    NAME-TIME.mkv segments, or a URL to publish to). Runs until Ctrl-C, which stops every feed
    and closes its segment.
    """
    from streamderain.cli import _setup_logging, _validate, one_line_errors

    quiet, verbose = options.pop("quiet"), options.pop("verbose")
    _setup_logging(verbose, quiet)
    with one_line_errors(verbose):
        o = options
        _validate(o["batch"], o["crf"], o["start"], o["duration"], o["max_frames"], o["tile"], 0)
        try:
            ended = run_feeds(read_feeds(feeds_file), options, ray_address, threads, per_gpu)
        except KeyboardInterrupt:
            click.echo("streamderain: feeds stopped", err=True)
            sys.exit(130)
    for outcome in ended:
        text = outcome.get("error") or f"{outcome['frames']} frames into {outcome['output']}"
        click.echo(f"streamderain: feed {outcome['feed']} ended: {text}", err=True)
    sys.exit(1 if any("error" in o for o in ended) else 0)
