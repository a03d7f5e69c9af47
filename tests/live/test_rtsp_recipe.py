"""Recipe tests: how PyAV behaves against a REAL RTSP server / receiver on 127.0.0.1.

Run: /work/venv/bin/python -m pytest tests/live -q   (about 30 s, mostly waiting)

Facts these tests pin down (PyAV 18 / FFmpeg 8 against gst-rtsp-server 1.22):
* av.open(...) of the RTSP URL takes ~1.1 s (probing), the first frame follows at once.
* Server killed mid-stream: NO exception. The TCP connection closes, av_read_frame gives
  EOF, and PyAV's demux()/decode() generators simply END after the frames already
  buffered. A live reader must treat "iteration ended" as "disconnected".
* Server stalled (alive, sends nothing): with timeout=(open, read) PyAV raises
  av.error.ExitError ("Immediate exit requested") after about 2 x read -- the first
  interrupted read still returns the packet FFmpeg's parser held back. With no PyAV
  timeout it blocks forever, unless FFmpeg's own option timeout=<microseconds> is given:
  then av.error.TimeoutError (errno 110, a builtin TimeoutError) after about 2 x that.
* After a restart on the same port a new av.open() works at once (~1.2 s to a frame).
"""

from __future__ import annotations

import time

import av
import av.error
import numpy as np
import pytest

from .conftest import CLIP_FPS, CLIP_H, CLIP_W

TCP = {"rtsp_transport": "tcp"}


def open_rtsp(url: str, **kw):
    kw.setdefault("timeout", (5, 5))
    return av.open(url, options={**TCP, **kw.pop("options", {})}, **kw)


def test_read_frames(rtsp_server):
    n = 50
    t0 = time.monotonic()
    with open_rtsp(rtsp_server.url) as c:
        t_open = time.monotonic() - t0
        pts = []
        for f in c.decode(video=0):
            if not pts:
                t_first = time.monotonic() - t0
            assert (f.width, f.height) == (CLIP_W, CLIP_H)
            pts.append(f.pts)
            if len(pts) == n:
                break
    elapsed = time.monotonic() - t0
    print(f"open {t_open:.3f}s, first frame {t_first:.3f}s, {n} frames {elapsed:.3f}s")
    assert t_first < 5
    # Real-time pace: n frames cannot arrive much faster than n / fps.
    assert elapsed > 0.75 * n / CLIP_FPS
    # The very first frame has pts None (FFmpeg RTP); the rest step by 90000/25.
    known = [p for p in pts if p is not None]
    assert len(known) >= n - 1
    assert all(b - a == 90000 // CLIP_FPS for a, b in zip(known, known[1:]))


def test_kill_then_restart_and_reconnect(rtsp_server):
    c = open_rtsp(rtsp_server.url)
    frames = c.decode(video=0)
    for _ in range(10):
        next(frames)

    rtsp_server.kill()
    t0 = time.monotonic()
    rest = sum(1 for _ in frames)  # no exception: the generator just ends (EOF)
    t_end = time.monotonic() - t0
    c.close()
    print(f"after kill: {rest} buffered frames, then end of iteration in {t_end:.3f}s")
    assert t_end < 3
    assert rest < 2 * CLIP_FPS  # only what was buffered (~1 s of probing)

    with pytest.raises(av.error.ConnectionRefusedError):
        open_rtsp(rtsp_server.url)

    port = rtsp_server.port
    t0 = time.monotonic()
    rtsp_server.start()  # same port; works right away (the server uses SO_REUSEADDR)
    assert rtsp_server.port == port
    with open_rtsp(rtsp_server.url) as c:
        got = [f for _, f in zip(range(10), c.decode(video=0))]
    t_reconnect = time.monotonic() - t0
    print(f"restart + reconnect + 10 frames: {t_reconnect:.3f}s")
    assert len(got) == 10
    assert t_reconnect < 8


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("pyav-timeout", id="timeout=(5,5)"),
        pytest.param("ffmpeg-timeout", id="options-timeout-2s"),
    ],
)
def test_stalled_server_raises(rtsp_server, how):
    if how == "pyav-timeout":
        c = open_rtsp(rtsp_server.url, timeout=(5, 5))
        expected, limit = av.error.ExitError, 5.0
    else:  # FFmpeg's own socket I/O timeout (microseconds); no PyAV interrupt callback
        c = open_rtsp(rtsp_server.url, timeout=None, options={"timeout": "2000000"})
        expected, limit = av.error.TimeoutError, 2.0
    packets = c.demux(video=0)
    for _ in range(5):
        next(packets)
    rtsp_server.pause()
    t0 = time.monotonic()
    try:
        with pytest.raises(expected) as err:
            for _ in packets:
                pass
    finally:
        c.close()
        rtsp_server.resume()
    waited = time.monotonic() - t0
    print(f"{how}: {type(err.value).__module__}.{type(err.value).__name__}: "
          f"{err.value} after {waited:.2f}s")
    # The buffered packets come out at once; the first timed-out read still returns the
    # parser's held-back packet, and the second one raises: ~2 x the read timeout.
    assert limit * 0.9 < waited < 2 * limit + 3


def test_publish_to_listening_receiver(rtsp_receiver):
    n = 50
    out = av.open(rtsp_receiver.url, mode="w", format="rtsp", options=TCP, timeout=(5, 5))
    s = out.add_stream("libx264", rate=CLIP_FPS,
                       options={"preset": "ultrafast", "tune": "zerolatency", "g": "25"})
    s.width, s.height, s.pix_fmt = CLIP_W, CLIP_H, "yuv420p"
    t0 = time.monotonic()
    for i in range(n):
        img = np.full((CLIP_H, CLIP_W, 3), (5 * i) % 256, np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = i
        for p in s.encode(frame):
            out.mux(p)
        time.sleep(max(0.0, t0 + (i + 1) / CLIP_FPS - time.monotonic()))  # live pace
    for p in s.encode():
        out.mux(p)
    out.close()  # sends TEARDOWN; the ffmpeg receiver then finalizes and exits

    assert rtsp_receiver.wait(20) == 0, rtsp_receiver.log()
    with av.open(str(rtsp_receiver.out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == n
    assert frames[0].shape == (CLIP_H, CLIP_W, 3)
    means = [float(f.mean()) for f in frames]
    assert means == pytest.approx([(5 * i) % 256 for i in range(n)], abs=4)
