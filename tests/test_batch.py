"""``streamderain batch``: many clips, a bad one among them, resuming, and the same run on Ray."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamderain import api, runner
from streamderain.errors import StreamDerainError
from streamderain.jobs import (
    MANIFEST,
    Job,
    Result,
    expand_inputs,
    open_manifest,
    plan,
    read_manifest,
    summary_table,
)
from streamderain.options import RunOptions
from streamderain.targets import lock_partial, partial_path
from streamderain.workers import Worker
from tests.live.test_live import interrupt_cli, start_cli
from tests.media import clean_frames, decode_all, make_clip, packets
from training.route import HEAVY_MODEL, LIGHT_MODEL

FRAMES = 6
GOOD = ("a.mp4", "b.mkv", "c.mp4")
# Lossless video, so that the Ray run's outputs can be compared frame for frame: at CRF 18 one
# clip in a few runs came back a different (still 45 dB close) encode of the same frames.
SAME_AS_RAY = ("--workers", "2", "--threads", "1", "--crf", "0")


def batch(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    """The real command, in its own process (its workers are spawned processes or Ray actors)."""
    return subprocess.run(
        [sys.executable, "-m", "streamderain", "batch", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, shared: Path) -> Path:
    """Three good clips, a folder of images, and a file of random bytes named like a video."""
    root = tmp_path_factory.mktemp("batch")
    src = root / "in"
    src.mkdir()
    frames = clean_frames(FRAMES, (96, 64))
    for name in GOOD:
        make_clip(src / name, frames)
    (src / "stills").mkdir()
    for i, f in enumerate(frames[:3]):
        cv2.imwrite(str(src / "stills" / f"{i:03d}.png"), f[..., ::-1])
    (src / "bad.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return root


@pytest.fixture(scope="module")
def local_run(inputs: Path) -> tuple[subprocess.CompletedProcess, Path]:
    out = inputs / "out-local"
    run = batch("in/*.m*", "in/stills", "--out-dir", out, *SAME_AS_RAY, cwd=inputs)
    return run, out


def test_batch_reports_the_bad_file_and_derains_the_rest(local_run) -> None:
    run, out = local_run
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    records = {Path(r["input"]).name: r for r in manifest(out)}
    assert sorted(records) == sorted([*GOOD, "bad.mp4", "stills"])
    bad = records.pop("bad.mp4")
    assert bad["status"] == "failed" and "bad.mp4: cannot open as video" in bad["reason"]
    assert "\n" not in bad["reason"]
    for name, r in records.items():
        assert r["status"] == "done" and r["reason"] == "", r
        assert r["output"] == str(out / name) and r["seconds"] > 0 and r["fps"] > 0
    for name in GOOD:
        assert records[name]["frames"] == FRAMES
        assert len(decode_all(out / name)[0]) == FRAMES
    assert records["stills"]["frames"] == 3 and len(list((out / "stills").glob("*.png"))) == 3
    table = run.stderr.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("input"))
    rows = {line.split()[0]: line for line in table[header + 1 :]}
    assert "failed" in rows["in/bad.mp4"] and "cannot open as video" in rows["in/bad.mp4"]
    assert rows["in/a.mp4"].split()[1:3] == ["done", str(FRAMES)]


def test_rerun_skips_what_is_done(local_run, inputs: Path) -> None:
    _, out = local_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    listing = inputs / "inputs.txt"
    listing.write_text("# one per line\n" + "".join(f"in/{n}\n" for n in [*GOOD, "bad.mp4"]))
    again = batch("--list", listing, "in/stills", "--out-dir", out, *SAME_AS_RAY, cwd=inputs)
    assert again.returncode == 1, again.stderr
    assert "4 input(s) done in an earlier run: skipped" in again.stderr
    records = manifest(out)
    assert len(records) == 6  # the first run's five, and bad.mp4 once more
    assert Path(records[-1]["input"]).name == "bad.mp4" and records[-1]["status"] == "failed"
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != MANIFEST}
    assert after == {k: v for k, v in before.items() if k != MANIFEST}


@pytest.mark.serial  # Ray beside other tests: its cluster starts late
def test_ray_gives_the_same_outputs(local_run, inputs: Path) -> None:
    pytest.importorskip("ray")
    _, local = local_run
    out = inputs / "out-ray"
    # one worker more than the cluster places: an actor never placed held its file forever
    many = str(len(os.sched_getaffinity(0)) + 1)
    same = ("--workers", many, *SAME_AS_RAY[2:])
    run = batch("in/*.m*", "in/stills", "--out-dir", out, *same, "--ray", "local", cwd=inputs)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert f"--workers {many}: the Ray cluster has room for" in run.stderr
    status = sorted((Path(r["input"]).name, r["status"]) for r in manifest(out))
    assert status == sorted([*((n, "done") for n in [*GOOD, "stills"]), ("bad.mp4", "failed")])
    for name in GOOD:
        ours, theirs = decode_all(out / name)[0], decode_all(local / name)[0]
        assert len(ours) == FRAMES
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True)), name
    for png in (local / "stills").glob("*.png"):
        a, b = cv2.imread(str(png)), cv2.imread(str(out / "stills" / png.name))
        assert np.array_equal(a, b), (png.name, int(np.abs(a.astype(int) - b).max()))


@pytest.mark.serial  # Ray beside other tests: its cluster starts late
def test_sigterm_stops_a_ray_batch_as_ctrl_c_does(inputs: Path) -> None:
    """A service manager's stop: Ray's driver takes SIGTERM for itself (a crash report and
    exit) unless the batch takes it back; it then stops as Ctrl-C does, for a rerun to finish."""
    pytest.importorskip("ray")
    out = inputs / "out-sigterm"
    proc = start_cli("batch", inputs / "in" / "a.mp4", "--out-dir", out, "--ray", "local", "-v")
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "Ray actor(s)" in line:
            break
    err = "".join(seen) + interrupt_cli(proc, signum=signal.SIGTERM)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "SIGTERM received" not in err and "Traceback" not in err


@pytest.mark.parametrize("to", ["group", "driver"])
def test_sigterm_finishes_a_local_batchs_files(tmp_path: Path, shared, to: str) -> None:
    """A service manager's stop, to the whole group or to the driver alone (``kill PID``,
    ``docker stop``): each worker closes its file playable and recorded for a re-run to finish,
    as on Ctrl-C, instead of dying with a hidden partial or running on to the file's end."""
    src = tmp_path / "long.mp4"
    make_clip(src, clean_frames(75, (256, 144)))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamderain", "batch", src, "--out-dir", out, "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    partial = partial_path(out / "long.mp4")
    deadline = time.monotonic() + 120
    # the muxer writes nothing before the first frame
    while not (partial.exists() and partial.stat().st_size) and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    assert partial.stat().st_size, "the worker is writing the file"
    (os.killpg if to == "group" else os.kill)(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err
    (record,) = manifest(out)
    done = re.fullmatch(r"interrupted; the output holds the (\d+) frames done", record["reason"])
    assert record["status"] == "failed" and done, record
    assert len(decode_all(out / "long.mp4")[0]) == int(done[1]) > 0 and not partial.exists()


def test_a_batch_of_many_files_does_not_fill_the_workers_pipe(tmp_path: Path, shared) -> None:
    """Each worker says which input it takes through a pipe: one read only after a crash
    filled after some hundreds of files, and the batch hung."""
    from streamderain.workers import run_local

    long = "camera-front-left-" * 5
    jobs = [
        Job(str(tmp_path / f"{long}{i:04d}.mp4"), str(tmp_path / f"{i}.mp4")) for i in range(500)
    ]
    results = []
    run_local(jobs, RunOptions.of(device="cpu", model="dcsfn-lite"), results.append, workers=1)
    assert len(results) == 500 and all("no such file" in r.reason for r in results)


def test_ctrl_c_while_the_workers_start_is_a_clean_stop(tmp_path: Path, shared) -> None:
    """The workers import torch for seconds after they start: a Ctrl-C then printed a
    traceback from each of them."""
    for name in ("a.mp4", "b.mp4"):
        make_clip(tmp_path / name, clean_frames(FRAMES, (96, 64)))
    cmd = [sys.executable, "-m", "streamderain", "batch", "-v", "--workers", "2", "--threads", "1"]
    cmd += [tmp_path / "a.mp4", tmp_path / "b.mp4", "--out-dir", tmp_path / "out"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "worker process(es)" in line:
            break
    time.sleep(1.0)  # while they import
    os.killpg(proc.pid, signal.SIGINT)
    err = "".join(seen) + proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and "Traceback" not in err, err


def test_a_worker_loads_the_model_once(
    inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = []
    load = runner.load_model
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loads.append(a) or load(*a, **k))
    worker = Worker(RunOptions.of(device="cpu"), "cpu", threads=1)
    made = api.ModelRunner
    results = [worker.derain(Job(str(inputs / "in" / n), str(tmp_path / n))) for n in GOOD]
    assert [(r.status, r.frames) for r in results] == [("done", FRAMES)] * len(GOOD), results
    # the default, auto, holds two models: each loaded once for all the files
    assert loads == [(LIGHT_MODEL,), (HEAVY_MODEL,)] and api.ModelRunner is made
    bad = worker.derain(Job(str(inputs / "in" / "bad.mp4"), str(tmp_path / "bad.mp4")))
    assert bad.status == "failed" and "cannot open as video" in bad.reason
    for size in ((64, 48), (96, 64)):  # a stream whose picture changes size midway
        make_clip(tmp_path / f"{size[0]}.ts", clean_frames(FRAMES, size))
    mixed = tmp_path / "mixed.ts"
    mixed.write_bytes((tmp_path / "64.ts").read_bytes() + (tmp_path / "96.ts").read_bytes())
    midway = worker.derain(Job(str(mixed), str(tmp_path / "mixed.mp4")))
    assert midway.status == "done", midway  # at its first size, the rest scaled to it
    assert {image.shape for image in decode_all(tmp_path / "mixed.mp4")[0]} == {(48, 64, 3)}
    after = worker.derain(Job(str(inputs / "in" / GOOD[0]), str(tmp_path / "after.mp4")))
    assert (after.status, after.frames) == ("done", FRAMES), "the next file is not stopped"
    dated = tmp_path / "2023.12.01"  # a folder of pictures whose name looks like a suffix
    shutil.copytree(inputs / "in" / "stills", dated)
    pictures = worker.derain(Job.of(str(dated), tmp_path / "out" / dated.name))
    assert (pictures.status, pictures.frames) == ("done", 3), pictures
    assert len(list((tmp_path / "out" / dated.name).glob("*.png"))) == 3
    before = Job.of(str(dated), tmp_path / "out" / dated.name)
    picture = dated / "001.png"
    os.utime(picture, ns=(picture.stat().st_atime_ns, dated.stat().st_mtime_ns + 10**9))
    assert Job.of(str(dated), tmp_path / "x").mtime > before.mtime, "a picture edited counts"
    assert before.size == sum(p.stat().st_size for p in dated.iterdir())


def test_a_feed_worker_can_be_told_to_stop_outside_ray(shared) -> None:
    """FeedWorker.stop is a method of its own, also when called directly (not as a Ray actor)."""
    from streamderain.feeds import FeedWorker

    worker = FeedWorker(RunOptions.of(device="cpu"), "cpu", threads=1)
    worker.stop()
    assert worker.stopping and worker.stop_file.is_set()


def test_a_feed_recovers_its_own_segments_only(tmp_path: Path) -> None:
    """Feeds "cam" and "cam-2" share a folder: cam's restart renames its own half-written
    segment into place and leaves cam-2's, which may still be in progress; one cut before its
    first frame (empty) is removed; one another process has locked is left to it, though empty."""
    from streamderain.feeds import recover_segments

    for name in (".cam-20261206-070000.partial.mkv", ".cam-2-20261206-070000.partial.mkv"):
        (tmp_path / name).write_bytes(b"segment")
    (tmp_path / ".cam-20261206-080000.partial.mkv").touch()
    writing = tmp_path / ".cam-20261206-090000.partial.mkv"  # another process's, still going
    held = lock_partial(writing)
    assert recover_segments(tmp_path, "cam") == [tmp_path / "cam-20261206-070000.mkv"]
    os.close(held)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".cam-2-20261206-070000.partial.mkv",
        writing.name,
        "cam-20261206-070000.mkv",
    ]


def test_a_model_that_cannot_load_stops_the_batch_in_one_line(inputs: Path) -> None:
    run = batch("in/a.mp4", "--out-dir", inputs / "out-nomodel", "--model", "nope.pt", cwd=inputs)
    assert run.returncode == 1
    assert run.stderr.count("\n") == 1 and "error: " in run.stderr and "nope.pt" in run.stderr


def test_a_users_file_in_the_way_is_refused_on_every_run(inputs: Path) -> None:
    """The refusal is no outcome of ours: a second run must not take the file for our output."""
    out = inputs / "out-users"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"the user's own file")
    for _ in range(2):
        run = batch("in/a.mp4", "--out-dir", out, cwd=inputs)
        assert run.returncode == 1 and "exists (pass -y to overwrite)" in run.stderr, run.stderr
        assert (out / "a.mp4").read_bytes() == b"the user's own file"


def test_videos_in_containers_we_do_not_write_come_out_as_matroska(tmp_path: Path, shared) -> None:
    """A camera's .avi and .ts: derained into .mkv, sound and all, never onto another output."""
    src = tmp_path / "in"
    src.mkdir()
    frames = clean_frames(FRAMES, (96, 64))
    for name in ("cam.avi", "x.ts", "x.mkv"):
        make_clip(src / name, frames, audio=name != "x.ts")
    out = tmp_path / "out"
    run = batch("in/cam.avi", "in/x.ts", "in/x.mkv", "--out-dir", out, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir() if p.name != MANIFEST) == [
        "cam.mkv",
        "x.mkv",
        "x.ts.mkv",
    ]
    for name in ("cam.mkv", "x.mkv", "x.ts.mkv"):
        assert len(decode_all(out / name)[0]) == FRAMES, name
    assert len(packets(out / "cam.mkv", "audio")) > 0


def test_a_folder_of_clips_with_a_picture_is_still_its_clips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One thumbnail beside a day's clips made the folder a sequence of one picture, its clips
    left out unsaid; a clip named through a link to its folder was done twice."""
    monkeypatch.chdir(tmp_path)
    for name in ("rec/day1/cam1.mp4", "rec/day1/thumb.jpg", "rec/day2/cam2.mp4", "seq/1.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "link").symlink_to(tmp_path / "rec/day2")
    found = expand_inputs(["rec", "seq", "link/cam2.mp4"])
    assert found == [str(tmp_path / p) for p in ("rec/day1/cam1.mp4", "rec/day2/cam2.mp4", "seq")]
    assert "rec/day1: pictures beside its videos left out (1;" in caplog.text


def test_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("x/a.mp4", "y/a.mp4", "y/b.mp4", "out/old.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    jobs, _ = plan(expand_inputs(["*/a.mp4"]), tmp_path / "out")
    outputs = [str(tmp_path / "out" / d / "a.mp4") for d in ("x", "y")]
    assert [j.output for j in jobs] == outputs, "inputs of one name keep their folders"
    # A glob over the outputs folder leaves out what an earlier batch made there, and its
    # manifest, but not the user's own files; nothing else left is an error.
    out = tmp_path / "out"
    (out / "b.mp4").touch()
    (out / MANIFEST).write_text(
        Result(str(tmp_path / "x/a.mp4"), str(out / "old.mp4"), "done").to_json()
    )
    jobs, _ = plan(expand_inputs(["y/b.mp4", "out/*"]), out)
    assert [j.input for j in jobs] == [str(tmp_path / "y/b.mp4"), str(out / "b.mp4")]
    with pytest.raises(StreamDerainError, match="outputs of an earlier batch"):
        plan(expand_inputs(["out/old.mp4"]), out)
    # An output nobody recorded needs -y; two inputs never share an output.
    jobs, known = plan(expand_inputs(["y/b.mp4"]), out)
    assert jobs == [] and known[str(tmp_path / "y/b.mp4")].reason.endswith("(pass -y to overwrite)")
    (tmp_path / "y/b.ts").touch()
    (tmp_path / "y/b.avi").touch()
    jobs, known = plan(expand_inputs(["y/b.ts", "y/b.avi"]), out)
    assert sorted(Path(j.output).name for j in jobs) == ["b.mkv", "b.ts.mkv"]
    for name in ("y/camera-dump", "y/photo.jpg"):  # a video with no suffix was a folder of PNGs
        (tmp_path / name).touch()
    jobs, known = plan(expand_inputs(["y/camera-dump", "y/photo.jpg"]), out)
    assert sorted(Path(j.output).name for j in jobs) == ["camera-dump.mkv", "photo.jpg"]
    jobs, known = plan(["rtsp://cam/b.mp4", str(tmp_path / "y/b.mp4")], out, overwrite=True)
    assert [j.input for j in jobs] == [str(tmp_path / "y/b.mp4")], "a refused input owns nothing"
    jobs, known = plan(expand_inputs(["y/b.mp4"]), tmp_path / "y", overwrite=True)
    assert "output is the input" in known[str(tmp_path / "y/b.mp4")].reason
    jobs, known = plan(expand_inputs(["y/b.mp4"]), tmp_path / "out", overwrite=True)
    assert [j.output for j in jobs] == [str(tmp_path / "out/b.mp4")] and known == {}
    # an input done alone at out/x.mp4, batched beside one that mirrors there: each to its own
    for name in ("d/x.mp4", "d/a/x.mp4", "out/x.mp4"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    with open(out / MANIFEST, "a") as manifest:
        manifest.write(
            "\n" + Result(str(tmp_path / "d/a/x.mp4"), str(out / "x.mp4"), "done").to_json()
        )
    jobs, known = plan(expand_inputs(["d"]), out)
    assert {Path(j.input).relative_to(tmp_path): Path(j.output).relative_to(out) for j in jobs} == {
        Path("d/x.mp4"): Path("x.mp4"),
        Path("d/a/x.mp4"): Path("a/x.mp4"),
    } and known == {}
    (tmp_path / "y/clip [1].mp4").touch()  # the shell's expansion, taken as it is named
    assert expand_inputs(["y/clip [1].mp4"]) == [str(tmp_path / "y/clip [1].mp4")]
    (tmp_path / "pictures").mkdir()  # its output folder left empty by a killed run: no one's
    (tmp_path / "out/pictures").mkdir()
    jobs, known = plan(expand_inputs(["pictures"]), out)
    assert [Path(j.output).name for j in jobs] == ["pictures"] and known == {}
    (tmp_path / "y/clean").mkdir()  # --out-dir inside the globbed folder is no input
    jobs, _ = plan(expand_inputs(["y/*"]), tmp_path / "y/clean")
    assert sorted(Path(j.input).name for j in jobs) == [
        "a.mp4",
        "b.avi",
        "b.mp4",
        "b.ts",
        "camera-dump",
        "clip [1].mp4",
        "photo.jpg",
    ]
    table = summary_table([Result("/a.mp4", "/o/a.mp4", "failed", "no such file")])
    assert table.splitlines()[1].split() == ["/a.mp4", "failed", "no", "such", "file"]


def test_a_folder_of_videos_stands_for_the_videos_and_sequences_below_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``batch recordings -o out`` made an empty ``out/recordings``: the folder was taken for
    a sequence of pictures and held none."""
    monkeypatch.chdir(tmp_path)
    for name in ("rec/cam2.avi", "rec/cam10.mp4", "rec/notes.txt", "rec/.cam3.partial.mp4"):
        (tmp_path / name).parent.mkdir(exist_ok=True, parents=True)
        (tmp_path / name).touch()
    for name in ("rec/day2/cam1.mp4", "rec/day2/shots/1.png", "rec/day2/shots/2.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True, parents=True)
        (tmp_path / name).touch()
    (tmp_path / "rec/empty").mkdir()
    (tmp_path / "rec/day2/up").symlink_to("..")  # a loop: every clip again, deeper and deeper
    jobs, known = plan(expand_inputs(["rec"]), tmp_path / "out")
    assert known == {}
    assert [os.path.relpath(j.output, tmp_path / "out") for j in jobs] == [
        "cam2.mkv",
        "cam10.mp4",
        "day2/cam1.mp4",
        "day2/shots",
    ]
    assert expand_inputs(["rec/day2/shots"]) == [str(tmp_path / "rec/day2/shots")]
    assert expand_inputs(["rec/empty"]) == [str(tmp_path / "rec/empty")], "left to be reported"


def test_an_input_done_keeps_its_output_when_rerun_with_fewer_or_more_inputs(tmp_path: Path):
    """``batch a/x.mp4 b/y.mp4`` writes ``out/a/x.mp4``; ``batch a/x.mp4`` alone mirrored it to
    ``out/x.mp4`` and derained it again there (and the other way round)."""
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a/x.mp4", "b/y.mp4", "c/z.mp4"):
        (tmp_path / name).parent.mkdir()
        (tmp_path / name).write_bytes(name.encode())
    x, y, z = (str(tmp_path / n) for n in ("a/x.mp4", "b/y.mp4", "c/z.mp4"))

    def run(*inputs: str) -> list[str]:
        jobs, _ = plan(list(inputs), out)
        with open(out / MANIFEST, "a") as manifest:
            for job in jobs:
                Path(job.output).parent.mkdir(parents=True, exist_ok=True)
                Path(job.output).write_bytes(Path(job.input).read_bytes())
                manifest.write(Result.of(job, "done", frames=1).to_json() + "\n")
        return [os.path.relpath(j.output, out) for j in jobs]

    assert run(x, y) == ["a/x.mp4", "b/y.mp4"]
    assert run(x) == [], "done: skipped where it was written"
    assert run(x, y, z) == ["c/z.mp4"]
    assert run(z) == []
    assert not (out / "x.mp4").exists() and not (out / "z.mp4").exists()
    copy = tmp_path / "copy"  # the folder copied, its manifest naming the old folder's outputs
    shutil.copytree(out, copy)
    jobs, _ = plan([x], copy, overwrite=True)
    assert [j.output for j in jobs] == [str(copy / "x.mp4")], "the old folder's is not touched"


def test_a_manifest_torn_by_a_kill_takes_the_next_record_on_a_line_of_its_own(tmp_path: Path):
    path = tmp_path / MANIFEST
    done = Result(str(tmp_path / "a.mp4"), str(tmp_path / "o" / "a.mp4"), "done")
    path.write_text(done.to_json() + "\n" + done.to_json()[:40])
    with open_manifest(path) as manifest:
        manifest.write(Result(done.input, str(tmp_path / "o" / "b.mp4"), "done").to_json() + "\n")
    assert sorted(Path(k).name for k in read_manifest(path)) == ["a.mp4", "b.mp4"]


def test_the_manifest_keys_on_the_input_that_made_each_output(tmp_path: Path) -> None:
    """d1/clip.mp4, then d2/clip.mp4 into the same folder: the output is d1's, replaced only
    with -y (it was replaced without asking: yesterday's cam1.mp4 lost to today's); then d1 is
    not skipped, its output being d2's; an input changed since its run, or run with other
    options (``--max-frames 2`` stood for the whole run), is redone."""
    out = tmp_path / "X"
    out.mkdir()
    for d in ("d1", "d2"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "clip.mp4").write_bytes(d.encode())

    def run(src: Path, overwrite: bool = False, max_frames: int | None = None) -> list[Job]:
        jobs, known = plan(
            [str(src)], out, overwrite, RunOptions.of(max_frames=max_frames).shaping()
        )
        with open(out / MANIFEST, "a") as manifest:
            for job in jobs:
                Path(job.output).write_bytes(Path(job.input).read_bytes())
                manifest.write(Result.of(job, "done", frames=1).to_json() + "\n")
        return jobs

    first = tmp_path / "d1" / "clip.mp4"
    assert len(run(first)) == 1
    assert run(first) == [], "done: skipped"
    second = tmp_path / "d2" / "clip.mp4"
    assert run(second) == [], "d1's output is not d2's to take"
    _, known = plan([str(second)], out)
    assert known[str(second)].reason.endswith("/d1/clip.mp4's output (pass -y to overwrite)")
    assert len(run(second, overwrite=True)) == 1
    assert run(first) == [], "d2's output now"
    assert len(run(first, overwrite=True)) == 1
    assert (out / "clip.mp4").read_bytes() == b"d1"
    assert len(run(first, max_frames=2)) == 1, "other options: redone"
    assert run(first, max_frames=2) == []
    assert len(run(first)) == 1, "the whole clip is not the first two frames"
    first.write_bytes(b"d1, edited")
    assert len(run(first)) == 1, "the input changed since: redone"
    assert len(run(first, overwrite=True)) == 1, "-y redoes finished inputs"
