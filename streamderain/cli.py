"""The ``streamderain`` command: a thin layer over :func:`streamderain.derain_video`."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from streamderain.errors import StreamDerainError

log = logging.getLogger("streamderain")


class _DefaultGroup(click.Group):
    """``streamderain IN OUT`` runs the main job; ``streamderain sample ...`` a subcommand."""

    default = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level, format="streamderain: %(levelname)s: %(message)s")


def _fail(message: str, verbose: bool, code: int = 1) -> None:
    if verbose:
        log.exception("details")
    click.echo(f"streamderain: error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def one_line_errors(verbose: bool) -> Iterator[None]:
    """Every failure inside ends the command with one line on stderr (``-v``: a traceback)."""
    from training import ModelLoadError

    try:
        yield
    except KeyboardInterrupt:
        _fail("aborted", verbose, 130)
    except (StreamDerainError, ModelLoadError) as exc:
        _fail(str(exc), verbose)
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed
        _fail(f"unexpected {type(exc).__name__}: {exc} (run with -v for details)", verbose, 2)


def _check_paths(src: str, dst: str, overwrite: bool) -> None:
    """Refuse anything that could lose the user's data, before any work starts."""
    if "://" in dst:
        return
    src_path, dst_path = Path(src), Path(dst)
    if "://" not in src and src_path.exists() and dst_path.exists():
        if src_path.resolve() == dst_path.resolve():
            raise StreamDerainError(f"{dst}: output is the input; choose another output name")
    parent = dst_path.parent if dst_path.parent != Path("") else Path(".")
    if not parent.is_dir():
        raise StreamDerainError(f"{dst}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise StreamDerainError(f"{dst}: folder {parent} is not writable")
    if dst_path.exists() and not overwrite:
        if sys.stdin.isatty() and sys.stderr.isatty():
            if click.confirm(f"{dst} exists. Overwrite?", default=False, err=True):
                return
        raise StreamDerainError(f"{dst} exists (pass -y to overwrite)")


@click.group(cls=_DefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="streamderain")
def main() -> None:
    """Remove rain from videos and live feeds.

    \b
      streamderain INPUT OUTPUT [OPTIONS]   derain a video (see: streamderain run --help)
      streamderain sample PATH              write a short rainy clip to try it on
    """


@main.command("run")
@click.argument("src", metavar="INPUT", required=False)
@click.argument("dst", metavar="OUTPUT", required=False)
@click.option("--model", default=None, help="Bundled model name or checkpoint path.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch", type=int, default=1, show_default=True, help="Frames per model call.")
@click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True
)
@click.option(
    "--codec", default=None, help="Video codec (default: H.264 for mp4/mov/mkv, VP9 for webm)."
)
@click.option(
    "--crf", type=int, default=None, help="Constant quality (default: visually lossless)."
)
@click.option("--preset", default=None, help="x264 preset (default: fast).")
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "openvino"]),
    default="auto",
    show_default=True,
    help="Inference backend; auto: OpenVINO for fp32 on a CPU (exact, faster), else PyTorch.",
)
@click.option(
    "--encoder",
    type=click.Choice(["pyav", "ffmpeg"]),
    default="pyav",
    show_default=True,
    help="pyav: PyAV's own FFmpeg; ffmpeg: an ffmpeg binary on PATH (for NVENC, VAAPI, ...).",
)
@click.option("-y", "--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option(
    "--compare",
    type=click.Choice(["side-by-side", "stacked"]),
    default=None,
    help="Write the input and the result together.",
)
@click.option("--start", type=float, default=None, help="Seconds to skip.")
@click.option("--duration", type=float, default=None, help="Seconds to process.")
@click.option("--max-frames", type=int, default=None, help="Frames to process at most.")
@click.option(
    "--tile",
    type=int,
    default=0,
    show_default=True,
    help="Process frames in tiles of at most this size (bounds memory; 0: off).",
)
@click.option(
    "--camera",
    type=int,
    default=None,
    help="Read local camera N (/dev/videoN, v4l2) instead of INPUT.",
)
@click.option(
    "--rtsp-transport",
    type=click.Choice(["tcp", "udp"]),
    default="tcp",
    show_default=True,
    help="RTSP input transport.",
)
@click.option(
    "--reconnect-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds a live source may stay lost before giving up (0: never).",
)
@click.option(
    "--live-drop/--no-live-drop",
    default=None,
    help="Drop old frames when the model is slower than a live source "
    "(default: on for live sources).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging; tracebacks on errors.")
def run(
    src: str | None,
    dst: str | None,
    model: str | None,
    device: str,
    batch: int,
    precision: str,
    codec: str | None,
    crf: int | None,
    preset: str | None,
    backend: str,
    encoder: str,
    overwrite: bool,
    compare: str | None,
    start: float | None,
    duration: float | None,
    max_frames: int | None,
    tile: int,
    camera: int | None,
    rtsp_transport: str,
    reconnect_timeout: float,
    live_drop: bool | None,
    quiet: bool,
    verbose: bool,
) -> None:
    """Derain INPUT (video file, stream URL, camera or image folder) into OUTPUT.

    OUTPUT is a file (mp4, mov, mkv, webm), a folder of PNG frames, or a live URL to publish
    to (rtsp://, rtmp://, udp://, srt://).
    """
    _setup_logging(verbose, quiet)
    if camera is not None:
        dst, src = (src if dst is None else dst), f"/dev/video{camera}"
    with one_line_errors(verbose):
        if src is None or dst is None:
            raise StreamDerainError("give INPUT and OUTPUT (or --camera N and OUTPUT)")
        _validate(batch, crf, start, duration, max_frames, tile, reconnect_timeout)
        _check_paths(src, dst, overwrite)
        stats = _run(
            src,
            dst,
            quiet,
            model=model,
            device=device,
            batch=batch,
            precision=precision,
            codec=codec,
            crf=crf,
            preset=preset,
            backend=backend,
            encoder=encoder,
            compare=compare,
            start=start,
            duration=duration,
            max_frames=max_frames,
            tile=tile,
            rtsp_transport=rtsp_transport,
            reconnect_timeout=reconnect_timeout,
            live_drop=live_drop,
        )
    if stats.interrupted:
        click.echo(
            f"streamderain: interrupted: {dst} holds the {stats.frames} frames done", err=True
        )
        sys.exit(130)
    if not quiet:
        click.echo(f"streamderain: {dst}: {stats.summary()}", err=True)


def _validate(
    batch: int,
    crf: int | None,
    start: float | None,
    duration: float | None,
    max_frames: int | None,
    tile: int,
    reconnect_timeout: float,
) -> None:
    checks = [
        (batch < 1, f"--batch must be at least 1, got {batch}"),
        (crf is not None and not 0 <= crf <= 63, f"--crf must be in 0..63, got {crf}"),
        (start is not None and start < 0, f"--start must be >= 0, got {start}"),
        (duration is not None and duration <= 0, f"--duration must be > 0, got {duration}"),
        (max_frames is not None and max_frames < 1, f"--max-frames must be >= 1, got {max_frames}"),
        (tile < 0, f"--tile must be 0 (off) or positive, got {tile}"),
        (reconnect_timeout < 0, f"--reconnect-timeout must be >= 0, got {reconnect_timeout}"),
    ]
    for bad, message in checks:
        if bad:
            raise StreamDerainError(message)


def _run(src: str, dst: str, quiet: bool, **options):
    from tqdm import tqdm

    from streamderain.api import derain_video

    bar = None

    def on_start(pipeline, decoder) -> None:
        nonlocal bar
        total = options["max_frames"] or decoder.info.frames
        show = not quiet and sys.stderr.isatty()
        bar = tqdm(total=total, unit="frame", disable=not show, dynamic_ncols=True)
        presses = 0

        def on_signal(signum, _frame) -> None:
            nonlocal presses
            presses += 1
            if presses == 1 and signum in (signal.SIGINT, signal.SIGTERM):
                click.echo(
                    "\nstreamderain: stopping; finishing the output (Ctrl-C again to abort)",
                    err=True,
                )
                pipeline.request_stop()
            else:
                pipeline.abort()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    try:
        return derain_video(
            src,
            dst,
            on_frame=lambda n: bar.update(n) if bar is not None else None,
            on_start=on_start,
            **options,
        )
    finally:
        if bar is not None:
            bar.close()


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--rain", type=click.Choice(["light", "heavy"]), default="light", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-y", "--overwrite", is_flag=True, help="Replace PATH if it exists.")
def sample(path: str, rain: str, seed: int, overwrite: bool) -> None:
    """Write a 3-second rainy street clip to PATH to try streamderain on."""
    from streamderain.sample import write_sample

    _setup_logging(False, False)
    try:
        if Path(path).exists() and not overwrite:
            raise StreamDerainError(f"{path} exists (pass -y to overwrite)")
        n = write_sample(path, rain, seed)
    except StreamDerainError as exc:
        _fail(str(exc), False)
    click.echo(f"streamderain: wrote {path} ({n} frames of {rain} rain)", err=True)


from streamderain.batch import batch  # noqa: E402
from streamderain.feeds import feeds  # noqa: E402

main.add_command(batch)
main.add_command(feeds)
