"""Live feeds on a local Ray: the feeds file is checked, and a dead camera is reported and
stopped quickly. An actor lost mid-run that comes back and resumes its feed, its cut segment
recovered: ``test_cluster.py``, where its whole node is killed."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from streamderain.feeds import StreamDerainError, read_feeds
from tests.live.test_live import interrupt_cli, start_cli

# alone, after the parallel pass: a real server or cluster on real time, which a busy
# machine makes late
pytestmark = pytest.mark.serial


def test_a_feeds_file_is_checked(tmp_path):
    bad = tmp_path / "feeds.toml"
    bad.write_text('[[feed]]\nname = "a"\nsource = "rtsp://x/1"\n')
    with pytest.raises(StreamDerainError, match="feed 1 has no output"):
        read_feeds(bad)
    bad.write_text(
        '[[feed]]\nname="a"\nsource="s"\noutput="o"\n[[feed]]\nname="a"\nsource="t"\noutput="p"\n'
    )
    with pytest.raises(StreamDerainError, match="two feeds have the name 'a'"):
        read_feeds(bad)
    bad.write_text('[[feed]]\nname="site/gate"\nsource="s"\noutput="o"\n')  # no segment found
    with pytest.raises(StreamDerainError, match="'site/gate' cannot name a segment"):
        read_feeds(bad)
    proc = start_cli("feeds", tmp_path / "missing.toml")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and len(err.strip().splitlines()) == 1, err


def test_feeds_take_run_options_per_feed_and_name_what_is_wrong(tmp_path):
    good = tmp_path / "feeds.toml"
    good.write_text(
        '[[feed]]\nname="a"\nsource="rtsp://x/1"\noutput="o"\nreconnect_timeout=60\n'
        'rtsp_transport="udp"\n'
    )
    (feed,) = read_feeds(good)
    assert dict(feed.options) == {"reconnect_timeout": 60, "rtsp_transport": "udp"}
    # a Ray actor's folder may not be this one: a local output is made absolute, ~ expanded
    assert feed.output == str(Path.cwd() / "o")
    good.write_text('[[feed]]\nname="a"\nsource="rtsp://x/1"\noutput="~/feeds"\n')
    assert read_feeds(good)[0].output == str(Path.home() / "feeds")
    cases = {
        '[feed]\nname="a"\nsource="s"\noutput="o"\n': "as a [[feed]] table",
        '[[feed]]\nname="a"\nsource="s"\noutput="o"\nreconect_timeout=3\n': "unknown option",
        '[[feed]]\nname="a"\nsource="s"\noutput="o"\nmodel="x.pt"\n': (
            "model is the command's, one model for every feed (--model)"
        ),
        # read as text before: a list became the source "['rtsp://a', 'rtsp://b']"
        '[[feed]]\nname="a"\nsource=["rtsp://a","rtsp://b"]\noutput="o"\n': (
            "source must be text in quotes, got ['rtsp://a', 'rtsp://b']"
        ),
        '[[feed]]\nname=0\nsource="s"\noutput="o"\n': "name must be text in quotes, got 0",
        'reconnect_timeout=5\n[[feed]]\nname="a"\nsource="s"\noutput="o"\n': (
            "unknown reconnect_timeout outside the [[feed]] tables"
        ),
        '[[feed]]\nname="a"\nsource="s"\noutput="/data/gate.mp4"\n': (
            "output '/data/gate.mp4' is a folder of segments (a-DATE-TIME.mkv); name a folder"
        ),
        '[[feed]]\nname="a"\nsource="s"\noutput="rtsp://r/x"\n'
        '[[feed]]\nname="b"\nsource="t"\noutput="rtsp://r/x"\n': (
            "two feeds have the output 'rtsp://r/x'"
        ),
        '[[feed]]\nname="a"\nsource="s"\noutput="rtsp://r/x"\n'
        '[[feed]]\nname="b"\nsource="t"\noutput="rtsp://r/x/"\n': (
            "two feeds have the output 'rtsp://r/x/'"
        ),
        '[[feed]]\nname="a"\nsource="s"\noutput="o"\nreconnect_timeout="abc"\n': (
            "reconnect-timeout must be a number, got 'abc'"
        ),
        '[[feed]]\nname="a"\nsource="s"\noutput="o"\nduration=true\n': "duration must be",
        '[[feed]]\nname="a"\nsource="s"\noutput="o"\nreconnect_timeout=-1\n': "must be >= 0",
    }
    for text, message in cases.items():
        good.write_text(text)
        with pytest.raises(StreamDerainError, match=re.escape(message)):
            read_feeds(good)
    proc = start_cli("feeds", good, "--reconnect-timeout", "5")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "must be >= 0" in err and "no such option" not in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_dead_camera_is_reported_and_ctrl_c_stops_its_feed_quickly(tmp_path, signum):
    """A camera that never answers: the feed says so (not silence), and Ctrl-C ends it in a
    few seconds even while it is still trying to connect. So does a service manager's SIGTERM,
    which Ray's driver takes for itself unless we take it back (a crash report and exit)."""
    pytest.importorskip("ray")
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(
        f'[[feed]]\nname = "dead"\nsource = "rtsp://127.0.0.1:9/none"\noutput = "{tmp_path}"\n'
        f'[[feed]]\nname = "yard"\nsource = "{tmp_path}/gone.mp4"\noutput = "{tmp_path}"\n'
    )
    proc = start_cli("feeds", feeds, "--ray", "local")
    seen = []
    deadline = time.monotonic() + 180
    for line in proc.stderr:  # a feed that ends is said at once, while the others run on
        seen.append(line)
        said = "".join(seen)
        if "cannot connect" in said and "feed yard ended" in said or time.monotonic() > deadline:
            break
    said = "".join(seen)
    assert "cannot connect" in said and "127.0.0.1:9" in said, seen
    assert "feed yard ended: " in said and "gone.mp4: no such file" in said, seen
    asked = time.monotonic()
    err = interrupt_cli(proc, signum=signum)
    assert proc.returncode == 130, "".join(seen) + err
    assert time.monotonic() - asked < 25, "Ctrl-C stops a connecting feed in seconds"
    assert "feeds stopped" in err and "Traceback" not in err and "SIGTERM received" not in err
    assert "authentication" not in "".join(seen) + err, "Ray's notice about it stays out"
