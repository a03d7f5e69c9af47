"""The ``streamderain`` command line: the top floor, thin over the API, batch and feeds.

Every command takes the same run options (one decorator), turns them into a
:class:`~streamderain.options.RunOptions`, and reports any failure as one line.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import click

from streamderain import flags
from streamderain.errors import StreamDerainError, UsageError
from streamderain.options import RunOptions

#: a feed's camera is waited for however long it is away (a single run gives up after 30 s)
FEEDS_DEFAULTS = {"reconnect_timeout": 0.0}


class _DefaultGroup(click.Group):
    """``streamderain IN OUT`` runs the main job; ``streamderain sample ...`` a subcommand."""

    default = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default, *args]
        elif args and Path(args[0]).exists():  # a folder named "sample" silently ran the command
            note = f"running the command {args[0]!r}; to derain the file, write ./{args[0]}"
            click.echo(f"streamderain: {note}", err=True)
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamderain")
def main() -> None:
    """Remove rain from videos and live feeds.

    \b
      streamderain INPUT OUTPUT [OPTIONS]   derain a video (see: streamderain run --help)
      streamderain sample PATH              write a short rainy clip to try it on
      streamderain batch INPUTS... -o DIR   derain many files (locally or on Ray)
      streamderain feeds FEEDS.toml         derain live feeds on Ray
      streamderain models                   the bundled models, what each is for
    """
    # SIGTERM (a service manager's stop, kill) is Ctrl-C from the start, also while the model
    # loads: the same message, exit status and finished output.
    signal.signal(signal.SIGTERM, signal.default_int_handler)


@main.command("run")
@click.argument("src", metavar="INPUT", required=False)
@click.argument("dst", metavar="OUTPUT", required=False)
@flags.run_options("model", "encode", "range")
@click.option(
    "--camera",
    type=click.IntRange(min=0),
    default=None,
    help="Read local camera N (/dev/videoN, v4l2) instead of INPUT.",
)
@flags.run_options("live", "overwrite", "verbosity")
def run(
    src: str | None,
    dst: str | None,
    camera: int | None,
    overwrite: bool,
    quiet: bool,
    verbose: bool,
    **params: Any,
) -> None:
    """Derain INPUT (video file, stream URL, camera or image folder) into OUTPUT.

    OUTPUT is a file (mp4, mov, mkv, webm), a folder of PNG frames, or a live URL to publish
    to (rtsp://, rtmp://, udp://, srt://).
    """
    flags.setup_logging(verbose, quiet)
    with flags.one_line_errors(verbose):
        if camera is not None:
            if dst is not None:
                raise UsageError(f"give either INPUT or --camera {camera}, not both")
            dst, src = src, f"/dev/video{camera}"
        if src is None or dst is None:
            raise UsageError("give INPUT and OUTPUT (or --camera N and OUTPUT)")
        options = flags.options_from(params)
        flags.check_paths(src, dst, overwrite)
        stats = _derain(src, dst, options, quiet)
    if stats.interrupted:
        n = stats.frames
        done = f"{dst} holds the {n} frames done" if n else f"nothing written to {dst}"
        click.echo(f"streamderain: interrupted: {done}", err=True)
        if n and not quiet:  # a live run's usual end: its drops and reconnects are said too
            click.echo(f"streamderain: {dst}: {stats.summary()}", err=True)
        sys.exit(130)
    if not quiet:
        click.echo(f"streamderain: {dst}: {stats.summary()}", err=True)


def _derain(src: str, dst: str, options: RunOptions, quiet: bool):
    """``derain_video`` with a progress bar, and Ctrl-C or SIGTERM finishing the output."""
    from tqdm import tqdm

    from streamderain.api import derain_video
    from streamderain.frames import expected_frames

    bar = None
    signals = flags.RunSignals()

    def on_start(pipeline, decoder) -> None:
        nonlocal bar
        total = expected_frames(decoder.info, decoder.start, decoder.end, options.decode.max_frames)
        show = not quiet and sys.stderr.isatty()
        bar = tqdm(total=total, unit="frame", disable=not show, dynamic_ncols=True)
        signals.pipeline = pipeline

    try:
        return derain_video(
            src,
            dst,
            options,
            on_frame=lambda n: bar.update(n) if bar is not None else None,
            on_start=on_start,
            stop=signals.stop,
        )
    except KeyboardInterrupt:  # the first Ctrl-C, before the pipeline ran: nothing written
        if not signals.stop.is_set():
            raise
        from streamderain.pipeline import Stats

        return Stats(interrupted=True)
    finally:
        if bar is not None:
            bar.close()


@main.command()
def models() -> None:
    """List the bundled models: size, what each is for, how it was trained and its scores."""
    import torch

    from streamderain.runner import pick_precision
    from training import bundled_models, load_model
    from training.quantize import int8_models
    from training.route import AUTO, HEAVY_MODEL, LIGHT_MODEL, VIDEO_CHECK_EVERY

    with flags.one_line_errors(False):  # a damaged bundled file: one line, not a traceback
        here = pick_precision("auto", torch.device("cpu"), "auto", None) == "int8"
        default, shipped = ", the default on this CPU" if here else "", int8_models()
        eight_bits = f", also in 8 bits (--precision int8{default})"
        for name in bundled_models():
            model = load_model(name)
            meta, config = model.info.metadata, model.config
            int8 = eight_bits if name in shipped else ""
            click.echo(
                f"{name}: DCSFN, {config.channels} channels x {config.num_blocks} blocks, "
                f"{meta.get('num_params', 0):,} parameters{int8}"
            )
            for line in model.info.describe():
                click.echo(f"  {line}")
        click.echo(
            f"{AUTO} (default): {LIGHT_MODEL}, or {HEAVY_MODEL} where the rain leaves a veil "
            f"(both run on a video's first frames and every {VIDEO_CHECK_EVERY} frames after, "
            "on every picture of a folder)"
        )


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--rain", type=click.Choice(["light", "heavy"]), default="light", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("-y", "--overwrite", is_flag=True, help="Replace PATH if it exists.")
def sample(path: str, rain: str, seed: int, overwrite: bool) -> None:
    """Write a 3-second rainy street clip to PATH to try streamderain on."""
    from streamderain.sample import write_sample

    flags.setup_logging(False, False)
    with flags.one_line_errors(False):
        if Path(path).exists() and not overwrite:
            raise StreamDerainError(f"{path} exists (pass -y to overwrite)")
        n = write_sample(path, rain, seed)
    click.echo(f"streamderain: wrote {path} ({n} frames of {rain} rain)", err=True)


@main.command()
@click.argument("inputs", metavar="INPUTS...", nargs=-1)
@click.option(
    "-o",
    "--out-dir",
    required=True,
    type=click.Path(file_okay=False),
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
@flags.run_options("model", "encode", "range", "overwrite", "verbosity")
def batch(
    inputs: tuple[str, ...],
    out_dir: str,
    list_file: str | None,
    workers: int | None,
    threads: int | None,
    ray_address: str | None,
    overwrite: bool,
    quiet: bool,
    verbose: bool,
    **params: Any,
) -> None:
    """Derain many INPUTS (videos, pictures, folders, globs) into --out-dir.

    \b
    A folder of pictures is one input; any other folder, the videos and picture folders below
    it. Outputs take their input's name; OUT_DIR/manifest.jsonl records each input's outcome,
    and a re-run skips the inputs done. One bad input is reported and skipped; the exit status is
    1 if any failed. Ctrl-C: the files in progress are finished (again: stop at once).
    """
    from streamderain.jobs import MANIFEST, expand_inputs, plan, summary_table

    flags.setup_logging(verbose, quiet)
    with flags.one_line_errors(verbose):
        options = flags.options_from(params)
        if ray_address is not None and Path(ray_address).exists():
            raise UsageError(
                f"--ray {ray_address}: that is a path; put --ray after the inputs (or --ray local)"
            )
        if not out_dir.strip():  # Path("") is the current folder
            raise UsageError("--out-dir is empty; name a folder")
        out_dir = Path(out_dir)
        srcs = expand_inputs(inputs, list_file)
        if not srcs:
            raise UsageError("no inputs (give paths, globs or --list FILE)")
        out_dir.mkdir(parents=True, exist_ok=True)
        jobs, results = plan(srcs, out_dir, overwrite, options.shaping())
        interrupted = _run_batch(
            jobs, results, out_dir, options, quiet, workers, threads, ray_address
        )
    failed = any(r.status == "failed" for r in results.values())
    if not quiet or failed:
        shown = [results[s] for s in srcs if s in results]
        click.echo(summary_table(shown, failed_only=quiet), err=True)
    if interrupted:
        click.echo(f"streamderain: interrupted; run again to finish ({MANIFEST})", err=True)
        sys.exit(130)
    sys.exit(1 if failed else 0)


def _run_batch(
    jobs: list,
    results: dict,
    out_dir: Path,
    options: RunOptions,
    quiet: bool,
    workers: int | None,
    threads: int | None,
    ray_address: str | None,
) -> bool:
    """Run the jobs with a progress bar, recording each outcome in ``results`` and the manifest."""
    from tqdm import tqdm

    from streamderain.jobs import MANIFEST, Result, open_manifest, why

    skipped = sum(r.status == "skipped" for r in results.values())
    if skipped and not quiet:
        click.echo(f"streamderain: {skipped} input(s) done in an earlier run: skipped", err=True)
    with open_manifest(out_dir / MANIFEST) as manifest:

        def report(result: Result) -> None:
            results[result.input] = result
            manifest.write(result.to_json() + "\n")
            manifest.flush()
            bar.update(1)
            if not quiet:
                text = f"{result.status}: {result.input}"
                text += f" ({result.frames} frames, {result.fps:.2f} fps)" if result.frames else ""
                text += f": {why(result)}" if result.reason else ""
                bar.write(f"streamderain: {text}", file=sys.stderr)

        show = not quiet and sys.stderr.isatty()
        with tqdm(total=len(jobs), unit="file", disable=not show, dynamic_ncols=True) as bar:
            if not jobs:
                return False
            if ray_address is not None:
                from streamderain.cluster import run_ray

                return run_ray(jobs, options, report, ray_address, workers, threads)
            from streamderain.workers import run_local

            return run_local(jobs, options, report, workers, threads)


@main.command(context_settings={"default_map": FEEDS_DEFAULTS})
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
@flags.run_options("model", "encode", "range", "live", "verbosity")
def feeds(
    feeds_file: str,
    threads: int | None,
    per_gpu: int,
    ray_address: str,
    quiet: bool,
    verbose: bool,
    **params: Any,
) -> None:
    """Derain the live feeds listed in FEEDS.toml, each on a Ray actor restarted if it dies.

    \b
    FEEDS.toml holds [[feed]] tables: name, source (a URL or camera) and output (a folder for
    NAME-TIME.mkv segments, or a URL to publish to), and any run option for that feed alone
    (reconnect_timeout = 60, rtsp_transport = "udp", ...). A feed reconnects forever unless
    --reconnect-timeout (or its own) says otherwise. Runs until Ctrl-C, which stops every feed
    and closes its segment.
    """
    from streamderain.cluster import run_feeds
    from streamderain.feeds import read_feeds

    flags.setup_logging(verbose, quiet)
    with flags.one_line_errors(verbose):
        options = flags.options_from(params)
        try:
            ended = run_feeds(read_feeds(feeds_file), options, ray_address, threads, per_gpu)
        except KeyboardInterrupt:
            click.echo("streamderain: feeds stopped", err=True)
            sys.exit(130)
    sys.exit(1 if any("error" in o for o in ended) else 0)  # each said as it ended
