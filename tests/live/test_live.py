"""Live input and output through the real command, against real servers on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from tests.live.conftest import HOST, free_port, is_listening
from tests.media import Heard, clean_frames, decode_all, flash_and_beep, make_clip, onsets

# alone, after the parallel pass: a test that times the run against the wall clock, which a
# busy machine makes late (the others wait on their servers, and overlap the CPU's work)
SERIAL = pytest.mark.serial

CLI = [sys.executable, "-m", "streamderain"]


# A command that hangs is aborted with its threads' Python stacks written to its stderr, so the
# failure says where it hung (faulthandler dumps them on SIGABRT).
STACKS_ON_ABORT = {"PYTHONFAULTHANDLER": "1"}


def start_cli(*args) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, *map(str, args)],
        env={**os.environ, **STACKS_ON_ABORT},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def interrupt_cli(proc: subprocess.Popen, timeout: float = 120, signum: int = signal.SIGINT) -> str:
    """Ctrl-C (or ``signum``), then the command's stderr once it ends; one that has not ended in
    ``timeout`` is aborted and the test fails with the stacks it was stuck in."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            err = proc.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            err = proc.communicate()[1]
        pytest.fail(f"Ctrl-C did not stop the command in {timeout:.0f} s: {err}")


def wait_until_deraining(proc: subprocess.Popen) -> str:
    """What the run printed until it said it is connected and deraining; then a little more."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "connected, deraining" in line:
            time.sleep(1)
            return "".join(seen)
    raise AssertionError(f"the run never connected: {''.join(seen)}")


def test_reads_frames_from_an_rtsp_camera(rtsp_server, tmp_path):
    """... and says that ``--start`` means nothing to a live source (it was ignored silently)."""
    out = tmp_path / "live.mp4"
    args = ("--max-frames", "12", "--no-live-drop", "--start", "3")
    proc = start_cli(rtsp_server.url, out, *args)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "--start is for files" in err
    images, times, _ = decode_all(out)
    assert len(images) == 12
    assert images[0].shape == (180, 320, 3)
    assert all(b > a for a, b in zip(times, times[1:], strict=False))


def test_reconnects_after_the_server_restarts(rtsp_server, tmp_path):
    out = tmp_path / "reconnect.mp4"
    proc = start_cli(rtsp_server.url, out, "--max-frames", "200", "--reconnect-timeout", "20")
    wait_until_deraining(proc)
    rtsp_server.kill()
    time.sleep(2)
    rtsp_server.restart()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    away = re.search(r"reconnected, ([\d.]+) s after its last picture", err)
    assert away and float(away.group(1)) >= 2, err  # the outage, from the last picture seen
    images, times, _ = decode_all(out)
    assert len(images) > 10
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(steps) > 0, "timestamps went backwards across the reconnect"
    assert max(steps) >= 1.5, "the outage should show as a gap in the timestamps"


@SERIAL
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_the_source_is_still_connecting_is_taken_at_once(tmp_path, signum):
    """FFmpeg, waiting for a source to answer, takes no signal: Ctrl-C and SIGTERM were lost
    until the first connection came (with --reconnect-timeout 0, never: only SIGKILL ended it)."""
    silent = f"udp://{HOST}:{free_port()}"  # nothing sends there
    proc = start_cli(silent, tmp_path / "x.mp4", "--reconnect-timeout", "0")
    time.sleep(6)  # its first try waits up to 10 s
    asked = time.monotonic()
    err = interrupt_cli(proc, timeout=30, signum=signum)
    assert time.monotonic() - asked < 3, err
    assert proc.returncode == 130 and "interrupted: nothing written" in err, err
    assert not list(tmp_path.iterdir())


def test_a_camera_with_sound_joined_mid_group_of_pictures_opens(tmp_path):
    """An MPEG-TS camera sending AAC: its sound's packets filled the 0.1 s probe before the
    next keyframe brought the picture's size, and 3 starts in 4 failed ("video stream has no
    frame size")."""
    url = f"udp://{HOST}:{free_port()}"
    camera = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=10"]
        + ["-f", "lavfi", "-i", "sine=r=48000", "-c:v", "libx264", "-g", "10", "-c:a", "aac"]
        + ["-t", "60", "-f", "mpegts", url]
    )
    try:
        time.sleep(1)
        for start in range(3):
            run = subprocess.run(
                [*CLI, url, tmp_path / f"{start}.mkv", "--max-frames", "3", "--no-live-drop", "-q"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert run.returncode == 0, run.stderr
            assert len(decode_all(tmp_path / f"{start}.mkv")[0]) == 3
    finally:
        camera.kill()
        camera.wait()


def test_a_source_that_never_returns_is_a_clean_error_with_playable_output(rtsp_server, tmp_path):
    out = tmp_path / "lost.mp4"
    proc = start_cli(rtsp_server.url, out, "--reconnect-timeout", "3")
    wait_until_deraining(proc)
    rtsp_server.kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert "source lost" in lines[-1] and "Traceback" not in err
    images, _, _ = decode_all(out)
    assert len(images) > 0


@SERIAL
def test_a_relay_answering_not_found_while_its_camera_is_away_is_waited_for(
    make_rtsp_server, clip_path, tmp_path
):
    """A relay (MediaMTX, go2rtc) answers 404 while its camera restarts: once the source has
    given a picture, "not found" is one more failed try. Before any, it is a wrong address:
    a one-line error at once."""
    wrong = make_rtsp_server(clip_path, loop=True, mount="/elsewhere")
    began = time.monotonic()
    bad = subprocess.run(
        [*CLI, wrong.url.replace("/elsewhere", "/clip"), tmp_path / "no.mp4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "404" in bad.stderr.strip().splitlines()[-1], bad.stderr
    assert time.monotonic() - began < 20, "a wrong address is not retried"
    wrong.stop()
    server = make_rtsp_server(clip_path, loop=True)
    out = tmp_path / "relay.mp4"
    proc = start_cli(server.url, out, "-v", "--max-frames", "150", "--reconnect-timeout", "40")
    wait_until_deraining(proc)
    server.stop()
    server.mount = "/elsewhere"  # the same server, without the camera's path: 404
    server.start()
    time.sleep(3)  # tries at 0, 0.5 and 1.5 s meet the 404
    server.mount = "/clip"
    server.restart()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert any("404" in line and "retrying" in line for line in err.splitlines()), err
    assert "reconnected" in err
    assert len(decode_all(out)[0]) > 10


def test_publishes_to_an_rtsp_receiver(rtsp_receiver, clip_path):
    proc = start_cli(clip_path, rtsp_receiver.url, "-q", "--max-frames", "25")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert rtsp_receiver.wait(30) == 0, rtsp_receiver.log()
    images, _, _ = decode_all(rtsp_receiver.out)
    assert len(images) >= 20


def publish(clip: Path, scheme: str, out: Path, *args: str) -> str:
    """``clip`` published to an ffmpeg receiving ``rtmp://`` or ``srt://`` into ``out``
    (stream copied); the run's stderr."""
    port = free_port()
    url = f"rtmp://{HOST}:{port}/live/x" if scheme == "rtmp" else f"srt://{HOST}:{port}"
    listen = ["-listen", "1", "-i", url] if scheme == "rtmp" else ["-i", f"{url}?mode=listener"]
    receiver = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", *listen, "-c", "copy", "-y", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not is_listening(port, udp=scheme == "srt") and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = start_cli(clip, url, *args)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert receiver.wait(30) == 0, receiver.stderr.read()
    finally:
        receiver.kill()
        receiver.wait()
    return err


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_file_published_to_rtmp_keeps_its_sound_and_is_turned_upright(tmp_path, encoder):
    """A phone's clip (display rotation 90, AAC sound) published to RTMP, ffmpeg receiving: a
    live stream keeps no display rotation, so the picture goes out upright, and the default
    writer publishes the sound too. With ``--encoder ffmpeg`` the run ended in an error after
    publishing (it tried to remux the URL as a file); it says the sound stays behind instead."""
    clip = tmp_path / "phone.mp4"
    make_clip(clip, clean_frames(20), audio=True, tags=True)
    out = tmp_path / "received.flv"
    err = publish(clip, "rtmp", out, "--encoder", encoder)
    images, _, _ = decode_all(out)
    assert len(images) == 20 and images[0].shape[:2] == (256, 144)
    with av.open(str(out)) as received:
        codecs = [s.codec_context.name for s in received.streams.audio]
    assert codecs == (["aac"] if encoder == "pyav" else []), err
    assert ("sound is left out" in err) == (encoder == "ffmpeg"), err


def test_a_receiver_that_goes_away_is_said_in_the_outputs_words(tmp_path):
    """The receiver of a published file with sound closed its end: the sound's write met the
    broken pipe, and the run ended in "BrokenPipeError: [Errno 32] Broken pipe: 'rtmp://...'"."""
    clip = tmp_path / "clip.mp4"
    make_clip(clip, clean_frames(75, (96, 64)) * 3, audio=True)  # 9 s, published at its pace
    port = free_port()
    url = f"rtmp://{HOST}:{port}/live/x"
    receiver = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "quiet", "-listen", "1", "-i", url, "-f", "null", "-"]
    )
    try:
        deadline = time.monotonic() + 20
        while not is_listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc = start_cli(clip, url)
        time.sleep(5)  # the model loaded, some seconds published
        receiver.kill()
        _, err = proc.communicate(timeout=120)
    finally:
        receiver.kill()
        receiver.wait()
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert "cannot write" in last and "Error:" not in last and "Traceback" not in err, err


def test_srt_is_published_through_ffmpeg_without_being_asked(tmp_path):
    """PyAV's FFmpeg has no SRT: ``srt://`` failed with "Protocol not found" unless the user
    knew to add ``--encoder ffmpeg``; the ffmpeg binary publishes it by itself now."""
    clip = tmp_path / "clip.mp4"
    make_clip(clip, clean_frames(50, (96, 64)))
    out = tmp_path / "received.ts"
    publish(clip, "srt", out)
    images, _, _ = decode_all(out)
    assert len(images) >= 40 and images[0].shape[:2] == (64, 96)


def test_password_is_masked_in_messages(tmp_path):
    proc = start_cli(
        "rtsp://admin:s3cret@127.0.0.1:9/cam", tmp_path / "o.mp4", "--reconnect-timeout", "1"
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "s3cret" not in err and "admin:***@" in err


@SERIAL
@pytest.mark.parametrize("drop", ["--live-drop", "--no-live-drop"])
def test_live_drop_keeps_up_with_a_fast_camera(rtsp_server, tmp_path, drop):
    out = tmp_path / "drop.mp4"
    proc = start_cli(rtsp_server.url, out, "--duration", "2", drop)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    written = len(decode_all(out)[0])
    match = re.search(r"(\d+) frames dropped", err)
    dropped = int(match.group(1)) if match else 0
    if drop == "--live-drop":
        assert dropped > 0, err
        assert written + dropped >= 45, "2 s of a 25 fps camera were read"
    else:
        assert dropped == 0, err


@SERIAL
def test_a_stalled_source_times_out_and_stops_cleanly(rtsp_server, tmp_path):
    """A camera that stops sending but keeps its connection open must not hang the run: a read
    gives up after 5 s (FFmpeg's RTSP reader took two reads, 10 s: the first handed over the
    frame it held back), then the run reconnects for ``--reconnect-timeout``."""
    out = tmp_path / "stalled.mp4"
    proc = start_cli(rtsp_server.url, out, "--reconnect-timeout", "2")
    wait_until_deraining(proc)
    rtsp_server.pause()
    paused = time.monotonic()
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        rtsp_server.resume()
    assert time.monotonic() - paused <= 5 + 2 + 2.5, err
    assert proc.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert "source lost" in last and "Traceback" not in err
    waited = float(re.search(r"no picture for ([\d.]+) s", last).group(1))
    assert waited <= 2 + 1.5, f"the time in the message is the time waited: {last}"
    assert "Invalid data" not in last, "a stalled source is said to stall"
    assert len(decode_all(out)[0]) > 0


def test_a_camera_sending_garbage_part_way_is_skipped_and_the_run_goes_on(
    ts_bytes, make_tcp_stream_server, tmp_path
):
    """A quarter of every pass of the stream replaced by random bytes: the run keeps going."""
    rng = np.random.default_rng(0)
    stream = bytearray(ts_bytes)
    at, size = len(stream) * 2 // 5, len(stream) // 4
    stream[at : at + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    server = make_tcp_stream_server(bytes(stream))
    out = tmp_path / "garbled.mp4"
    proc = start_cli(server.url, out, "--max-frames", "120", "--no-live-drop")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert re.search(r"\d+ corrupt packets skipped or concealed", err), err
    images, times, _ = decode_all(out)
    assert len(images) == 120, "frames past the garbage (in every pass of the clip) are kept"
    assert all(b > a for a, b in zip(times, times[1:], strict=False))


@SERIAL
def test_a_source_whose_clock_restarts_keeps_real_frame_times(
    ts_bytes, make_tcp_stream_server, tmp_path
):
    """The server loops a 4 s clip, its timestamps jumping back each pass: the output's times
    go on at the source's pace instead of piling up on the last instant of the first pass."""
    server = make_tcp_stream_server(ts_bytes)
    out = tmp_path / "looped.mkv"
    proc = start_cli(server.url, out, "--max-frames", "125", "--no-live-drop")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    _, times, _ = decode_all(out)
    assert len(times) == 125
    steps = np.diff(times)
    assert steps.min() > 0.02 and times[-1] > 4.6, (steps.min(), times[-1])


def record_sound(
    make_tcp_stream_server, out: Path, frames: int, *args: str, head_start: float = 0.0, **clip
) -> Heard:
    """``frames`` of a camera serving :func:`flash_and_beep`'s clip (made with ``clip``),
    looped, recorded to ``out`` (``--no-live-drop`` unless ``args`` say otherwise): where its
    flashes and beeps land."""
    camera = out.with_name("camera.ts")
    flash_and_beep(camera, **clip)
    seconds = clip.get("seconds", 4.0)
    server = make_tcp_stream_server(camera.read_bytes(), seconds, head_start)
    proc = start_cli(server.url, out, "--max-frames", frames, *(args or ["--no-live-drop"]))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return onsets(out)


@SERIAL
def test_a_live_sources_sound_keeps_in_step_when_its_clock_restarts(
    make_tcp_stream_server, tmp_path
):
    """A camera's MPEG-TS with AAC sound: the recording has it too (a live source's sound
    cannot be copied after the run, as a file's is: it is encoded as it comes), from its first
    picture to its last, each beep where its flash is. The server loops the 4 s clip, its
    clock jumping back each pass: the second pass's beep is where its flash is, on the clock
    the picture follows after the jump, and no sound of one pass lands on another's."""
    heard = record_sound(make_tcp_stream_server, tmp_path / "looped.mp4", 150)
    assert heard.flashes[0] == pytest.approx(1.2, abs=0.05) and heard.picture[0] == 0.0
    assert len(heard.flashes) == 2 and heard.flashes[1] > 5.0, heard
    assert heard.beeps == pytest.approx(heard.flashes, abs=0.03)
    assert heard.sound == pytest.approx(heard.picture, abs=0.05)
    assert not heard.silent, "sound under every picture, also the first ones after the jump"


def test_a_live_sources_sound_that_begins_late_is_recorded(make_tcp_stream_server, tmp_path):
    """A camera whose sound begins 0.6 s in, after FFmpeg's 0.1 s probe (which finds no rate
    for it): none was recorded at all, without a word. (Jumps of the clock ahead and back are
    played in ``tests/test_sound.py``.)"""
    heard = record_sound(make_tcp_stream_server, tmp_path / "camera.mkv", 90, sound=(0.6, 1e9))
    assert heard.beeps == pytest.approx(heard.flashes, abs=0.03) and len(heard.flashes) == 1
    assert heard.sound == pytest.approx((0.6, heard.picture[1]), abs=0.05)
    assert not heard.silent[15:]


@SERIAL
def test_a_live_sources_sound_keeps_up_after_a_burst_on_connecting(
    make_tcp_stream_server, tmp_path
):
    """A source that sends 12 s at once on connecting (an HLS live playlist starts three
    segments back), then real time: its picture runs more than 10 s ahead of the wall clock,
    and the sound was dropped from there on (the beep at 15 s was never heard)."""
    heard = record_sound(
        make_tcp_stream_server,
        tmp_path / "burst.mkv",
        10_000,
        "--duration",
        "17",
        head_start=12.0,
        seconds=20.0,
        at=15.0,
        size=(96, 64),  # small enough that the model keeps up, the flash's frames not dropped
    )
    assert heard.beeps == pytest.approx([15.0], abs=0.05)
    (flash,) = heard.flashes  # its first frames may be dropped: the model catches up
    assert heard.beeps[0] - 0.01 <= flash < heard.beeps[0] + 0.4
    assert heard.sound[1] == pytest.approx(heard.picture[1], abs=0.1)
    assert not heard.silent


def test_a_camera_sending_only_garbage_is_a_clean_error(make_tcp_stream_server, tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, 2_000_000, dtype=np.uint8).tobytes()
    server = make_tcp_stream_server(noise, seconds_per_payload=2)
    out = tmp_path / "noise.mp4"
    began = time.monotonic()
    proc = start_cli(server.url, out, "--reconnect-timeout", "5")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = err.strip().splitlines()  # the first failed try at once, then the end
    assert len(lines) == 2 and "Traceback" not in err, err
    assert "retrying" in lines[0] and "no picture from it for" in lines[1], lines
    assert time.monotonic() - began < 60
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def readable(path: Path) -> int:
    """Frames a player gets from a file cut anywhere, up to its first damage."""
    import av

    n = 0
    try:
        with av.open(str(path)) as c:
            for _ in c.decode(video=0):
                n += 1
    except av.error.FFmpegError:
        pass
    return n


@pytest.mark.parametrize(
    "encoder, suffix", [("pyav", ".mkv"), ("ffmpeg", ".mkv"), ("pyav", ".mp4")]
)
@SERIAL
def test_a_recording_of_a_live_source_is_on_disk_within_a_second(
    ts_bytes, make_tcp_stream_server, tmp_path, encoder, suffix
):
    """A recording cut short the hard way (SIGKILL, power loss) keeps all but its last second:
    the encoder holds no frames back and the muxer writes each second out as it ends (MP4 in
    fragments: a plain one cut short plays nothing)."""
    import threading

    from streamderain import derain_video
    from streamderain.targets import partial_path

    server = make_tcp_stream_server(ts_bytes)
    out = tmp_path / f"rec{suffix}"
    stop = threading.Event()
    encoded: list[int] = []
    cut: list[tuple[int, int]] = []

    def on_frame(n: int) -> None:
        encoded.append(n)
        if sum(encoded) >= 60 and not cut:  # what a kill now would leave
            copy = tmp_path / f"cut{suffix}"
            copy.write_bytes(partial_path(out).read_bytes())
            cut.append((sum(encoded), readable(copy)))
            stop.set()

    derain_video(server.url, out, model="dcsfn-lite", encoder=encoder, stop=stop, on_frame=on_frame)
    [(done, kept)] = cut
    assert kept >= done - 26, f"{kept} of {done} frames on disk"  # 1 s at 25 frames/s, + 1
    assert len(decode_all(out)[0]) == sum(encoded)


def test_a_killed_recording_is_kept_and_the_next_run_records_anew(
    ts_bytes, make_tcp_stream_server, tmp_path
):
    """A live recording cannot be redone, so what a killed run left is kept beside the target
    (a file's is removed: rerunning makes it again)."""
    import signal

    from streamderain.targets import partial_path

    server = make_tcp_stream_server(ts_bytes)
    out = tmp_path / "rec.mp4"
    proc = start_cli(server.url, out, "--model", "dcsfn-lite", "-q")
    deadline = time.monotonic() + 120
    while readable(partial_path(out)) < 30:
        assert proc.poll() is None and time.monotonic() < deadline, "no frames recorded"
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    again = start_cli(server.url, out, "--model", "dcsfn-lite", "--max-frames", "10")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    [kept] = tmp_path.glob("rec-cut-*.mp4")
    assert "kept" in err and kept.name in err, err
    assert readable(kept) >= 30
    assert len(decode_all(out)[0]) > 0
    assert not partial_path(out).exists()


@SERIAL
def test_an_mjpeg_camera_over_http_is_recorded_at_its_own_pace(tmp_path):
    """FFmpeg's reader of MJPEG over HTTP has no frame times and makes them up at 25 frames/s:
    a 10 frames/s camera was recorded 2.5 times too fast. A bar crossing the camera's picture at
    40 pixels a second crosses the recording at that speed."""
    src, port = tmp_path / "bar.mkv", free_port()
    with av.open(str(src), "w") as container:
        v = container.add_stream("ffv1", rate=10)
        v.width, v.height, v.pix_fmt = 160, 96, "yuv420p"
        for n in range(40):
            image = np.full((96, 160, 3), 30, np.uint8)
            image[:, n * 4 : n * 4 + 8] = 220
            vf = av.VideoFrame.from_ndarray(image, format="rgb24")
            vf.pts = n
            container.mux(v.encode(vf))
        container.mux(v.encode(None))
    url = f"http://{HOST}:{port}/cam.mjpg"
    server = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(src),
         "-c:v", "mjpeg", "-q:v", "3", "-f", "mpjpeg", "-listen", "1", url]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not is_listening(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        out = tmp_path / "camera.mp4"
        proc = start_cli(url, out, "-q", "--duration", "4")
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    finally:
        server.kill()
        server.wait()
    images, times, _ = decode_all(out)
    bars = [int(np.argmax(image.mean((0, 2)))) for image in images]
    steps = [(b - a) % 160 for a, b in zip(bars, bars[1:])]
    moved = sum(s for s in steps if s < 80)
    speed = moved / (times[-1] - times[0])
    assert len(images) >= 10 and 30 < speed < 55, (speed, bars, times)


@SERIAL
def test_an_hls_playlist_of_long_segments_is_not_taken_for_a_lost_stream(tmp_path):
    """HLS comes a segment at a time: at the live edge the reader waits for the next whole one,
    and with segments of 6 s that wait passed the 5 s read timeout, so a healthy stream was
    said lost and connected again (reading old segments a second time)."""
    port = free_port()
    generator = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         "testsrc=size=160x96:rate=10", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10",
         "-f", "hls", "-hls_time", "6", "-hls_list_size", "5", str(tmp_path / "live.m3u8")]
    )  # fmt: skip
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", HOST],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
            (tmp_path / "live.m3u8").exists() and is_listening(port)
        ):
            time.sleep(0.2)
        out = tmp_path / "hls.mp4"
        proc = start_cli(f"http://{HOST}:{port}/live.m3u8", out, "--duration", "16")
        _, err = proc.communicate(timeout=120)
    finally:
        for process in (generator, server):
            process.kill()
            process.wait()
    assert proc.returncode == 0, err
    assert "lost" not in err and "reconnect" not in err, err
    assert len(decode_all(out)[0]) >= 5
