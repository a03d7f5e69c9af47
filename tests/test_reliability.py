"""Defects an adversarial pass found (issue 15), each reproduced with real files and processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streamderain.live import LiveClock
from tests.media import clean_frames, decode_all, make_clip, packets

CLI = [sys.executable, "-m", "streamderain"]
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg binary")


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ours_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


@needs_ffmpeg
def test_frames_before_time_zero_all_come_out(tmp_path):
    src, out = tmp_path / "neg.mkv", tmp_path / "out.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25"]
        + ["-frames:v", "20", "-c:v", "ffv1", "-output_ts_offset", "-0.4"]
        + ["-avoid_negative_ts", "disabled", str(src)],
        check=True,
    )
    result = run_cli(src, out, "--crf", "0")
    assert result.returncode == 0, result.stderr
    images, times, _ = decode_all(out)
    assert len(images) == 20, "every decoded frame comes out"
    assert times[0] == pytest.approx(0.0, abs=1e-3) and times == sorted(times)


def test_an_audio_stream_cut_before_its_first_frame_is_left_out(tmp_path, shared):
    """A truncated MPEG-TS whose audio has no parameters yet: the video still comes out."""
    clip, ts = tmp_path / "x.mp4", tmp_path / "x.ts"
    make_clip(clip, clean_frames(25, (160, 96)), audio=True)
    with av.open(str(clip)) as src, av.open(str(ts), "w", format="mpegts") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    cut = tmp_path / "t.ts"
    cut.write_bytes(ts.read_bytes()[:12000])
    with av.open(str(cut)) as probe:
        assert probe.streams.audio and not probe.streams.audio[0].codec_context.sample_rate
    out = tmp_path / "out.mp4"
    result = run_cli(cut, out)
    assert result.returncode == 0, result.stderr
    assert "has no parameters" in result.stderr and ".partial" not in result.stderr
    assert len(decode_all(out)[0]) > 0
    assert ours_left(tmp_path) == []


def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path, shared):
    clip = tmp_path / "in.mp4"
    make_clip(clip, clean_frames(3, (96, 64)))
    if Path("/dev/full").exists():
        for yes in (["-y"], []):  # without -y too: not "exists (pass -y to overwrite)"
            result = run_cli(clip, "/dev/full", *yes)
            assert result.returncode == 1 and "not a regular file or folder" in result.stderr
        assert not Path("/dev/.full.partial").exists()
    notes = tmp_path / "notes"
    notes.write_text("the user's notes")
    result = run_cli(clip, notes, "-y")
    assert result.returncode == 1 and "a file with no extension" in result.stderr
    assert notes.read_text() == "the user's notes"
    long_name = tmp_path / ("x" * 250 + ".mp4")
    t0 = time.monotonic()
    result = run_cli(clip, long_name)
    assert result.returncode == 1 and "output name too long" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert time.monotonic() - t0 < 60
    assert ours_left(tmp_path) == []


def test_sigterm_while_starting_is_a_clean_stop(tmp_path, shared):
    clip = tmp_path / "in.mp4"
    make_clip(clip, clean_frames(30, (256, 144)))
    proc = subprocess.Popen(
        [*CLI, str(clip), str(tmp_path / "out.mp4"), "-v"], stderr=subprocess.PIPE, text=True
    )
    seen = []
    for line in proc.stderr:  # -v says when the model starts loading
        seen.append(line)
        if "loading the model" in line:
            proc.send_signal(signal.SIGTERM)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + err
    assert "streamderain: interrupted: nothing written to" in err and "Traceback" not in err
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".*"))


def test_a_partial_left_by_a_killed_run_is_removed_by_the_next(tmp_path, shared):
    """Only one its run marked as made from a file (redone now) goes: a recording cut short is
    kept, whichever kind of run comes next to that name."""
    from streamderain.targets import mark_redoable

    clip = tmp_path / "in.mp4"
    make_clip(clip, clean_frames(3, (96, 64)))
    stale = tmp_path / ".out.partial.mp4"
    stale.write_bytes(b"half a file from a run that was killed")
    mark_redoable(stale, True)
    result = run_cli(clip, tmp_path / "out.mp4", "--crf", "0")
    assert result.returncode == 0, result.stderr
    assert ours_left(tmp_path) == [] and len(decode_all(tmp_path / "out.mp4")[0]) == 3
    stale.write_bytes(b"half a recording from a camera, which no run can make again")
    mark_redoable(stale, False)
    result = run_cli(clip, tmp_path / "out.mp4", "--crf", "0", "-y")
    assert result.returncode == 0, result.stderr
    [kept] = tmp_path.glob("out-cut-*.mp4")
    assert kept.read_bytes().startswith(b"half a recording") and "kept" in result.stderr
    # a recording to a folder of frames too (it was removed whatever its run had been)
    from fractions import Fraction

    from streamderain.encoder import Encoder
    from streamderain.frames import VideoInfo

    frames = tmp_path / ".frames.partial"
    frames.mkdir()
    (frames / "frame-000001.png").write_bytes(b"a frame of a camera")
    mark_redoable(frames, False)
    Encoder(tmp_path / "frames", VideoInfo(96, 64, Fraction(1, 25), Fraction(25), None)).finish()
    [kept] = tmp_path.glob("frames-cut-*")
    assert (kept / "frame-000001.png").read_bytes() == b"a frame of a camera"


def test_a_missing_camera_is_an_immediate_clear_error(tmp_path):
    missing = next(n for n in range(60, 100) if not os.path.exists(f"/dev/video{n}"))
    t0 = time.monotonic()
    result = run_cli("--camera", str(missing), tmp_path / "out.mp4")
    assert result.returncode == 1 and "no such camera" in result.stderr, result.stderr
    assert time.monotonic() - t0 < 30, "no reconnect wait for a device that does not exist"
    both = run_cli(tmp_path / "in.mp4", "--camera", "0", tmp_path / "out.mp4")
    assert both.returncode == 1 and "either INPUT or --camera" in both.stderr


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_batch_whose_driver_is_killed_leaves_no_worker_and_finishes_on_rerun(tmp_path, shared):
    """SIGKILL to the driver alone (its SIGTERM: ``test_batch.py``, sigterm to the driver)."""
    from tests.test_batch import manifest

    src = tmp_path / "in"
    src.mkdir()
    # A file's partial output lives only while its frames are encoded: about 0.15 s for 40
    # frames here, too short for a poll to be sure to see. The first file is long enough for
    # its partial to live about a second, and the poll is fine.
    lengths = {"long1.mp4": 300, "long2.mp4": 40, "long3.mp4": 40}
    for name, n in lengths.items():
        make_clip(src / name, (clean_frames(75, (192, 108)) * 4)[:n])
    out = tmp_path / "ob"
    args = [*CLI, "batch", *sorted(map(str, src.iterdir())), "--out-dir", str(out), "-q"]
    # the driver is what is tested, not the model
    args += ["--model", "dcsfn-lite", "--flip-average", "off"]
    driver = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not (out.is_dir() and ours_left(out)) and time.monotonic() < deadline:
        assert driver.poll() is None, (
            "the batch ended before it was killed: " + driver.stderr.read()
        )
        time.sleep(0.01)  # until a worker is writing an output
    assert ours_left(out), "no worker started"
    workers = [p for p in _children(driver.pid) if _alive(p)]
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=180)
    deadline = time.monotonic() + 3
    while [p for p in workers if _alive(p)] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if _alive(p)], "a worker outlived its driver"
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    done = {r["input"] for r in manifest(out) if r["status"] == "done"}
    assert done == {str(p) for p in src.iterdir()}
    for name, n in lengths.items():
        assert len(decode_all(out / name)[0]) == n
    assert ours_left(out) == []


def test_a_clock_restart_after_a_burst_goes_on_one_frame_later():
    """Frames that arrived faster than real time (a burst on connecting) run the source's times
    ahead of the wall clock; when its clock then restarts, the next frame still comes one frame
    interval later, never on the same instant as the last (the encoder would squeeze it to 1 ms)."""
    clock = LiveClock()
    first = [clock.seconds(i * 0.04) for i in range(100)]
    after = [clock.seconds(i * 0.04) for i in range(3)]
    times = np.array(first + after)
    assert np.diff(times).min() > 0.039, np.diff(times).min()
    assert after[0] == pytest.approx(first[-1] + 0.04)


def test_a_video_files_url_is_read_once_to_its_end(tmp_path, shared):
    """http(s):// is live (HLS, MJPEG), but a URL of a recording has a length: its end is the
    end of the run, not a loss to reconnect from and play again."""
    import functools
    import http.server
    import threading

    make_clip(tmp_path / "clip.mkv", clean_frames(8, (96, 64)), audio=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mkv"
        result = run_cli(url, tmp_path / "out.mp4", timeout=120)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    assert "reconnect" not in result.stderr
    assert len(decode_all(tmp_path / "out.mp4")[0]) == 8
    assert packets(tmp_path / "out.mp4", "audio"), "its sound comes with it, as a file's"


def test_no_folder_for_the_converted_model_is_one_clear_line(tmp_path, shared):
    """OpenVINO's conversion is cached in ~/.cache, else the temporary folder: with neither
    usable the run says so in one line (and what to do), leaving nothing half-written."""
    pytest.importorskip("openvino")
    clip = tmp_path / "in.mp4"
    make_clip(clip, clean_frames(3, (96, 64)))
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "streamderain").write_text("a file where the cache folder would go")
    env = {**os.environ, "XDG_CACHE_HOME": str(blocked), "TMPDIR": str(blocked)}
    result = subprocess.run(
        [*CLI, clip, tmp_path / "out.mp4", "--precision", "fp32", "--backend", "openvino"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no folder to keep the model converted for OpenVINO in" in result.stderr
    assert sorted(p.name for p in blocked.iterdir()) == ["streamderain"]
