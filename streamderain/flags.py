"""The command line's shared parts: the flags every command takes, and one-line errors.

Flags come in groups (model, encode, range, live, overwrite, verbosity); :func:`run_options`
adds the groups a command takes, and :func:`options_from` turns what the user typed into a
checked :class:`~streamderain.options.RunOptions`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from streamderain.errors import InputError, StreamDerainError
from streamderain.live import is_live
from streamderain.options import (
    AUTO_ON_OFF,
    BACKENDS,
    COMPARE_MODES,
    ENCODERS,
    PRECISIONS,
    RTSP_TRANSPORTS,
    RunOptions,
)

if TYPE_CHECKING:
    from streamderain.pipeline import Pipeline

log = logging.getLogger("streamderain")


class _Format(logging.Formatter):
    """``streamderain: message`` for notices, ``streamderain: WARNING: message`` otherwise."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname}: "
        text = f"streamderain: {level}{record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class RunSignals:
    """Ctrl-C and SIGTERM for one run, from its start: the first stops it and finishes the
    output, the second aborts. Before the pipeline runs (a live source still connecting, the
    model loading) nothing is written yet: the first sets :attr:`stop`, which ends a source's
    tries once the current one gives up (FFmpeg, waiting on a source, takes no signal), and
    stops the model's loading at once; the second quits at once."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.pipeline: Pipeline | None = None
        self.presses = 0
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.presses += 1
        if self.pipeline is None and self.presses > 1:
            click.echo("\nstreamderain: aborted", err=True)
            os._exit(130)
        if self.pipeline is None:
            click.echo("\nstreamderain: stopping (Ctrl-C again to quit at once)", err=True)
            self.stop.set()
            raise KeyboardInterrupt
        if self.presses == 1:
            click.echo(
                "\nstreamderain: stopping; finishing the output (Ctrl-C again to abort)", err=True
            )
            self.pipeline.request_stop()
        else:
            self.pipeline.abort()


def setup_logging(verbose: bool, quiet: bool) -> None:
    """Log to stderr (only the command line configures logging): warnings, and notices of
    what a user waits for (``-q``: errors only; ``-v``: everything, with what runs)."""
    handler = logging.StreamHandler()
    handler.setFormatter(_Format())
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, handlers=[handler])
    for ours in ("streamderain", "training"):  # -v: ours; other libraries' debug is noise
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.NOTSET)
    logging.getLogger("streamderain.notice").setLevel(logging.ERROR if quiet else logging.INFO)


#: how torch (CPU, CUDA) and OpenVINO say that memory ran out
#: what out-of-memory errors say: std::bad_alloc, PyTorch's, OpenVINO's
OUT_OF_MEMORY = ("bad_alloc", "can't allocate memory", "out of memory", "Failed to allocate")


def fail(message: str, verbose: bool, code: int = 1) -> None:
    if verbose:
        log.exception("details")
    click.echo(f"streamderain: error: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def one_line_errors(verbose: bool) -> Iterator[None]:
    """Every failure inside ends the command with one line on stderr (``-v``: a traceback)."""
    try:
        yield
    except KeyboardInterrupt:
        fail("aborted", verbose, 130)
    except BrokenPipeError:  # its reader has gone (``streamderain models | head``): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - reported, not swallowed
        if _explained(exc):
            fail(str(exc), verbose)
        if isinstance(exc, MemoryError) or any(s in str(exc) for s in OUT_OF_MEMORY):
            fail("out of memory: try a smaller --batch, or --tile N", verbose)
        fail(f"unexpected {type(exc).__name__}: {exc} (run with -v for details)", verbose, 2)


def _explained(exc: Exception) -> bool:
    """Ours or the model loader's: its message is the whole story. The loader's class is looked
    up, not imported: importing training loads PyTorch (2 s), which a command that fails on its
    arguments never needs, and only a loaded loader raises its errors."""
    weights = sys.modules.get("training.weights")
    return isinstance(exc, StreamDerainError) or (
        weights is not None and isinstance(exc, weights.ModelLoadError)
    )


def _auto_on_off(name: str, help: str) -> Callable:
    """A switch whose ``auto`` (the default) the run decides by its source."""
    return click.option(
        name, type=click.Choice(AUTO_ON_OFF), default="auto", show_default=True, help=help
    )


_MODEL = [
    click.option(
        "--model",
        default=None,
        help="Bundled model name, auto (dcsfn-lite, or dcsfn-lite-heavy where the rain leaves "
        "a veil) or checkpoint path [default: auto; all bundled models: streamderain models].",
    ),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--batch", type=int, default=1, show_default=True, help="Frames per model call."),
    click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="auto",
        show_default=True,
        help="Number format of the model; auto: int8 for the bundled models on x86 CPUs "
        "(AVX2 or AVX-512), where fp32 runs near 2 frames/s, else fp32; fp16 and bf16 are "
        "for GPUs (bf16 runs on a CPU, through PyTorch, several times slower than auto); "
        "int8: a bundled model in 8 bits on a CPU (OpenVINO), faster, a little less exact.",
    ),
    click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="auto",
        show_default=True,
        help="Inference backend; auto: OpenVINO on a CPU (int8, or fp32: exact, faster), "
        "else PyTorch.",
    ),
    _auto_on_off(
        "--temporal",
        "Use the neighbouring frames where the scene holds still (steadier, fewer streaks "
        "left); auto: on for video, off for a folder of pictures.",
    ),
    click.option(
        "--tile",
        type=int,
        default=0,
        show_default=True,
        help="Process frames in tiles of at most this size (bounds memory; 0: off).",
    ),
    _auto_on_off(
        "--flip-average",
        "Also derain each frame's mirror image and average the two: cleaner, at twice the "
        "model's time; auto: on for files, off for live sources.",
    ),
]
_ENCODE = [
    click.option(
        "--codec", default=None, help="Video codec (default: H.264 for mp4/mov/mkv, VP9 for webm)."
    ),
    click.option(
        "--crf", type=int, default=None, help="Constant quality (default: visually lossless)."
    ),
    click.option("--preset", default=None, help="x264 preset (default: fast)."),
    click.option(
        "--encoder",
        type=click.Choice(ENCODERS),
        default="pyav",
        show_default=True,
        help="pyav: PyAV's own FFmpeg; ffmpeg: an ffmpeg binary on PATH (for NVENC, VAAPI, ...).",
    ),
    click.option(
        "--compare",
        type=click.Choice(COMPARE_MODES),
        default=None,
        help="Write the input and the result together.",
    ),
]
_RANGE = [
    click.option("--start", type=float, default=None, help="Seconds to skip."),
    click.option("--duration", type=float, default=None, help="Seconds to process."),
    click.option(
        "--max-frames",
        type=int,
        default=None,
        help="Frames to read at most (from a live source, dropped ones included).",
    ),
]
_LIVE = [
    click.option(
        "--rtsp-transport",
        type=click.Choice(RTSP_TRANSPORTS),
        default="tcp",
        show_default=True,
        help="RTSP input transport.",
    ),
    click.option(
        "--reconnect-timeout",
        type=float,
        default=30.0,
        show_default=True,
        help="Seconds a live source may stay lost before giving up (0: never).",
    ),
    click.option(
        "--live-drop/--no-live-drop",
        default=None,
        help="Drop old frames when the model is slower than a live source "
        "(default: on; a file keeps every frame).",
    ),
]
_OVERWRITE = [
    click.option(
        "-y",
        "--overwrite",
        is_flag=True,
        help="Replace outputs that exist (batch: also redo inputs done before).",
    )
]
_VERBOSITY = [
    click.option(
        "-q", "--quiet", is_flag=True, help="Errors only: no progress bar, summary or warnings."
    ),
    click.option("-v", "--verbose", is_flag=True, help="Debug logging; tracebacks on errors."),
]
_GROUPS = {
    "model": _MODEL,
    "encode": _ENCODE,
    "range": _RANGE,
    "live": _LIVE,
    "overwrite": _OVERWRITE,
    "verbosity": _VERBOSITY,
}


def run_options(*groups: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The run options every command shares, by group (``model``, ``encode``, ``range``,
    ``live``, ``overwrite``, ``verbosity``), in ``--help`` in that order."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for group in reversed(groups):
            for option in reversed(_GROUPS[group]):
                command = option(command)
        return command

    return decorate


def options_from(params: dict[str, Any]) -> RunOptions:
    """The :class:`RunOptions` among a command's parameters (checked: a bad value is a
    one-line :class:`UsageError`)."""
    names = RunOptions.names()
    return RunOptions.of(**{k: v for k, v in params.items() if k in names})


def check_paths(src: str, dst: str, overwrite: bool) -> None:
    """Refuse anything that could lose the user's data, before any work starts; a missing
    input is named before an existing output."""
    if not is_live(src) and "://" not in src and not Path(src).exists():  # ftp://, file://
        raise InputError(f"{src}: no such file")
    if "://" in dst:
        return
    from streamderain.targets import check_not_input, check_target

    check_not_input(dst, src)
    check_target(dst)  # /dev/full: no file to ask about overwriting
    dst_path = Path(dst)
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
