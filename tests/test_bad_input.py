"""Every bad input through the real command: one line, non-zero exit, nothing lost, no code run."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch

from tests.conftest import FIXTURES
from tests.media import clean_frames, make_clip

CLI = [sys.executable, "-m", "streamderain"]


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def media(tmp_path_factory, shared):
    d = tmp_path_factory.mktemp("bad")
    clip = d / "clip.mp4"
    make_clip(clip, clean_frames(4, (96, 64)))
    make_clip(d / "uncounted.mkv", clean_frames(4, (96, 64)))  # Matroska counts no frames
    (d / "notes.txt").write_text("not a video\n")
    (d / "empty.mp4").write_bytes(b"")
    (d / "truncated.mp4").write_bytes(clip.read_bytes()[:300])
    with av.open(str(d / "audio.m4a"), "w") as out:
        s = out.add_stream("aac", rate=48000)
        s.layout = "mono"
        import numpy as np

        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = 0
        out.mux(s.encode(frame))
        out.mux(s.encode(None))
    (d / "junk.pth").write_bytes(os.urandom(2000))
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, d / "resnet.pth")
    from training.weights import resolve_source

    ours = torch.load(resolve_source("dcsfn-lite"), weights_only=True)
    torch.save({**ours, "metadata": {"mirror_scale": 0}}, d / "bad-metadata.pt")
    with open(d / "evil.pth", "wb") as f:
        pickle.dump({"net": _Exploit(d / "pwned")}, f)
    (d / "existing.mp4").write_bytes(b"keep me")
    (d / "renamed").mkdir()
    shutil.copy(clip, d / "renamed" / ".out.partial.mp4")  # as a killed run's, it would go
    locked = d / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    return d


def _cases(d: Path) -> dict[str, tuple[list[str], str]]:
    clip = str(d / "clip.mp4")
    out = str(d / "out.mp4")
    return {
        "input missing": ([str(d / "nope.mp4"), out], "no such file"),
        "not a video": ([str(d / "notes.txt"), out], "cannot open as video"),
        "empty file": ([str(d / "empty.mp4"), out], "cannot open as video"),
        "truncated file": ([str(d / "truncated.mp4"), out], "truncated.mp4"),
        "audio only": ([str(d / "audio.m4a"), out], "no video stream"),
        "a folder of videos": (
            [str(d), out],
            "a folder of videos; derain them with: streamderain batch",
        ),
        "output is input": ([clip, clip, "-y"], "output is the input"),
        "output exists": ([clip, str(d / "existing.mp4")], "exists (pass -y to overwrite)"),
        "output folder missing": ([clip, str(d / "no" / "dir" / "o.mp4")], "does not exist"),
        "output folder read-only": ([clip, str(d / "locked" / "o.mp4")], "not writable"),
        "unknown container": ([clip, str(d / "o.xyz")], "unknown output container"),
        "standard output": ([clip, "-"], "no writing to standard output"),
        "empty output": ([clip, "", "-y"], "the output's name is empty"),  # frames went into .
        # a publishing URL's password was in every message (ffmpeg's own line too)
        "publish refused": ([clip, "rtmp://bob:s3cret@127.0.0.1:9/x"], "rtmp://bob:***@127"),
        "publish refused, ffmpeg": (
            [clip, "rtmp://bob:s3cret@127.0.0.1:9/x", "--encoder", "ffmpeg"],
            "ffmpeg failed: rtmp://bob:***@127",
        ),
        # no try could connect, each said only "Invalid argument", for 30 s
        "a '#' in a camera's password": (
            ["rtsp://admin:wr0ng#pw@127.0.0.1:9/stream", out],
            "rtsp://admin:***@127.0.0.1:9/stream: write the '#' of its user name or password as %23",
        ),
        "empty out-dir": (["batch", clip, "--out-dir", ""], "--out-dir is empty"),
        # warned of a --crf never given, then named --max-frames, which sample does not have
        "sample as a picture": (["sample", str(d / "s.png")], "the sample is a clip"),
        "negative batch": ([clip, out, "--batch", "-2"], "--batch must be at least 1"),
        "batch past memory": (
            [str(d / "uncounted.mkv"), out, "--batch", "100000"],
            "out of memory",
        ),
        "input named as the output's temporary file": (
            [str(d / "renamed" / ".out.partial.mp4"), str(d / "renamed" / "out.mp4")],
            "the name of",
        ),
        "unknown device": ([clip, out, "--device", "tpu"], "unknown device"),
        "cuda without gpu": ([clip, out, "--device", "cuda"], "no CUDA GPU"),
        "bad crf": ([clip, out, "--crf", "99"], "--crf must be in 0..63"),
        "audio codec": ([clip, out, "--codec", "aac"], "no such video encoder"),
        "codec that will not open": ([clip, out, "--codec", "mjpeg"], "check --codec"),
        # found by FFmpeg's muxer only at its first packet, after the model had run
        "codec the container cannot hold": (
            [clip, str(d / "o.mov"), "--codec", "vp9"],
            "--codec libvpx-vp9 cannot be written into mov (vp9 only supported in MP4)",
        ),
        "unknown preset": ([clip, out, "--preset", "fastest"], "--preset must be one of"),
        "crf past x264's scale": (
            [clip, out, "--crf", "60"],
            "--crf 60 is past libx264's scale (0 to 51; 63 is VP9's)",
        ),
        "model missing": ([clip, out, "--model", str(d / "none.pth")], "no such file"),
        "model junk": ([clip, out, "--model", str(d / "junk.pth")], "checkpoint"),
        "model of another network": (
            [clip, out, "--model", str(d / "resnet.pth")],
            "not a DCSFN checkpoint",
        ),
        "malicious model": ([clip, out, "--model", str(d / "evil.pth")], "refused"),
        "model with bad metadata": (
            [clip, out, "--model", str(d / "bad-metadata.pt")],
            "bad metadata",
        ),
        "unknown model name": ([clip, out, "--model", "dcsfn-huge"], "unknown model name"),
    }


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", list(_cases(Path("."))))
def test_bad_input_is_one_clean_line(media, case):
    if case == "output folder read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    if case == "cuda without gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, expected = _cases(media)[case]
    before = {p: _digest(p) for p in media.iterdir() if p.is_file()}
    result = subprocess.run(  # in the folder: what an empty output name wrote, it wrote there
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        cwd=media,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("streamderain: error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    after = {p: _digest(p) for p in media.iterdir() if p.is_file()}
    assert after == before, "a file the user had was changed"
    assert not (media / "out.mp4").exists()
    assert not (media / "pwned").exists(), "the checkpoint ran code"
    assert not [p for p in media.iterdir() if p.name.startswith(".")], "temporary file left"


# the command line in a Python that says at its exit whether PyTorch was loaded
TORCH_PROBE = """
import runpy, sys
sys.argv[0] = "streamderain"
try:
    runpy.run_module("streamderain", run_name="__main__")
finally:
    print("torch loaded:", "torch" in sys.modules, file=sys.stderr)
"""


@pytest.mark.parametrize("case", ["input missing", "output exists", "bad crf", "empty out-dir"])
def test_a_command_refused_on_its_arguments_loads_no_pytorch(media, case):
    """Its one line comes in a quarter of a second, not after PyTorch's two-second import."""
    args, expected = _cases(media)[case]
    result = subprocess.run(
        [sys.executable, "-c", TORCH_PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=media,
    )
    assert result.returncode != 0
    assert expected in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "torch loaded: False", result.stderr


def test_parity_fixture_checkpoint_runs_through_the_cli(media, tmp_path):
    out = tmp_path / "o.mp4"
    result = subprocess.run(
        [*CLI, str(media / "clip.mp4"), str(out), "-q", "--model", str(FIXTURES / "rnn_c8_n2.pth")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0


def test_the_api_refuses_to_write_over_its_input(media):
    """As the command does: a run would replace the file (or folder) it reads."""
    from streamderain import derain_video
    from streamderain.errors import OutputError

    clip = media / "clip.mp4"
    before = clip.read_bytes()
    with pytest.raises(OutputError, match="output is the input"):
        derain_video(clip, str(clip), max_frames=2)
    assert clip.read_bytes() == before


def test_a_picture_into_the_folder_that_holds_it_is_refused(tmp_path):
    """``streamderain photos/1.png photos -y`` replaced the folder of PNGs by the one frame:
    the input and every other photo in it were gone."""
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in (1, 2):
        cv2.imwrite(str(photos / f"{i}.png"), clean_frames(1, (64, 48))[0])
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    result = subprocess.run(
        [*CLI, photos / "1.png", photos, "-y", "-q"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and "the output folder holds the input" in result.stderr
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before


@pytest.mark.parametrize(
    "values",
    [
        {"live_drop": "no"},  # a non-empty string is true: it dropped frames of a file
        {"max_frames": 3.0},
        {"batch": 2.0},
        {"batch": "2"},
        {"start": "1"},
        {"crf": 18.5},
        {"duration": True},
        {"reconnect_timeout": float("nan")},
        {"start": 1e308},  # OverflowError, from deep in the run
        {"max_frames": 10**23},
    ],
)
def test_an_option_of_the_wrong_kind_is_named_before_any_work(values):
    """Options check their kinds as they are made: these failed deep in a run (a TypeError
    from OpenVINO or ``islice``), or changed it silently."""
    from streamderain.errors import UsageError
    from streamderain.options import RunOptions

    (name,) = values
    with pytest.raises(UsageError, match=f"--{name.replace('_', '-')} must be"):
        RunOptions.of(**values)


def test_the_api_names_the_options_it_takes(media, tmp_path):
    """A model name or the wrong options object was an AttributeError from deep inside; one
    group of options stands beside the others' defaults, and a Derainer is a runner."""
    from streamderain import Derainer, ModelError, StreamDerainError, derain_video
    from streamderain.errors import UsageError
    from streamderain.options import ModelOptions, RunOptions

    with pytest.raises(TypeError, match="Derainer\\(model='dcsfn-lite'\\)"):
        Derainer("dcsfn-lite")
    with pytest.raises(TypeError, match="options must be RunOptions, got dict"):
        derain_video(media / "clip.mp4", tmp_path / "a.mp4", {"crf": 3})
    derainer = Derainer(RunOptions.of(model="dcsfn-lite", flip_average="off", batch=2))
    stats = derain_video(
        media / "clip.mp4", tmp_path / "b.mp4", ModelOptions(batch=2), runner=derainer, max_frames=2
    )
    assert stats.frames == 2
    # a group's values beside a runner are refused as its keywords are (they were left out)
    with pytest.raises(UsageError, match="batch: a runner's model options stand"):
        derain_video(media / "clip.mp4", tmp_path / "c.mp4", ModelOptions(batch=3), runner=derainer)
    # RunOptions(model=...) failed in the run, a TypeError about dataclasses
    with pytest.raises(TypeError, match="RunOptions\\(model=...\\) takes ModelOptions, got str"):
        RunOptions(model="dcsfn-lite-heavy")
    with pytest.raises(TypeError, match="takes DecodeOptions, got ModelOptions"):
        RunOptions(decode=ModelOptions())
    # a model name mistyped was no StreamDerainError (the command line caught it apart)
    with pytest.raises(ModelError, match="dcsfn-lite-hevy") as raised:
        Derainer(model="dcsfn-lite-hevy")
    assert isinstance(raised.value, StreamDerainError)


def test_numpy_numbers_are_options_of_their_kind():
    """``np.int64(2)`` from a NumPy loop was refused as "no whole number"; kept as Python's."""
    import numpy as np

    from streamderain.options import RunOptions

    options = RunOptions.of(batch=np.int64(2), start=np.float32(1.5), crf=np.int32(0))
    assert (options.model.batch, options.decode.start, options.encode.crf) == (2, 1.5, 0)
    assert type(options.model.batch) is int and type(options.decode.start) is float


def test_the_api_leaves_the_callers_threads_and_checks_its_arguments_up_front(tmp_path):
    """A Derainer set PyTorch's threads for the whole process (a detector beside it went from
    the 1 its user set to every core); wrong arguments to derain_video failed after the model
    had loaded, in words that named no argument; a torch.device was refused."""
    import numpy as np

    from streamderain import Derainer, derain_video
    from streamderain.backends import OpenVINOBackend

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        derainer = Derainer(model="dcsfn-lite", device=torch.device("cpu"))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    src, dst = tmp_path / "in.mp4", tmp_path / "out.mp4"
    for args, said in (
        ({"stop": True}, "stop must be a threading.Event, got bool"),
        ({"on_frame": 5}, "on_frame must be callable, got int"),
        ({"src": None}, "src must be a path or URL (str or Path), got NoneType"),
    ):
        with pytest.raises(TypeError, match=said.replace("(", r"\(").replace(")", r"\)")):
            derain_video(**{"src": src, "dst": dst, **args})
    assert not dst.exists()
    with pytest.raises(TypeError, match="got NoneType"):
        derainer(None)
    with pytest.raises(ValueError, match="frames of several sizes"):
        derainer([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)])
    backend = next(f for f in derainer.runner.forwards if isinstance(f, OpenVINOBackend))
    sizes = [(64, 64), (64, 80), (64, 96), (64, 112)]
    for h, w in [*sizes, sizes[0], (64, 128)]:  # the first used again, then a fifth size
        derainer(np.zeros((h, w, 3), np.uint8))
    kept = {key[1:] for key in backend._compiled}
    assert (64, 64) in kept and (64, 80) not in kept, "the least recently used goes first"
