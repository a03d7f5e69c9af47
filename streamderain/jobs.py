"""A batch's plan: which input goes to which output, and the manifest of what is done.

The driver appends each outcome to ``OUT_DIR/manifest.jsonl`` as it comes back, so a re-run
skips what is already done.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from glob import glob
from pathlib import Path
from typing import Any, TextIO

from streamderain.errors import StreamDerainError, reason
from streamderain.pictures import folder_pictures
from streamderain.targets import CONTAINERS, VIDEO_SUFFIXES
from training.data import IMAGE_SUFFIXES, natural_key

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class Job:
    """One input to derain and where its output goes (absolute paths).

    ``size`` and ``mtime`` tell this input from another file later found at the same path
    (for a folder of pictures: all its pictures' sizes, and the latest change among them);
    ``settings``, the options that shape its output (:meth:`RunOptions.shaping`)."""

    input: str
    output: str
    size: int = 0
    mtime: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def of(cls, src: str, output: Path, settings: dict[str, Any] | None = None) -> Job:
        path, settings = Path(src), settings or {}
        if "://" in src or not path.exists():
            return cls(src, str(output), settings=settings)
        if not path.is_dir():
            stat = path.stat()
            return cls(src, str(output), stat.st_size, stat.st_mtime, settings)
        pictures = [p.stat() for p in path.iterdir() if p.is_file()]
        latest = max([path.stat().st_mtime, *(st.st_mtime for st in pictures)])  # or one removed
        return cls(src, str(output), sum(st.st_size for st in pictures), latest, settings)


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
    input_size: int = 0
    input_mtime: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)  # none in records before 2026-12-06

    @classmethod
    def of(cls, job: Job, status: str, reason: str = "", **done: Any) -> Result:
        return cls(
            job.input,
            job.output,
            status,
            reason,
            **done,
            input_size=job.size,
            input_mtime=job.mtime,
            settings=job.settings,
        )

    @classmethod
    def failed(cls, job: Job, reason: str) -> Result:
        return cls.of(job, "failed", reason)

    def is_done_from(self, job: Job) -> bool:
        """This record says ``job``'s very input (same path, size and time) made its output, with
        the same options (a record that names none is taken at its word)."""
        return (
            self.status == "done"
            and (self.input, self.output) == (job.input, job.output)
            and (self.input_size, self.input_mtime) == (job.size, job.mtime)
            and (not self.settings or self.settings == job.settings)
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def expand_inputs(items: Iterable[str], list_file: str | Path | None = None) -> list[str]:
    """Paths and globs (``*``, ``?``, ``[...]``, ``**``), plus a list file's lines, in order,
    each once; a path that exists is taken as it is, whatever characters it holds. A list file
    names one input per line; blank lines and ``#`` comments are skipped. A folder is one
    input where it holds pictures, else what it holds (:func:`folder_inputs`)."""
    items = list(items)
    if list_file is not None:
        try:
            lines = Path(list_file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise StreamDerainError(f"{list_file}: cannot read the list ({exc})") from None
        items += [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    found: dict[str, str] = {}
    for item in items:  # a name that exists is itself (the shell expanded "clip [1].mp4")
        if "://" not in item and any(c in item for c in "*?[") and not os.path.exists(item):
            matches = sorted(glob(item, recursive=True))
            if not matches:
                log.warning("%s matches nothing", item)
        else:
            matches = [item]
        for m in matches:
            for one in [m] if "://" in m else folder_inputs(Path(os.path.abspath(m))):
                # one file named through a link too is done once
                found.setdefault(str(one) if "://" in m else os.path.realpath(one), str(one))
    return list(found.values())


def folder_inputs(path: Path) -> list[Path]:
    """A folder of pictures is one input, a sequence; any other folder (a camera's day of
    clips, ``day1/cam1.mp4``, or a folder of sequences) stands for the videos and the folders of
    pictures below it, in natural order. Hidden names (an unfinished output, ``.partial``) are
    left out, and so is a folder that cannot be read (a drive's ``lost+found``) or is reached
    again through a link; a folder with none of either stays itself, to be reported."""
    if not path.is_dir():
        return [path]
    return _inputs_below(path, set()) or [path]


def _inputs_below(folder: Path, seen: set[str]) -> list[Path]:
    seen.add(os.path.realpath(folder))
    try:
        pictures = folder_pictures(folder)
        entries = [e for e in sorted(folder.iterdir(), key=natural_key) if e.name[0] != "."]
    except OSError as exc:
        log.warning("%s: cannot be read (%s); left out", folder, reason(exc))
        return []
    videos = [e for e in entries if e.suffix.lower() in VIDEO_SUFFIXES and e.is_file()]
    if pictures and not videos:
        return [folder]
    if pictures:  # one thumbnail made a day of clips a sequence of one picture, its clips unsaid
        log.warning(
            "%s: pictures beside its videos left out (%d; a folder of their own is a sequence)",
            folder,
            len(pictures),
        )
    found: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            if os.path.realpath(entry) not in seen:
                found += _inputs_below(entry, seen)
        elif entry.suffix.lower() in VIDEO_SUFFIXES:
            found.append(entry)
    return found


def open_manifest(path: Path) -> TextIO:
    """The manifest, to append records to: a last line torn by a kill is ended first, so that
    it does not swallow the next record."""
    torn = False
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as existing:
        if existing.seek(0, os.SEEK_END):
            existing.seek(-1, os.SEEK_END)
            torn = existing.read(1) != b"\n"
    manifest = open(path, "a")
    if torn:
        manifest.write("\n")
    return manifest


def read_manifest(path: Path) -> dict[str, Result]:
    """The latest outcome recorded for each output (a torn last line is ignored)."""
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
        records[record.output] = record
    return records


def output_paths(inputs: list[str], out_dir: Path) -> dict[str, Path]:
    """Where each input's output goes: its path below the inputs' common folder, mirrored
    under ``out_dir``, so ``a/clip.mp4`` and ``b/clip.mp4`` do not collide (inputs from one
    folder land directly in ``out_dir``).

    A video in a container the encoder does not write (a camera's ``.avi``, ``.ts``, ``.mts``)
    comes out as Matroska, which takes its codecs and sound: ``cam.avi`` as ``cam.mkv``, or
    ``cam.avi.mkv`` where another input already comes out as ``cam.mkv``."""
    local = [Path(s) for s in inputs if "://" not in s]
    root = Path(os.path.commonpath([str(p.parent) for p in local])) if local else None
    mirrored = {
        s: out_dir / (Path(s).relative_to(root) if root and "://" not in s else Path(s).name)
        for s in inputs
    }
    remap = sorted(s for s in mirrored if _needs_matroska(s))
    taken = {path for s, path in mirrored.items() if s not in remap}
    for s in remap:
        path = mirrored[s]
        mkv = path.with_suffix(".mkv")
        mirrored[s] = path.with_name(path.name + ".mkv") if mkv in taken else mkv
        taken.add(mirrored[s])
    return mirrored


def _needs_matroska(source: str) -> bool:
    """A video file whose container the encoder does not write (not a feed, folder or picture),
    or whose name has no suffix (its output was taken for a folder of frames)."""
    suffix = Path(source).suffix.lower()
    return (
        "://" not in source
        and suffix not in CONTAINERS
        and suffix not in IMAGE_SUFFIXES
        and not Path(source).is_dir()
    )


def plan(
    inputs: list[str],
    out_dir: Path,
    overwrite: bool = False,
    settings: dict[str, Any] | None = None,
) -> tuple[list[Job], dict[str, Result]]:
    """The jobs to run, and the outcome of each input that needs no run (skipped or refused).

    An input the manifest records as done keeps that output, wherever this batch's other inputs
    would place it. An input whose output the manifest records as made from this very input
    (path, size and modification time) with these ``settings`` (:meth:`RunOptions.shaping`),
    and which exists, is skipped; ``overwrite`` redoes it. An output the manifest records as
    this input's otherwise (failed, cut short, changed since, made with other settings) is
    redone. An existing output made from another input (yesterday's ``cam1.mp4`` of another
    folder), or one the manifest does not know (the user's), is replaced only with
    ``overwrite``.
    """
    out_dir = out_dir.resolve()
    manifest = read_manifest(out_dir / MANIFEST)
    # a glob over OUT_DIR (or its parent): it, the outputs of an earlier batch and its manifest
    # are no inputs
    ours = {*manifest, str(out_dir / MANIFEST), str(out_dir)}
    earlier = {s for s in inputs if "://" not in s and str(Path(s).resolve()) in ours}
    if earlier:
        log.info("left out %d earlier outputs: %s", len(earlier), ", ".join(sorted(earlier)))
    inputs = [s for s in inputs if s not in earlier]
    if not inputs:
        raise StreamDerainError(f"no inputs: all {len(earlier)} are outputs of an earlier batch")
    jobs: list[Job] = []
    known: dict[str, Result] = {}
    owner: dict[Path, str] = {}
    # an input done in an earlier batch keeps its output: alone, or with other inputs, its
    # mirrored path differs (``out/a/x.mp4`` then ``out/x.mp4``), and it was done again there
    done = {r.input: Path(r.output) for r in manifest.values() if r.status == "done"}
    mirrored = output_paths(inputs, out_dir)
    mapping = dict(mirrored)
    for src in mapping:  # (a manifest copied with its folder names the old folder's outputs)
        kept = done.get(src)
        if kept and kept.is_relative_to(out_dir) and kept.exists():
            # unless another input of this batch mirrors there: it moves to its own place
            if kept == mirrored[src] or kept not in mirrored.values():
                mapping[src] = kept
    for src, output in mapping.items():
        job = Job.of(src, output, settings)
        before = manifest.get(job.output)
        # the output of an input of this batch that goes elsewhere now: this batch's to replace
        moved = before is not None and mapping.get(before.input, output) != output
        if output in owner:
            known[src] = Result.failed(job, f"{_short(owner[output])} has the same output name")
        elif "://" not in src and Path(src).resolve() == output:
            known[src] = Result.failed(job, "output is the input; choose another --out-dir")
        elif "://" in src:
            known[src] = Result.failed(
                job, "batch takes files and folders; derain a live feed with: streamderain URL OUT"
            )
        elif before and before.is_done_from(job) and output.exists() and not overwrite:
            known[src] = Result(**{**asdict(before), "status": "skipped"})
        elif before and before.input != src and output.exists() and not overwrite and not moved:
            known[src] = Result.failed(
                job, f"{job.output} holds {_short(before.input)}'s output (pass -y to overwrite)"
            )
        elif output.exists() and before is None and not overwrite and not _empty_folder(output):
            known[src] = Result.failed(job, f"{job.output} exists (pass -y to overwrite)")
        else:
            jobs.append(job)
        if src not in known or known[src].status == "skipped":
            owner.setdefault(output, src)
    return jobs, known


def _empty_folder(path: Path) -> bool:
    """A folder with nothing in it (a folder input's output, made before a run that was killed):
    no one's work to lose."""
    return path.is_dir() and not any(path.iterdir())


def summary_table(results: list[Result], failed_only: bool = False) -> str:
    """Input, status, frames, and fps or the reason: one row per input."""
    rows = [("input", "status", "frames", "fps / reason")]
    for r in results:
        if failed_only and r.status != "failed":
            continue
        detail = why(r) if r.status == "failed" else f"{r.fps:.2f}"
        rows.append((_short(r.input), r.status, str(r.frames) if r.frames else "", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[3]]).rstrip()
        for row in rows
    )


def why(result: Result) -> str:
    """The reason, less the input's name it usually starts with."""
    return result.reason.removeprefix(f"{result.input}: ")


def _short(path: str) -> str:
    """A path relative to the current folder when it is below it."""
    relative = os.path.relpath(path) if "://" not in path else path
    return path if relative.startswith("..") else relative
