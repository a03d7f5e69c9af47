"""Real RTSP endpoints for live-stream tests (nothing mocked).

* ``rtsp_server`` -- a gst-rtsp-server subprocess (tests/live/rtsp_server.py, run by the
  SYSTEM python, which has python3-gi) serving ``clip_path`` at rtsp://127.0.0.1:PORT/clip,
  looping at real-time pace. It can be killed, paused (SIGSTOP = a stalled server) and
  restarted on the same port.
* ``rtsp_receiver`` -- ``ffmpeg -rtsp_flags listen`` waiting for ONE publisher (e.g. PyAV
  ``av.open(url, "w", format="rtsp")``) and copying its stream into a Matroska file.

Needs Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,
good,bad} gstreamer1.0-libav ffmpeg. Every test in this folder is skipped when
/usr/bin/python3 cannot load GstRtspServer.
"""

from __future__ import annotations

import functools
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
HOST = "127.0.0.1"

CLIP_W, CLIP_H, CLIP_FPS, CLIP_SECONDS = 320, 180, 25, 4


@functools.cache
def gst_rtsp_problem() -> str | None:
    """None when the system python can run rtsp_server.py, else why not."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); "
        "gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer"
    )
    r = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        return (
            f"{SYSTEM_PYTHON} cannot load GstRtspServer ({tail}); "
            "apt-get install python3-gi gir1.2-gst-rtsp-server-1.0"
        )
    return None


@pytest.fixture(autouse=True)
def _require_gst_rtsp_server() -> None:
    problem = gst_rtsp_problem()
    if problem:
        pytest.skip(problem)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def is_listening(port: int, host: str = HOST, udp: bool = False) -> bool:
    """True when a TCP socket LISTENs on host:port, or a UDP socket is bound there (read from
    /proc; never connects, because ffmpeg's listen mode would take a probe connection as its
    one client)."""
    hex_ip = "".join(f"{int(b):02X}" for b in reversed(host.split(".")))
    want, any_ = f"{hex_ip}:{port:04X}", f"00000000:{port:04X}"
    try:
        lines = Path("/proc/net/udp" if udp else "/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        f = line.split()
        if len(f) > 3 and (udp or f[3] == "0A") and f[1] in (want, any_):
            return True
    return False


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    """One stdout line of ``proc`` (binary pipe), or '' on EOF/deadline."""
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return ""
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            return ""
        chunk = os.read(fd, 1)
        if not chunk:
            return ""
        buf += chunk
    return buf.decode().strip()


def write_test_clip(path: Path, seconds: float = CLIP_SECONDS) -> Path:
    """H.264 MP4, 320x180 @ 25 fps: a moving horizontal gradient, keyframe every second."""
    import av

    x = np.arange(CLIP_W, dtype=np.int32)
    y = np.arange(CLIP_H, dtype=np.int32)
    with av.open(str(path), "w") as c:
        s = c.add_stream(
            "libx264", rate=CLIP_FPS, options={"preset": "ultrafast", "g": str(CLIP_FPS)}
        )
        s.width, s.height, s.pix_fmt = CLIP_W, CLIP_H, "yuv420p"
        for i in range(int(seconds * CLIP_FPS)):
            img = np.empty((CLIP_H, CLIP_W, 3), np.uint8)
            img[..., 0] = ((x + 8 * i) % 256)[None, :]
            img[..., 1] = (y * 255 // CLIP_H)[:, None]
            img[..., 2] = (10 * i) % 256
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory) -> Path:
    return write_test_clip(tmp_path_factory.mktemp("rtsp") / "clip.mp4")


class RtspServer:
    """rtsp_server.py in a subprocess; the port is fixed after the first start."""

    def __init__(
        self, clip: Path, log_dir: Path, *, loop: bool = True, port: int = 0, mount: str = "/clip"
    ):
        self.clip, self.loop, self.port, self.mount = Path(clip), loop, port, mount
        self.log_path = log_dir / "rtsp_server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"rtsp://{HOST}:{self.port}{self.mount}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self, timeout: float = 15) -> RtspServer:
        assert not self.alive, "already running"
        cmd = [
            SYSTEM_PYTHON,
            str(SERVER_SCRIPT),
            str(self.clip),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--mount",
            self.mount,
            "--exit-with-stdin",
        ]
        if self.loop:
            cmd.append("--loop")
        with open(self.log_path, "a") as log:
            # stdin=PIPE + --exit-with-stdin: the server quits if pytest dies hard.
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,  # Ctrl-C in pytest does not hit it directly
            )
        line = _read_line(self.proc, time.monotonic() + timeout)
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError(f"rtsp_server did not start ({line!r}):\n{self.log()}")
        self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL: the abrupt death of a camera/server (works while paused, too)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self._close_pipes()

    def stop(self, timeout: float = 5) -> None:
        """Graceful stop (SIGCONT + SIGTERM), SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_pipes()

    def restart(self, timeout: float = 15) -> RtspServer:
        """Stop (if running) and start again on the SAME port."""
        self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: TCP stays open but nothing is sent -- a stalled server."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def _close_pipes(self) -> None:
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


@pytest.fixture
def make_rtsp_server(tmp_path) -> Iterator:
    """Factory: make_rtsp_server(clip, loop=True, port=0, mount="/clip") -> started server."""
    servers: list[RtspServer] = []

    def make(clip: Path, **kw) -> RtspServer:
        srv = RtspServer(clip, tmp_path, **kw)
        servers.append(srv)
        return srv.start()

    yield make
    for srv in servers:
        srv.stop()


@pytest.fixture
def rtsp_server(make_rtsp_server, clip_path) -> RtspServer:
    """A looping server for clip_path at ``rtsp_server.url`` (rtsp://127.0.0.1:PORT/clip)."""
    return make_rtsp_server(clip_path, loop=True)


class RtspReceiver:
    """``ffmpeg -rtsp_flags listen``: accepts ONE publisher at ``url``, copies to ``out``.

    ffmpeg exits by itself once the publisher closes (TEARDOWN) or disconnects.
    """

    def __init__(self, out: Path, port: int | None = None, path: str = "/live"):
        self.out = Path(out)
        self.port = port or free_port()
        self.url = f"rtsp://{HOST}:{self.port}{path}"
        self.log_path = self.out.with_suffix(".ffmpeg.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10) -> RtspReceiver:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            pytest.fail("ffmpeg is not installed (apt-get install ffmpeg)")
        cmd = [
            ffmpeg,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "warning",
            "-rtsp_flags",
            "listen",
            "-listen_timeout",
            "60",  # seconds
            "-i",
            self.url,
            "-c",
            "copy",
            "-f",
            "matroska",
            "-y",
            str(self.out),
        ]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not is_listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"ffmpeg listener did not start:\n{self.log()}")
            time.sleep(0.02)
        return self

    def wait(self, timeout: float = 20) -> int:
        """Wait for ffmpeg to finish writing; returns its exit code."""
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # ffmpeg finalizes the file on SIGTERM
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def rtsp_receiver(tmp_path) -> Iterator[RtspReceiver]:
    """A listening receiver: publish to ``rtsp_receiver.url``, then ``wait()`` and read
    ``rtsp_receiver.out`` (Matroska, stream copied)."""
    rx = RtspReceiver(tmp_path / "received.mkv").start()
    yield rx
    rx.close()


class TcpStreamServer:
    """A camera that serves MPEG-TS over plain TCP (``tcp://127.0.0.1:PORT``), in a thread.

    Every connection gets ``payload`` again and again at about the clip's real-time pace, so a
    test can hand it a stream that turns to garbage part way, or garbage from the start.
    """

    def __init__(self, payload: bytes, seconds_per_payload: float, head_start: float = 0.0) -> None:
        self.payload = payload
        self.rate = len(payload) / seconds_per_payload  # bytes per second
        self.head_start = head_start  # seconds of stream sent at once (HLS live's first segments)
        self._sock = socket.create_server((HOST, 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.url = f"tcp://{HOST}:{self.port}"
        self.connections = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._send, args=(conn,), daemon=True).start()

    def _send(self, conn: socket.socket) -> None:
        chunk = 188 * 7
        began, sent = time.monotonic() - self.head_start, 0
        with conn:
            while not self._closed.is_set():
                for at in range(0, len(self.payload), chunk):
                    if self._closed.is_set():
                        return
                    try:
                        conn.sendall(self.payload[at : at + chunk])
                    except OSError:
                        return
                    sent += chunk
                    ahead = sent / self.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

    def close(self) -> None:
        self._closed.set()
        self._sock.close()
        self._thread.join(5)


@pytest.fixture(scope="session")
def ts_bytes(clip_path, tmp_path_factory) -> bytes:
    """clip_path remuxed (not re-encoded) to MPEG-TS, as a network camera would send it."""
    import av

    out = tmp_path_factory.mktemp("ts") / "clip.ts"
    with av.open(str(clip_path)) as src, av.open(str(out), "w", format="mpegts") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                dst.mux(packet)
    return out.read_bytes()


@pytest.fixture
def make_tcp_stream_server() -> Iterator:
    """Factory: make_tcp_stream_server(payload, seconds_per_payload, head_start) -> server."""
    servers: list[TcpStreamServer] = []

    def make(
        payload: bytes, seconds_per_payload: float = CLIP_SECONDS, head_start: float = 0.0
    ) -> TcpStreamServer:
        servers.append(TcpStreamServer(payload, seconds_per_payload, head_start))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
