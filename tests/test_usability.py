"""What a new user sees (issue 16): each check runs the real command and reads what it wrote."""

from __future__ import annotations

import sys

import numpy as np

from tests.media import clean_frames, decode_all, display_rotation, make_clip
from tests.test_reliability import run_cli


def test_compare_is_composed_as_the_viewer_sees_the_video(tmp_path, shared):
    """A phone video (stored 160x96, shown turned 90 degrees) compared side by side: the halves
    stand side by side on screen, upright, and are labelled."""
    frames = clean_frames(3, (160, 96))
    src, out = tmp_path / "phone.mp4", tmp_path / "cmp.mp4"
    make_clip(src, frames, tags=True)
    assert display_rotation(src) == 90
    result = run_cli(src, out, "--compare", "side-by-side", "--crf", "0")
    assert result.returncode == 0, result.stderr
    images, _, _ = decode_all(out)
    assert display_rotation(out) == 0
    assert images[0].shape == (160, 2 * 96, 3), "two upright halves side by side"
    upright = np.rot90(frames[0], 1).astype(int)
    left = images[0][:, :96].astype(int)
    below_label = slice(40, None)
    assert np.abs(left[below_label] - upright[below_label]).mean() < 6, "left: the input, upright"
    assert np.abs(left[:40] - upright[:40]).max() > 100, "a label is drawn in the corner"


def test_start_past_the_end_and_a_missing_input_say_so(tmp_path, shared):
    src, out = tmp_path / "short.mp4", tmp_path / "out.mp4"
    make_clip(src, clean_frames(25, (96, 64)))
    result = run_cli(src, out, "--start", "10")
    assert result.returncode == 1
    assert "--start 10 s is past the end of" in result.stderr and "(1.0 s)" in result.stderr
    after_last = run_cli(src, out, "--start", "0.99")  # the last frame is at 0.96 s
    assert "no video frame could be decoded from --start 0.99 s on" in after_last.stderr
    out.write_bytes(b"the user's file")
    missing = run_cli(tmp_path / "nothere.mp4", out)
    assert missing.returncode == 1 and "nothere.mp4: no such file" in missing.stderr


def test_image_folders_keep_their_names(tmp_path, shared):
    import cv2

    stills = tmp_path / "stills"
    stills.mkdir()
    names = ["001.png", "002.png", "dusk.jpg", "dusk.png"]
    for name, frame in zip(names, clean_frames(4, (96, 64))):
        cv2.imwrite(str(stills / name), frame[..., ::-1])
    (stills / "._001.png").write_bytes(b"a Mac's note on 001.png, on a USB stick: no picture")
    result = run_cli(stills, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    # dusk.png is dusk.png's (it was dusk.jpg's, and dusk.png's became dusk-4.png)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "001.png",
        "002.png",
        "dusk.jpg.png",
        "dusk.png",
    ]
    written = cv2.imread(str(tmp_path / "out" / "dusk.png")).astype(float)
    own, other = (cv2.imread(str(stills / n)).astype(float) for n in ("dusk.png", "dusk.jpg"))
    assert np.abs(written - own).mean() < np.abs(written - other).mean()
    clip = tmp_path / "clip.mp4"
    make_clip(clip, clean_frames(2, (96, 64)))
    # a dotted folder named with its slash (Path() dropped it: "unknown output container")
    assert run_cli(clip, f"{tmp_path / 'frames.v2'}/").returncode == 0
    assert sorted(p.name for p in (tmp_path / "frames.v2").iterdir()) == [
        "frame-000001.png",
        "frame-000002.png",
    ]


def test_sixteen_bit_pictures_stay_sixteen_bits(tmp_path, shared):
    """16-bit PNGs (scans, raw developments) came out in 8 bits, from a folder or alone; they
    keep their finer levels where the output holds them (PNG), and a JPEG gets 8 bits."""
    import cv2

    deep = tmp_path / "deep"
    deep.mkdir()
    fine = np.random.default_rng(0).integers(0, 200, (64, 96, 3), dtype=np.uint16)
    for i, frame in enumerate(clean_frames(2, (96, 64)), 1):
        cv2.imwrite(str(deep / f"{i}.png"), frame[..., ::-1].astype(np.uint16) * 257 + fine)
    assert run_cli(deep, tmp_path / "out").returncode == 0
    assert run_cli(deep / "1.png", tmp_path / "one.png").returncode == 0
    assert run_cli(deep / "1.png", tmp_path / "one.jpg").returncode == 0
    source = cv2.imread(str(deep / "1.png"), cv2.IMREAD_UNCHANGED).astype(float)
    for written in (tmp_path / "out" / "1.png", tmp_path / "one.png"):
        image = cv2.imread(str(written), cv2.IMREAD_UNCHANGED)
        assert image.dtype == np.uint16, written
        assert np.mean(image % 257 != 0) > 0.9, "the source's finer levels are kept"
        assert np.abs(image - source).mean() / 257 < 8, "and it is the same picture"
    assert cv2.imread(str(tmp_path / "one.jpg"), cv2.IMREAD_UNCHANGED).dtype == np.uint8


def test_transparent_pictures_keep_their_transparency(tmp_path):
    """A logo's PNG came out opaque: its clear background showed the colour hidden under it. A
    PNG, a folder of PNGs and a 16-bit PNG keep the alpha; a JPEG or a video says it is left out."""
    import cv2

    logo = np.zeros((48, 64, 4), np.uint8)
    logo[..., :3] = (40, 200, 40)  # what a clear pixel hides
    logo[12:36, 16:48] = (200, 100, 50, 255)
    logo[12:36, 16:24, 3] = 128  # half clear
    folder = tmp_path / "logos"
    folder.mkdir()
    cv2.imwrite(str(folder / "logo.png"), logo)
    cv2.imwrite(str(folder / "deep.png"), logo.astype(np.uint16) * 257)
    runs = {
        "one.png": run_cli(folder / "logo.png", tmp_path / "one.png", "-q"),
        "out": run_cli(folder, tmp_path / "out", "-q"),
        "one.jpg": run_cli(folder / "logo.png", tmp_path / "one.jpg"),
    }
    assert all(r.returncode == 0 for r in runs.values()), {k: r.stderr for k, r in runs.items()}
    for written, full in (("one.png", 255), ("out/logo.png", 255), ("out/deep.png", 65535)):
        image = cv2.imread(str(tmp_path / written), cv2.IMREAD_UNCHANGED)
        assert image.shape == (48, 64, 4), written
        assert np.array_equal(image[..., 3], logo[..., 3].astype(image.dtype) * (full // 255))
    assert "transparency is left out" in runs["one.jpg"].stderr


def test_the_first_run_says_it_prepares_the_model_and_times_setup_apart(tmp_path, shared):
    import os
    import subprocess
    import sys

    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(3, (96, 64)))
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # a first run's empty cache
    # fp32 converts the network on a first run (int8 ships converted)
    cmd = [sys.executable, "-m", "streamderain", str(src), str(tmp_path / "out.mp4")]
    result = subprocess.run(
        [*cmd, "--precision", "fp32"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    first, *_, summary = result.stderr.strip().splitlines()
    assert "preparing the model for this CPU" in first
    assert "3 frames in" in summary and "opening the input and loading the model" in summary


def test_verbose_says_what_runs_and_models_lists_the_bundled_ones(tmp_path, shared):
    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(2, (96, 64)))
    result = run_cli(src, tmp_path / "out.mp4", "-v")
    assert result.returncode == 0, result.stderr
    for words in ("input   ", "h264 96x64", "model   ", "parameters", "output  ", "libx264"):
        assert words in result.stderr, words
    assert "stages  batch -> model -> temporal -> encode" in result.stderr
    assert "pydot" not in result.stderr, "other libraries' debug is not ours to show"
    listed = run_cli("models")
    assert listed.returncode == 0 and "auto (default)" in listed.stdout
    assert "327,943 parameters" in listed.stdout and "PSNR-Y" in listed.stdout
    assert listed.stdout.count("also in 8 bits (--precision int8") == 2
    assert "eval_only_rain100L" not in listed.stdout, "one score listed twice, once as the log's"
    helped = " ".join(run_cli("run", "--help").stdout.split())
    assert "streamderain models" in helped and "Number format" in helped
    assert "redo inputs done before" in " ".join(run_cli("batch", "--help").stdout.split())


def test_a_listing_read_only_in_part_ends_quietly() -> None:
    """``streamderain models | head -1``: the reader goes away first; no error, no traceback."""
    import subprocess

    from tests.test_reliability import CLI

    for cmd in ([*CLI, "models"], [sys.executable, "-m", "training", "rain-stats", "--help"]):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # before the command writes its first line
        assert proc.wait(timeout=120) != 0
        assert proc.stderr.read() == "", cmd


def test_sample_aspect_ratio_and_colour_range_are_not_invented_or_lost(tmp_path, shared):
    """SAR 1:1 stays 1:1 (not N/A); an H.264 output whose input had no colour range gets none.

    (A VP9 stream always carries a range bit, so a WebM always says one: not checked there.)"""
    import av

    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(3, (96, 64)))
    with av.open(str(src)) as c:
        source_range = c.streams.video[0].codec_context.color_range
    for name in ("out.mp4", "out.webm"):
        out = tmp_path / name
        assert run_cli(src, out, "--crf", "30").returncode == 0
        with av.open(str(out)) as c:
            ctx = c.streams.video[0].codec_context
            assert name.endswith(".webm") or ctx.color_range == source_range, name
            sar = ctx.sample_aspect_ratio
            assert sar is None or sar == 1, (name, sar)


def test_the_progress_bar_counts_the_frames_the_run_reads():
    """--duration 10 on an hour's video: the bar ends at 250 frames, not at 0.3% of 90,000."""
    from fractions import Fraction

    from streamderain.frames import VideoInfo, expected_frames

    hour = VideoInfo(64, 48, Fraction(1, 25), Fraction(25), 90_000)
    assert expected_frames(hour, 0.0, None, None) == 90_000
    assert expected_frames(hour, 0.0, 10.0, None) == 250
    assert expected_frames(hour, 3590.0, None, None) == 250
    assert expected_frames(hour, 100.0, 110.0, 7) == 7
    assert expected_frames(hour, 4000.0, None, None) == 0
    assert expected_frames(VideoInfo(64, 48, Fraction(1, 25), None, None), 0.0, None, 5) == 5


def test_names_with_a_colon_are_files_not_protocols(tmp_path, shared, monkeypatch) -> None:
    """FFmpeg reads "rec-10:00.mp4" as the protocol "rec-10" unless told it is a file."""
    from streamderain import derain_video
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner

    make_clip(tmp_path / "rec-10:00.mp4", clean_frames(3, (96, 64)), audio=True)
    monkeypatch.chdir(tmp_path)
    runner = ModelRunner(ModelOptions(device="cpu", model="dcsfn-lite", flip_average="off"))
    for encoder in ("pyav", "ffmpeg"):
        out = f"clean-10:00-{encoder}.mp4"
        derain_video("rec-10:00.mp4", out, runner=runner, encoder=encoder)
        images, _, _ = decode_all(tmp_path / out)
        assert len(images) == 3


def test_a_file_named_as_a_command_is_pointed_out(tmp_path) -> None:
    """``streamderain sample clean.mp4`` beside a folder named ``sample`` wrote a synthetic
    clip without a word: the command still runs, and the way to the folder is said."""
    import subprocess

    from tests.test_reliability import CLI

    (tmp_path / "models").mkdir()
    listed = subprocess.run([*CLI, "models"], cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0 and "auto (default)" in listed.stdout
    assert "to derain the file, write ./models" in listed.stderr


def test_a_name_with_a_percent_sign_is_that_file(tmp_path, shared) -> None:
    """FFmpeg reads ``img%03d.png`` as the numbered sequence img001.png, img002.png, ...: the
    run derained other pictures than the one named."""
    import cv2

    cv2.imwrite(str(tmp_path / "img%03d.png"), np.full((64, 96, 3), 40, np.uint8))
    for n in (1, 2):
        cv2.imwrite(str(tmp_path / f"img{n:03d}.png"), np.full((64, 96, 3), 220, np.uint8))
    result = run_cli(tmp_path / "img%03d.png", tmp_path / "out", "--flip-average", "off")
    assert result.returncode == 0, result.stderr
    [written] = (tmp_path / "out").iterdir()
    assert cv2.imread(str(written)).mean() < 100


def test_live_drop_keeps_every_frame_of_a_file_and_says_so(tmp_path, shared):
    """A file is read as fast as it decodes, far ahead of the model: ``--live-drop`` dropped
    frames as the model fell behind (12 of these 30), which no one asking for a file's output
    wants."""
    src, out = tmp_path / "clip.mp4", tmp_path / "out.mp4"
    make_clip(src, clean_frames(30, (96, 64)))
    result = run_cli(src, out, "--live-drop")
    assert result.returncode == 0, result.stderr
    assert "--live-drop is for live sources; every frame of a file is kept" in result.stderr
    images, _, _ = decode_all(out)
    assert len(images) == 30


def test_a_video_through_a_pipe_is_derained_without_its_sound(tmp_path):
    """``cat clip.mkv | streamderain /dev/stdin out.mkv`` failed, blaming the output: the sound
    was read from the source a second time, and a pipe has nothing left to read."""
    import subprocess

    from tests.test_reliability import CLI

    clip = tmp_path / "clip.mkv"
    make_clip(clip, clean_frames(5, (64, 48)), audio=True)
    with subprocess.Popen(["cat", str(clip)], stdout=subprocess.PIPE) as cat:
        result = subprocess.run(
            [*CLI, "/dev/stdin", str(tmp_path / "out.mkv"), "--flip-average", "off"],
            stdin=cat.stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    assert "is a pipe, read once: any sound or subtitles are left out" in result.stderr
    assert len(decode_all(tmp_path / "out.mkv")[0]) == 5


def test_unreadable_pictures_of_a_folder_are_skipped_and_said(tmp_path):
    """One truncated photo failed the whole folder's run and kept none of the others; the first
    one unreadable failed it before any work."""
    import cv2

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, image in enumerate(clean_frames(4, (64, 48)), start=1):
        cv2.imwrite(str(photos / f"{i}.png"), image)
    for bad in ("1.png", "3.png"):
        (photos / bad).write_bytes((photos / bad).read_bytes()[:100])
    result = run_cli(photos, tmp_path / "clean", "--flip-average", "off")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "clean").iterdir()) == ["2.png", "4.png"]
    said = [line for line in result.stderr.splitlines() if "not a readable image: skipped" in line]
    assert len(said) == 2 and "1.png" in said[0] and "3.png" in said[1]


def test_feeds_wait_for_a_camera_however_long_it_is_away() -> None:
    """``feeds --help`` said a feed gives up after 30 s by default, where it never gives up."""
    from streamderain.cli import feeds

    ctx = feeds.make_context("feeds", ["feeds.toml"])
    assert ctx.params["reconnect_timeout"] == 0.0
    assert "giving up (0: never).  [default: 0.0]" in " ".join(feeds.get_help(ctx).split("\n"))
    asked = feeds.make_context("feeds", ["feeds.toml", "--reconnect-timeout", "5"])
    assert asked.params["reconnect_timeout"] == 5.0


def test_bf16_on_a_cpu_is_said_to_be_slow(caplog) -> None:
    """The help offered bf16 for "a recent CPU" and the fp16 refusal pointed to it: it runs
    through PyTorch there, about 6 times slower than the default, without a word."""
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner

    ModelRunner(ModelOptions(device="cpu", precision="bf16"), threads=1)
    assert "bf16 on a CPU runs through PyTorch, several times slower than auto" in caplog.text
    helped = " ".join(run_cli("run", "--help").stdout.split())
    assert "bf16 a GPU or a recent CPU" not in helped and "several times slower" in helped
