"""Live feeds: a list of cameras read from TOML, and the worker that derains one until stopped.

A feed's worker records to a folder of Matroska segments (readable even when cut short, and
on disk but for their last second: :func:`~streamderain.writers.muxer_options`) or publishes
to a live URL. If its process dies, the worker started in its place first recovers
the segment the dead one left, then goes on into a new one (``streamderain.cluster`` runs
feeds on restartable Ray actors).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from streamderain.errors import StreamDerainError, reason
from streamderain.options import MODEL_OPTIONS, RunOptions
from streamderain.targets import VIDEO_SUFFIXES, live_target_format, lock_partial, partial_path
from streamderain.workers import Worker
from training.data import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".mkv"


@dataclass(frozen=True)
class Feed:
    """A camera to derain: ``output`` is a folder of segment files or a live URL.

    ``options`` are this feed's own run options (``reconnect_timeout``, ``rtsp_transport``,
    ...), over the command's."""

    name: str
    source: str
    output: str
    options: tuple[tuple[str, Any], ...] = ()


FEED_KEYS = ("name", "source", "output")
# What one feed may set for itself: how its source is read and its output written (the model
# is the command's, loaded once per actor).
PER_FEED_OPTIONS = RunOptions.names() - MODEL_OPTIONS


def read_feeds(path: str | Path) -> list[Feed]:
    """The ``[[feed]]`` tables of a TOML file: name, source, output and any run option (with
    underscores: ``reconnect_timeout = 0``); names are unique, and so are live outputs. Local
    paths are taken from the current folder (a Ray actor's may be another) and ``~`` is the
    home folder."""
    from training.config import read_toml

    try:
        document = read_toml(path)
    except OSError as exc:
        raise StreamDerainError(f"{path}: {reason(exc)}") from None
    except ValueError as exc:  # says which file
        raise StreamDerainError(str(exc)) from None
    if stray := sorted(set(document) - {"feed"}):
        raise StreamDerainError(
            f"{path}: unknown {', '.join(stray)} outside the [[feed]] tables (a feed's options go "
            "in its table; the model's on the command line)"
        )
    tables = document.get("feed", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise StreamDerainError(f"{path}: write each feed as a [[feed]] table (two brackets)")
    feeds = [_feed(table, f"{path}: feed {i + 1}") for i, table in enumerate(tables)]
    if not feeds:
        raise StreamDerainError(f"{path}: no [[feed]] tables")
    for what in ("name", "output"):
        seen: set[str] = set()
        for feed in feeds:
            value = getattr(feed, what)
            key = value.rstrip("/") if what == "output" else value  # rtsp://r/x/ is rtsp://r/x
            if key in seen and (what == "name" or live_target_format(value)):
                raise StreamDerainError(f"{path}: two feeds have the {what} {value!r}")
            seen.add(key)
    return feeds


def _feed(table: dict[str, Any], where: str) -> Feed:
    """One ``[[feed]]`` table, checked; ``where`` starts its messages."""
    for key in FEED_KEYS:
        value = table.get(key)
        if value is None or value == "":
            raise StreamDerainError(f"{where} has no {key}")
        if not isinstance(value, str):
            raise StreamDerainError(f"{where}: {key} must be text in quotes, got {value!r}")
    extra = {k: v for k, v in table.items() if k not in FEED_KEYS}
    if model := sorted(set(extra) & MODEL_OPTIONS):
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in model)
        raise StreamDerainError(
            f"{where}: {', '.join(model)} is the command's, one model for every feed ({flags})"
        )
    if unknown := sorted(set(extra) - PER_FEED_OPTIONS):
        raise StreamDerainError(f"{where}: unknown option {', '.join(unknown)}")
    try:
        RunOptions.of(**extra)
    except (StreamDerainError, TypeError) as exc:
        raise StreamDerainError(f"{where}: {reason(exc)}") from None
    name, source, output = (table[k] for k in FEED_KEYS)
    if not name.strip() or any(c in name for c in "/\\\0") or name.startswith("."):
        raise StreamDerainError(f"{where}: name {name!r} cannot name a segment")
    if not live_target_format(output):
        if Path(output).suffix.lower() in VIDEO_SUFFIXES | set(IMAGE_SUFFIXES):
            raise StreamDerainError(
                f"{where}: output {output!r} is a folder of segments ({name}-DATE-TIME.mkv); "
                "name a folder"
            )
        output = os.path.abspath(os.path.expanduser(output))
    if "://" not in source and not source.isdigit():
        source = os.path.abspath(os.path.expanduser(source))
    return Feed(name, source, output, tuple(sorted(extra.items())))


def recover_segments(folder: Path, name: str) -> list[Path]:
    """Rename the segments a killed process left half-written into place; returns them."""
    recovered = []
    # this feed's own: "cam" must not take "cam-2"'s segment, which may be in progress
    ours = re.compile(rf"\.{re.escape(name)}-\d{{8}}-\d{{6}}\.partial{re.escape(SEGMENT_SUFFIX)}")
    for partial in sorted(p for p in folder.iterdir() if ours.fullmatch(p.name)):
        try:
            held = lock_partial(partial)
        except BlockingIOError:
            continue  # another process is writing it: its feed is still running
        try:
            if not partial.stat().st_size:  # killed before its first frame: nothing to keep
                partial.unlink()
                continue
            name_done = partial.name[1:].replace(f".partial{SEGMENT_SUFFIX}", SEGMENT_SUFFIX)
            target = folder / name_done
            if partial_path(target) == partial and not target.exists():
                os.replace(partial, target)
                recovered.append(target)
                log.warning("feed %s: recovered %s, cut short when its process died", name, target)
        finally:
            if held is not None:
                os.close(held)
    return recovered


class FeedWorker(Worker):
    """A batch worker (the model, loaded once) that derains one live feed until stopped."""

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
        stats = self.derain_video(feed.source, target, **dict(feed.options))
        return {"feed": feed.name, "output": target, "frames": stats.frames}

    def stop(self) -> None:
        """End the feed cleanly: its segment is finalized."""
        self.interrupt()
