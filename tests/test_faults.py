"""Corrupt media, a full disk: every run ends in bounded time with a playable file or a clean error."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from streamderain import StreamDerainError, derain_video
from streamderain.options import ModelOptions
from streamderain.runner import ModelRunner
from tests.media import (
    clean_frames,
    decode_all,
    display_rotation,
    encode_frames,
    h264_stream,
    make_clip,
)

RUN_LIMIT_S = 60


def _corrupt_copies(clip: bytes, count: int, seed: int = 7):
    """Seeded damage: half get random bytes written over packets, half are cut short."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        data = bytearray(clip)
        if i % 2 == 0:
            for _ in range(int(rng.integers(1, 20))):
                at = int(rng.integers(len(data) // 10, len(data)))
                n = int(rng.integers(1, 64))
                data[at : at + n] = rng.integers(
                    0, 256, min(n, len(data) - at), dtype=np.uint8
                ).tobytes()
            yield f"bytes-{i}", bytes(data)
        else:
            yield f"cut-{i}", bytes(data[: int(rng.integers(1, len(data)))])


def _run_bounded(src: Path, dst: Path, runner: ModelRunner) -> tuple[str, object]:
    outcome: list[tuple[str, object]] = []

    def target() -> None:
        try:
            outcome.append(("output", derain_video(src, dst, device="cpu", runner=runner)))
        except StreamDerainError as exc:
            outcome.append(("error", str(exc)))
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            outcome.append(("crash", repr(exc)))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(RUN_LIMIT_S)
    return outcome[0] if outcome else ("hang", None)


@pytest.fixture(scope="module")
def runner() -> ModelRunner:
    """One loaded model for every fuzzed clip, as a batch job keeps one: the damage is to the
    files, and loading the model anew for each took two thirds of the test's time. For the
    same reason one model runs without the mirror, at a quarter of ``auto``'s model time."""
    return ModelRunner(ModelOptions(model="dcsfn-lite", device="cpu", flip_average="off"))


@pytest.mark.parametrize("suffix, count", [(".mp4", 100), (".ts", 40), (".mkv", 40)])
def test_fuzzed_clips_give_playable_output_or_a_clean_error(
    tmp_path, shared, runner, suffix, count
):
    clip = tmp_path / f"clip{suffix}"
    make_clip(clip, clean_frames(10, (96, 64)))
    counts = {"output": 0, "error": 0}
    for name, data in _corrupt_copies(clip.read_bytes(), count):
        src = tmp_path / f"{name}{suffix}"
        src.write_bytes(data)
        dst = tmp_path / f"{name}-out.mp4"
        kind, detail = _run_bounded(src, dst, runner)
        assert kind in ("output", "error"), f"{name}: {kind} {detail}"
        if kind == "output":
            images, _, _ = decode_all(dst)
            assert len(images) == detail.frames
        else:
            assert "\n" not in detail and not dst.exists()
        counts[kind] += 1
        src.unlink()
    print(f"fuzz {suffix}: {counts['output']} playable outputs, {counts['error']} clean errors")
    assert counts["output"] > 0


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_is_a_clean_error_and_leaves_no_broken_file(tmp_path, small_disk, shared):
    src = tmp_path / "big.mp4"
    frames = [np.random.default_rng(i).integers(0, 256, (180, 320, 3), np.uint8) for i in range(12)]
    make_clip(src, frames)
    out = small_disk / "out.mp4"
    result = subprocess.run(
        [sys.executable, "-m", "streamderain", str(src), str(out), "--crf", "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "No space left" in lines[0]
    assert list(small_disk.iterdir()) == [] or len(decode_all(out)[0]) > 0
    assert not [p for p in small_disk.iterdir() if p.name.startswith(".")]
    with av.open(str(src)) as c:
        assert c.streams.video[0].frames == 12, "the input was touched"


def test_a_failed_run_leaves_the_existing_output_exactly_as_it_was(tmp_path, shared):
    """``-y`` replaces OUTPUT with a finished run only: a run that fails part-way (a picture of
    another size in an image folder) keeps the old file, and leaves nothing of ours behind."""
    import cv2

    stills = tmp_path / "stills"
    stills.mkdir()
    for i, size in enumerate([(160, 90)] * 3 + [(200, 100)]):
        image = np.full((size[1], size[0], 3), 40 * i, np.uint8)
        cv2.imwrite(str(stills / f"{i:03d}.png"), image)
    victim = tmp_path / "victim.mp4"
    make_clip(victim, clean_frames(20, (96, 64)))
    before = victim.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "streamderain", str(stills), str(victim), "-y"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "a video has one size" in result.stderr
    assert victim.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp file left"


def test_a_second_run_to_an_output_being_written_is_refused(tmp_path, shared):
    """A second run to the OUTPUT a first one is writing used to take the first's partial
    file for a killed run's and remove it, and the first then failed at its end, its work lost.
    Now it refuses in one line, and the first finishes."""
    from fractions import Fraction

    from streamderain.encoder import Encoder
    from streamderain.frames import Frame, VideoInfo

    frames = clean_frames(4, (96, 64))
    src = tmp_path / "in.mp4"
    make_clip(src, frames)
    out = tmp_path / "out.mp4"
    tb = Fraction(1, 25)
    first = Encoder(out, VideoInfo(96, 64, tb, Fraction(25), None))
    first.write(Frame(0, 0, tb, frames[0]))
    second = subprocess.run(
        [sys.executable, "-m", "streamderain", src, out],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert second.returncode == 1, second.stderr
    assert "another run is writing it" in second.stderr.strip().splitlines()[-1], second.stderr
    for i, image in enumerate(frames[1:], 1):
        first.write(Frame(i, i, tb, image))
    first.finish()
    assert len(decode_all(out)[0]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.mp4"]


def test_stamping_a_rotation_keeps_the_partial_file_locked(tmp_path):
    """``--encoder ffmpeg`` stamps a rotation by remuxing the finished partial file; a rename
    over it swapped in a file nobody locked, so for that moment a second run to the same output
    could take it for a killed run's and remove it. The stamped file is the locked one."""
    from streamderain.streams import remux
    from streamderain.targets import lock_partial

    partial = tmp_path / ".out.partial.mp4"
    make_clip(partial, clean_frames(3, (64, 48)))
    held = lock_partial(partial)
    try:
        remux(partial, "mp4", 90, lambda output: None, 1 / 25)
        with pytest.raises(BlockingIOError):
            lock_partial(partial)
    finally:
        os.close(held)
    assert display_rotation(partial) == 90
    assert len(decode_all(partial)[0]) == 3
    assert [p.name for p in tmp_path.iterdir()] == [partial.name]


def test_the_callers_stop_event_is_watched_never_set(tmp_path, runner):
    """A run that failed set the caller's ``stop`` event, so the caller's next run with it read
    nothing ("no video frame could be decoded"); a run stopped by it said it was not
    interrupted."""
    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(6, (64, 48)))
    stop = threading.Event()

    def fails(n: int) -> None:
        raise ValueError("the caller's bug")

    with pytest.raises(ValueError):
        derain_video(src, tmp_path / "a.mp4", runner=runner, stop=stop, on_frame=fails)
    assert not stop.is_set()
    assert derain_video(src, tmp_path / "b.mp4", runner=runner, stop=stop).frames == 6
    stop.set()
    stats = derain_video(src, tmp_path / "c.mp4", runner=runner, stop=stop)
    assert stats.interrupted and stats.frames == 0
    assert stats.summary().startswith("interrupted: 0 frames")  # its summary said nothing of it


def test_frames_written_to_the_current_folder_leave_it_in_place(tmp_path, monkeypatch):
    """``streamderain in.mp4 .`` in a folder of PNGs failed at its end ("PosixPath('.') has an
    empty name"), its work lost; the folder a shell is in is not replaced, only added to."""
    from streamderain.targets import replace_folder

    here = tmp_path / "shots"
    here.mkdir()
    (here / "old.png").write_bytes(b"an earlier picture")
    frames = tmp_path / ".shots.partial"
    frames.mkdir()
    (frames / "frame-000001.png").write_bytes(b"a new frame")
    monkeypatch.chdir(here)
    replace_folder(frames, Path("."))
    assert sorted(p.name for p in here.iterdir()) == ["frame-000001.png", "old.png"]
    assert not frames.exists()


def test_a_file_cut_short_keeps_every_whole_frame(tmp_path):
    """Its last packet, cut short, went to the decoder, which then lost the two frames still
    decoding in its threads: a copy interrupted midway came out two frames short."""
    from streamderain.decoder import Decoder
    from streamderain.options import DecodeOptions

    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as out:
        encode_frames(out, h264_stream(out, (96, 64), 25), clean_frames(40, (96, 64)))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with av.open(str(cut)) as plain:  # one frame at a time, no threads: what the file holds
        expected = 0
        for packet in plain.demux(video=0):
            with contextlib.suppress(av.error.InvalidDataError):
                expected += len(packet.decode())
    with Decoder(cut, DecodeOptions()) as decoder:
        assert len(list(decoder)) == expected > 0
