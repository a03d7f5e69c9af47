#!/usr/bin/python3
"""Tiny RTSP server for live tests: serves one local MP4 (H.264) at rtsp://HOST:PORT/MOUNT.

Runs under the SYSTEM python (/usr/bin/python3), which has python3-gi and
gir1.2-gst-rtsp-server-1.0 from Debian; the project venv cannot import gi.

    /usr/bin/python3 tests/live/rtsp_server.py CLIP.mp4 --port 0 [--loop] [--mount /clip]
    /usr/bin/python3 tests/live/rtsp_server.py --record OUT.mkv --port 0 [--mount /clip]

The H.264 stream is not re-encoded (qtdemux ! h264parse ! rtph264pay), so CPU use is
negligible; the RTSP server's sinks sync on the clock, so packets go out at real-time pace.
Every client gets its own pipeline that starts at the beginning of the file. With --loop
the file repeats (gapless, timestamps keep increasing); without it the stream ends (EOS).

With --record it instead accepts a publisher (ANNOUNCE/RECORD, e.g. PyAV format="rtsp"
mode="w") and writes its H.264 unchanged to OUT.mkv, printing ``RECORDED OUT.mkv`` once the
session is torn down and the file is finalized. Publish at real-time pace: a publisher that
bursts (100 frames in 0.15 s) loses about half its frames here (the ffmpeg listener doesn't).

When it is listening it prints one line ``READY rtsp://HOST:PORT/MOUNT`` on stdout (flushed)
and logs to stderr. It exits on SIGTERM/SIGINT (and at stdin EOF with --exit-with-stdin);
SIGKILL is fine too.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def log(msg: str) -> None:
    print(f"[rtsp_server {os.getpid()}] {msg}", file=sys.stderr, flush=True)


def install_loop(media: GstRtspServer.RTSPMedia) -> None:
    """Make the media's qtdemux start over instead of ending (gapless, real-time).

    At EOS on a qtdemux source pad: drop the EOS, add the played duration to the pad's
    running-time offset, and issue a FLUSHING seek to 0 on qtdemux alone, dropping its
    flush events so nothing downstream (payloader, RTSP sinks) is flushed. Running time,
    and so the RTP timestamps the client sees, keeps increasing across the loop point.
    (A non-flushing seek does not work: the pad stays flagged EOS and refuses data.)
    """
    demux = media.get_element().get_by_name("demux")

    def attach(pad: Gst.Pad) -> None:
        st = {"end": 0, "offset": 0, "seeking": False}

        def do_seek() -> None:
            st["offset"] += st["end"]
            st["end"] = 0
            pad.set_offset(st["offset"])
            ok = demux.seek(
                1.0,
                Gst.Format.TIME,
                Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT,
                Gst.SeekType.SET,
                0,
                Gst.SeekType.NONE,
                -1,
            )
            st["seeking"] = False
            log(f"loop: back to 0 (offset {st['offset'] / 1e9:.2f}s) -> {ok}")

        def probe(_pad, info):
            if info.type & Gst.PadProbeType.BUFFER:
                buf = info.get_buffer()
                if buf.pts != Gst.CLOCK_TIME_NONE:
                    dur = buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else 0
                    st["end"] = max(st["end"], buf.pts + dur)
                return Gst.PadProbeReturn.OK
            ev = info.get_event()
            if ev is None:
                return Gst.PadProbeReturn.OK
            if ev.type == Gst.EventType.EOS:
                if not st["seeking"]:
                    st["seeking"] = True
                    # Never seek from the streaming thread itself.
                    threading.Thread(target=do_seek, daemon=True).start()
                return Gst.PadProbeReturn.DROP
            if st["seeking"] and ev.type in (Gst.EventType.FLUSH_START, Gst.EventType.FLUSH_STOP):
                return Gst.PadProbeReturn.DROP
            return Gst.PadProbeReturn.OK

        pad.add_probe(
            Gst.PadProbeType.BUFFER
            | Gst.PadProbeType.EVENT_DOWNSTREAM
            | Gst.PadProbeType.EVENT_FLUSH,
            probe,
        )

    def on_pad_added(_demux, pad):
        if pad.get_direction() == Gst.PadDirection.SRC:
            attach(pad)

    for pad in demux.srcpads:
        attach(pad)
    demux.connect("pad-added", on_pad_added)


def play_factory(clip: str, loop: bool) -> GstRtspServer.RTSPMediaFactory:
    factory = GstRtspServer.RTSPMediaFactory()
    location = clip.replace("\\", "\\\\").replace('"', '\\"')
    # h264parse (not the payloader) re-inserts SPS/PPS in front of every IDR: with
    # rtph264pay config-interval=-1 instead, FFmpeg splits each IDR access unit in two
    # and the decoder emits a duplicate frame (same pts) at every keyframe.
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux name=demux demux.video_0 '
        "! queue ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 config-interval=0 )"
    )
    factory.set_shared(False)  # each client: own pipeline, from the start of the file
    factory.set_eos_shutdown(False)
    if loop:
        factory.connect("media-configure", lambda _f, media: install_loop(media))
    return factory


def record_factory(out: str) -> GstRtspServer.RTSPMediaFactory:
    """Accept ANNOUNCE/RECORD of one H.264 stream and write it, unchanged, to Matroska."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
    location = out.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( rtph264depay name=depay0 ! h264parse ! matroskamux ! filesink location="{location}" )'
    )
    factory.set_eos_shutdown(True)  # EOS on TEARDOWN, so matroskamux finalizes the file

    def on_configure(_f, media):
        def unprepared(_m):
            print(f"RECORDED {out}", flush=True)

        media.connect("unprepared", unprepared)

    factory.connect("media-configure", on_configure)
    return factory


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clip", nargs="?", help="local .mp4 with an H.264 video track (PLAY)")
    ap.add_argument(
        "--record",
        metavar="OUT.mkv",
        help="instead of serving CLIP, accept a publisher (RECORD) into OUT.mkv",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    ap.add_argument("--mount", default="/clip")
    ap.add_argument("--loop", action="store_true", help="repeat the file forever")
    ap.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="quit when stdin reaches EOF (the parent died or closed the pipe)",
    )
    args = ap.parse_args()
    if (args.clip is None) == (args.record is None):
        ap.error("give either CLIP or --record OUT.mkv")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))

    if args.record:
        out = os.path.abspath(args.record)
        factory = record_factory(out)
        what = f"recording to {out}"
    else:
        clip = os.path.abspath(args.clip)
        if not os.path.isfile(clip):
            log(f"no such file: {clip}")
            return 2
        factory = play_factory(clip, args.loop)
        what = f"serving {clip} loop={args.loop}"
    server.get_mount_points().add_factory(args.mount, factory)

    if server.attach(None) == 0:
        log(f"could not listen on {args.host}:{args.port}")
        return 3
    port = server.get_bound_port()

    loop = GLib.MainLoop()

    def stop(*_a):
        log("stopping")
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, stop)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, stop)
    if args.exit_with_stdin:
        GLib.io_add_watch(
            GLib.IOChannel.unix_new(sys.stdin.fileno()),
            GLib.PRIORITY_DEFAULT,
            GLib.IOCondition.IN | GLib.IOCondition.HUP | GLib.IOCondition.ERR,
            lambda ch, _cond: stop() if not os.read(ch.unix_get_fd(), 4096) else True,
        )

    # Drop sessions of clients that vanished, so a dead client does not pin a pipeline.
    def cleanup() -> bool:
        server.get_session_pool().cleanup()
        return GLib.SOURCE_CONTINUE

    GLib.timeout_add_seconds(2, cleanup)

    print(f"READY rtsp://{args.host}:{port}{args.mount}", flush=True)
    log(what)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
