"""A lost node on a real multi-node Ray cluster: a head and two worker nodes (three raylets) on
this machine, all bound to 127.0.0.1, run by ``ray.cluster_utils.Cluster``. The command joins
it with ``--ray ADDRESS`` as it would a real cluster; a worker node is then removed mid-run the
hard way (its Ray processes SIGKILLed, no goodbye to the head; its workers die with its raylet),
as when a machine goes away.

* a live feed (a real RTSP camera) resumes on the other node, the dead node's segment recovered;
* a batch finishes every input exactly once, with a true manifest.

The head has no CPU, so actors land only on the worker nodes, where the test puts them: the
feed on the one node that exists until the second is added, the batch's two actors one per node.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamderain.jobs import MANIFEST
from tests.conftest import process_stat, process_titles, running
from tests.live.test_live import STACKS_ON_ABORT
from tests.media import clean_frames, decode_all, make_clip

# alone, after the parallel pass: a real server or cluster on real time, which a busy
# machine makes late
pytestmark = pytest.mark.serial

CLI = [sys.executable, "-m", "streamderain"]
HEAD = {"num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": False}
WORKER_NODE = {"num_cpus": 1, "node_ip_address": "127.0.0.1"}
# Ray rewrites 127.0.0.1 in an address into this machine's network address unless its cluster
# switch is off (which only makes it keep loopback): the nodes listen on 127.0.0.1 alone.
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# The head declares a silent node dead after about 5 s instead of Ray's 15 to 25: the tests wait
# for that twice, and a node here is only ever silent because the test removed it.
FAST_NODE_DEATH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "5",
}


@contextlib.contextmanager
def ray_cluster(monkeypatch: pytest.MonkeyPatch, worker_nodes: int) -> Iterator:
    """(cluster, [worker node, ...]); skips the test where a multi-node cluster cannot start."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    for key, value in {**LOOPBACK_ONLY, **FAST_NODE_DEATH}.items():
        monkeypatch.setenv(key, value)
    try:
        cluster = Cluster(initialize_head=True, head_node_args=HEAD)
    except Exception as exc:  # Ray's start-up errors have no common base class
        pytest.skip(f"cannot start a Ray head node here: {exc}")
    try:
        _forget_cluster_address()
        try:
            nodes = [cluster.add_node(**WORKER_NODE) for _ in range(worker_nodes)]
        except Exception as exc:
            pytest.skip(f"cannot add Ray worker nodes here: {exc}")
        yield cluster, nodes
    finally:
        cluster.shutdown()


def _forget_cluster_address() -> None:
    """Cluster records its address in /tmp/ray as "the" Ray of this machine; forget it, so that
    a plain ``ray.init()`` elsewhere (``--ray local`` in other tests) still starts its own."""
    try:
        from ray._common.utils import reset_ray_address
    except ImportError:  # Ray before 2.48
        from ray._private.utils import reset_ray_address
    reset_ray_address()


def raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


class Command:
    """The real command in its own process, its stderr in a file (a pipe nobody reads while
    it runs could fill and block it)."""

    def __init__(self, log: Path, *args: str | Path) -> None:
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [*CLI, *map(str, args)],
                env={**os.environ, **LOOPBACK_ONLY, **STACKS_ON_ABORT},
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def wait(self, timeout: float) -> tuple[int, str]:
        """Its exit status and stderr, once it ends (aborted after ``timeout``: its stderr then
        ends with the stacks it was stuck in)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        return self.proc.returncode, self.log.read_text()

    def stop(self) -> tuple[int, str]:
        """Ctrl-C, then :meth:`wait`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(90)

    def wait_for(self, check: Callable, timeout: float, what: str, step: float = 0.25):
        """``check()``'s first true answer, polled while the command runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            if self.proc.poll() is not None:
                pytest.fail(f"the command ended before {what}: {self.stop()[1]}")
            time.sleep(step)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}: {self.stop()[1]}")


def children(parent: int, title: bytes) -> list[int]:
    """Processes of ``parent`` whose title (set by Ray) starts with ``title``."""
    return [
        pid
        for pid, own in process_titles()
        if own.startswith(title) and process_stat(pid)[1:2] == [str(parent)]
    ]


def grown(folder: Path, pattern: str, size: int = 20_000) -> list[Path]:
    return [p for p in folder.glob(pattern) if p.stat().st_size > size]


def test_a_feed_resumes_on_another_node_when_its_node_is_lost(rtsp_server, tmp_path, monkeypatch):
    out = tmp_path / "cam"
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(f'[[feed]]\nname = "cam1"\nsource = "{rtsp_server.url}"\noutput = "{out}"\n')
    with ray_cluster(monkeypatch, worker_nodes=1) as (cluster, [first]):
        cmd = Command(
            tmp_path / "feeds.log", "feeds", feeds, "--ray", cluster.address, "--threads", "1"
        )
        try:
            cmd.wait_for(
                lambda: out.is_dir() and grown(out, ".cam1-*.partial.mkv"), 180, "a segment"
            )
            [actor] = cmd.wait_for(
                lambda: children(raylet_pid(first), b"ray::FeedWorker"), 30, "the feed's actor"
            )
            second = cluster.add_node(**WORKER_NODE)
            cluster.remove_node(first, allow_graceful=False)
            cmd.wait_for(lambda: not running(actor), 60, "the lost node's actor to die with it")
            recovered = cmd.wait_for(lambda: list(out.glob("cam1-*.mkv")), 180, "the recovery")
            cmd.wait_for(lambda: grown(out, ".cam1-*.partial.mkv"), 180, "a new segment")
            assert children(raylet_pid(second), b"ray::FeedWorker"), "resumed on the other node"
        finally:
            status, err = cmd.stop()
    assert status == 130, err
    assert "recovered" in err and "Traceback" not in err, err
    segments = sorted(out.glob("cam1-*.mkv"))
    assert len(segments) == 2 and segments[0] == recovered[0], segments
    assert not list(out.glob(".*partial*")), "the last segment is closed on Ctrl-C"
    for segment in segments:
        assert len(decode_all(segment)[0]) > 5, segment


CLIPS, FRAMES = 8, 24


def test_a_batch_loses_a_node_and_does_every_input_once(shared, tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    frames = clean_frames(FRAMES, (96, 64))
    names = [f"clip{i}.mp4" for i in range(CLIPS)]
    for name in names:
        make_clip(src / name, frames)

    def done() -> list[dict]:
        lines = (out / MANIFEST).read_text().splitlines() if (out / MANIFEST).exists() else []
        return [json.loads(line) for line in lines if line.endswith("}")]

    with ray_cluster(monkeypatch, worker_nodes=2) as (cluster, [doomed, _]):
        cmd = Command(
            tmp_path / "batch.log",
            *("batch", src / "*.mp4", "--out-dir", out, "--threads", "1", "--ray", cluster.address),
        )
        try:
            # Two actors, one per node, each always holding a file until the last ones: with
            # two files or more still to do, both are mid-file.
            cmd.wait_for(lambda: len(done()) >= 1, 240, "a first file done", step=0.1)
            assert len(done()) <= CLIPS - 2, "the batch ran too fast to lose a node mid-run"
            assert children(raylet_pid(doomed), b"ray::Worker"), "an actor on each node"
            cluster.remove_node(doomed, allow_graceful=False)
            status, err = cmd.wait(300)
        finally:
            cmd.stop()
    assert status == 0, err
    assert "a Ray worker died" in err and "Traceback" not in err, err
    records = done()
    assert sorted(Path(r["input"]).name for r in records) == names, "every input exactly once"
    for r in records:
        assert (r["status"], r["reason"], r["frames"]) == ("done", "", FRAMES), r
        assert r["output"] == str(out / Path(r["input"]).name)
        assert len(decode_all(Path(r["output"]))[0]) == FRAMES, r["output"]
    assert not list(out.glob(".*partial*")), "the lost node's half-written file is redone"


def test_a_batch_that_loses_its_last_node_says_it_waits_for_one(shared, tmp_path, monkeypatch):
    """The only worker node lost: Ray holds the new worker's file until a node joins, and the
    run waited without a word, as if hung. It says so, and Ctrl-C still stops it."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    frames = clean_frames(FRAMES, (96, 64))
    for i in range(4):
        make_clip(src / f"clip{i}.mp4", frames)
    with ray_cluster(monkeypatch, worker_nodes=1) as (cluster, [only]):
        cmd = Command(
            tmp_path / "batch.log",
            *("batch", src / "*.mp4", "--out-dir", out, "--threads", "1", "--ray", cluster.address),
        )
        try:
            cmd.wait_for(lambda: (out / MANIFEST).exists(), 240, "a first file done", step=0.1)
            cluster.remove_node(only, allow_graceful=False)
            cmd.wait_for(
                lambda: "no node of the Ray cluster has 1 CPU" in cmd.log.read_text(),
                60,
                "the run to say it waits for a node",
            )
        finally:
            status, err = cmd.stop()
    assert status == 130, err
    assert "Traceback" not in err, err
