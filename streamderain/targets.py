"""What an output name means: a container, a folder of frames or a live URL; the hidden partial
file it is written to until done, and that file's lock; and the checks made before any work."""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import shutil
import threading
from datetime import datetime
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked
    fcntl = None  # type: ignore[assignment]

import av

from streamderain.errors import OutputError, reason
from streamderain.options import EncodeOptions
from training.data import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

# container suffix -> (FFmpeg format, default video codec)
CONTAINERS: dict[str, tuple[str, str]] = {
    ".mp4": ("mp4", "libx264"),
    ".m4v": ("mp4", "libx264"),
    ".mov": ("mov", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".webm": ("webm", "libvpx-vp9"),
}
_FFMPEG_LOG = threading.Lock()
# what a folder's files are taken for: the containers written, and those of cameras and discs
VIDEO_SUFFIXES = {
    *CONTAINERS,
    *".avi .ts .mts .m2ts .mpg .mpeg .vob .flv .wmv .asf .3gp .ogv .dv .mxf .h264 .h265".split(),
}
# live output scheme -> FFmpeg format
# The codec for a file from a source of more than 8 bits: HEVC is what phones record HDR video
# in, and it plays where they play (H.264's 10-bit profile plays in far fewer places).
DEEP_CODEC = "libx265"
LIVE_OUTPUTS: dict[str, str] = {"rtsp": "rtsp", "rtmp": "flv", "udp": "mpegts", "srt": "mpegts"}


def live_target_format(target: str | Path) -> str | None:
    """The FFmpeg format of a live output URL, or None for a file or folder."""
    text = str(target)
    if "://" not in text:
        return None
    scheme = text.split("://", 1)[0].lower()
    if scheme not in LIVE_OUTPUTS:
        raise OutputError(f"{text}: cannot publish to {scheme}:// (use {', '.join(LIVE_OUTPUTS)})")
    return LIVE_OUTPUTS[scheme]


def is_folder_target(path: str | Path) -> bool:
    """An output with no suffix (or an existing folder) is a folder of PNG frames."""
    p = Path(path)
    return p.is_dir() or str(path).endswith(os.sep) or p.suffix == ""


def is_picture_target(path: str | Path) -> bool:
    """An output named as a picture (``clean.jpg``) holds one frame: a photo derained, or a
    stream's snapshot (``--max-frames 1``)."""
    return "://" not in str(path) and Path(path).suffix.lower() in IMAGE_SUFFIXES


def partial_path(target: Path, folder: bool | None = None) -> Path:
    """The hidden file (or folder) beside ``target`` that an output is written to until done;
    ``folder``: whether it is a folder of frames (None: as its name says; a ``Path`` has lost
    the slash of ``frames.v2/``)."""
    if is_folder_target(target) if folder is None else folder:
        return target.with_name(f".{target.name}.partial")
    return target.with_name(f".{target.stem}.partial{target.suffix}")


def check_not_input(target: str | Path, source: str | Path) -> None:
    """Refuse to write over the input (the same file or folder), or to read the file it
    writes through: the run reads what it writes, or removes its input as a killed run's."""
    if "://" in str(source) or "://" in str(target):
        return
    src, dst = Path(source), Path(target)
    if not src.exists():
        return
    if dst.exists() and src.resolve() == dst.resolve():
        raise OutputError(f"{target}: output is the input; choose another output name")
    if str(target) and dst.is_dir() and dst.resolve() in src.resolve().parents:  # "" is not "."
        raise OutputError(
            f"{target}: the output folder holds the input ({source}), which its frames would "
            "replace; choose a folder of their own"
        )
    temporary = partial_path(dst.absolute(), is_folder_target(target))
    with contextlib.suppress(OSError):  # a name too long: check_target says so
        if temporary.exists() and src.resolve() == temporary.resolve():  # as a killed run's
            raise OutputError(f"{source}: the name of {target}'s temporary file; rename the input")


def check_codec(options: EncodeOptions) -> None:
    """Refuse a ``--codec`` PyAV's FFmpeg has no video encoder for, before any work."""
    if options.codec is None or options.encoder != "pyav":
        return  # the ffmpeg binary says what it lacks itself
    try:
        kind = av.Codec(options.codec, "w").type
    except ValueError:
        kind = None
    if kind != "video":
        raise OutputError(f"--codec {options.codec}: no such video encoder (see: ffmpeg -encoders)")


def encoder_name(codec: str) -> str:
    """The encoder FFmpeg picks for a codec's name (``h264`` is ``libx264``, ``hevc``
    ``libx265``), so that each gets its own quality settings whichever name was typed."""
    try:
        return av.Codec(codec, "w").name
    except ValueError:  # the ffmpeg binary's to know (--encoder ffmpeg)
        return codec


def format_and_codec(
    target: Path, live_format: str | None, codec: str | None, bits: int
) -> tuple[str, str]:
    """The FFmpeg format and video codec of an output: the user's ``codec``, else the
    container's default, and for a file from a source of more than 8 ``bits`` HEVC, which keeps
    10 where phones' HDR video plays."""
    chosen = encoder_name(codec) if codec else None
    if live_format:
        return live_format, chosen or "libx264"
    fmt, default = CONTAINERS[target.suffix.lower()]
    if chosen:
        return fmt, chosen
    return fmt, DEEP_CODEC if bits > 8 and default == "libx264" else default


def check_muxer(fmt: str, codec: str, options: dict[str, str], pix_fmt: str) -> None:
    """Refuse a ``--codec`` the container cannot hold, before any work: FFmpeg's muxer says so
    only as it writes the header, at the first packet, after the model has run (VP9 into .mov:
    "vp9 only supported in MP4"); so a header is written to memory first, from a small picture.
    An encoder that refuses these settings is named as the writer would name it."""
    with _FFMPEG_LOG:  # the level is the process's: one thread's change at a time
        level = av.logging.get_level()
        av.logging.set_level(av.logging.ERROR)  # to hear why: FFmpeg says it in its log
        try:
            with av.logging.Capture() as said, av.open(io.BytesIO(), "w", format=fmt) as trial:
                stream = trial.add_stream(codec, rate=25)
                stream.width = stream.height = 64
                stream.pix_fmt, stream.options = pix_fmt, options
                trial.start_encoding()
        except (av.error.FFmpegError, ValueError) as exc:
            why = said[0][2].strip().rstrip(".") if said else reason(exc)
            plain = not isinstance(exc, av.error.FFmpegError)  # PyAV's own: the format's table
            if plain or any(name == fmt for _, name, _ in said):
                raise OutputError(
                    f"--codec {codec} cannot be written into {fmt} ({why}); check --codec, or "
                    "choose another container"
                ) from None
            raise OutputError(
                f"{codec} cannot encode this ({why}); check --codec and --preset"
            ) from None
        finally:
            av.logging.set_level(level)


def check_target(path: str | Path) -> None:
    """Refuse an output that cannot be written, before any work is done: an unknown container,
    something that is neither a file nor a folder (``/dev/full``), or a name too long for its
    folder once the temporary suffix is added."""
    if live_target_format(path):
        return
    if str(path) == "-":
        raise OutputError("-: no writing to standard output; name a file or a folder")
    if not str(path).strip():  # "" wrote frames into the current folder
        raise OutputError("the output's name is empty; name a file or a folder")
    target = Path(os.path.abspath(path))  # "." has a name
    if target.exists() and not (target.is_file() or target.is_dir()):
        raise OutputError(f"{path}: not a regular file or folder; choose another output")
    if target.is_file() and is_folder_target(path):
        raise OutputError(
            f"{path}: a file with no extension; a folder of frames cannot replace it "
            "(name a video file, e.g. out.mp4, or a folder that is not a file)"
        )
    if not (
        is_folder_target(path) or is_picture_target(path) or target.suffix.lower() in CONTAINERS
    ):
        known = ", ".join(sorted(CONTAINERS))
        raise OutputError(
            f"{path}: unknown output container (use one of {known}, a folder, or a picture)"
        )
    folder = target.parent if str(target.parent) else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX") if folder.is_dir() else 255
    except OSError:
        limit = 255
    temporary = partial_path(target, is_folder_target(path))
    longest = max(len(target.name.encode()), len(temporary.name.encode()))
    if longest > limit:
        raise OutputError(
            f"{target.name[:40]}...: output name too long ({longest} bytes with the temporary "
            f"suffix; this folder takes {limit})"
        )


def lock_partial(path: Path) -> int | None:
    """``path`` opened (created if missing) and locked by this process while it writes it, so a
    second process does not take it for a killed run's. None where nothing locks (Windows); on a
    file system that cannot lock (NFS without its lock service) the file comes back unlocked.
    Raises BlockingIOError while another process holds it."""
    if fcntl is None:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # for writing, as NFS locks need
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError as exc:
        log.debug("%s: written unlocked (%s)", path, reason(exc))
    return fd


#: marks a partial output with whether its run can be redone; see :func:`redoable`
REDOABLE = "user.streamderain.redoable"


def mark_redoable(path: Path, redo: bool) -> None:
    """Note on ``path`` whether its run can be redone from its source (a file: yes; a live
    source: no), where the file system keeps such notes (extended attributes)."""
    with contextlib.suppress(OSError, AttributeError):  # no xattrs: see redoable
        os.setxattr(path, REDOABLE, b"1" if redo else b"0")


def redoable(path: Path) -> bool | None:
    """Whether a killed run's partial output may go, as its run noted: a file's is made again
    by rerunning; a live recording is what no run can make again. None where nothing was noted
    (no extended attributes: macOS, Windows, some network file systems)."""
    try:
        return os.getxattr(path, REDOABLE) == b"1"
    except (OSError, AttributeError):
        return None


def keep_killed_run(partial: Path, target: Path, folder: bool, live: bool) -> bool:
    """Whether a killed run's partial output is kept. From a file it is redone, so it is not (the
    caller removes it); from a live source (whichever run comes next) it cannot be, so it is
    moved beside the target, where it plays up to its last second."""
    empty = not (any(partial.iterdir()) if folder else partial.stat().st_size)  # killed at once
    noted = redoable(partial)  # None where the file system keeps no notes: this run's kind
    if empty or (noted if noted is not None else not live):
        if not empty:
            log.warning("removing %s, left by a run that was killed", partial)
        return False
    cut = datetime.fromtimestamp(partial.stat().st_mtime).strftime("%Y%m%d-%H%M%S")
    kept = target.with_name(f"{target.stem}-cut-{cut}{target.suffix}")
    for n in itertools.count(2):
        if not kept.exists():
            break
        kept = kept.with_name(f"{target.stem}-cut-{cut}-{n}{target.suffix}")
    os.replace(partial, kept)
    log.warning("kept %s, a recording cut short when its run was killed", kept)
    return True


def remove_partial(path: Path) -> None:
    """A partial output thrown away: a file, or a folder of frames."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def replace_folder(frames: Path, target: Path) -> None:
    """A finished folder of frames into place. A target that holds frames only (PNG files) is
    replaced whole, so that no frame of an earlier, longer run stays among the new ones; one
    that holds anything else, is a link to a folder or holds the current folder, gets the new
    frames beside what it had."""
    target, here = Path(os.path.abspath(target)), Path.cwd()  # "." has no name of its own
    ours = target.is_dir() and not target.is_symlink()
    ours = ours and target != here and target not in here.parents  # a shell's folder stays put
    if ours and all(p.is_file() and p.suffix == ".png" for p in target.iterdir()):
        earlier = target.with_name(f".{target.name}.earlier")
        shutil.rmtree(earlier, ignore_errors=True)
        os.replace(target, earlier)
        os.replace(frames, target)
        shutil.rmtree(earlier)
        return
    target.mkdir(parents=True, exist_ok=True)
    for f in sorted(frames.iterdir()):
        os.replace(f, target / f.name)
    frames.rmdir()
