"""The file pipeline end to end, through the real ``streamderain`` command and real clips."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from streamderain.batcher import Batcher
from streamderain.errors import StreamDerainError
from streamderain.frames import Frame
from streamderain.pipeline import Stage
from streamderain.targets import partial_path
from tests.media import (
    clean_frames,
    combing,
    decode_all,
    display_rotation,
    encode_frames,
    h264_stream,
    interlaced_clip,
    make_clip,
    packets,
    rainy_frames,
)
from training.metrics import psnr

CLI = [sys.executable, "-m", "streamderain"]


def run_cli(*args, timeout=300, **kw):
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw
    )


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory, shared):
    folder = tmp_path_factory.mktemp("vfr")
    rainy, clean = rainy_frames(24)
    path = folder / "rainy.mp4"
    pts = make_clip(path, rainy, vfr=True, audio=True, tags=True)
    return path, pts, clean


def derained_in_time(
    src, pts_ms, out, *args
) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    """``streamderain src out *args``, checked to keep every frame at its time (within 2 ms) and
    the audio packets as they were: the frames and the video stream written."""
    result = run_cli(src, out, "-q", *args)
    assert result.returncode == 0, result.stderr
    images, times, stream = decode_all(out)
    assert len(images) == len(pts_ms)
    assert max(abs(t - p / 1000) for t, p in zip(times, pts_ms, strict=True)) <= 0.002
    assert [b for _, b in packets(out, "audio")] == [b for _, b in packets(src, "audio")]
    return images, stream


def test_output_keeps_every_frame_its_time_audio_and_tags(vfr_clip, tmp_path):
    src, pts_ms, clean = vfr_clip
    out = tmp_path / "out.mp4"
    _, stream = derained_in_time(src, pts_ms, out)
    ctx = stream.codec_context
    assert (ctx.color_range, ctx.colorspace, ctx.color_primaries, ctx.color_trc) == (1, 1, 1, 1)
    assert display_rotation(out) == 90


def test_derained_output_is_closer_to_the_clean_frames(tmp_path):
    """At the size the product is built for (640x360), decode, model and encode together (CRF
    18) bring a rainy clip at least 2 dB closer to its clean frames."""
    rainy, clean = rainy_frames(12, (640, 360))
    src = tmp_path / "rainy.mp4"
    make_clip(src, rainy)
    out = tmp_path / "derained.mp4"
    result = run_cli(src, out, "-q")
    assert result.returncode == 0, result.stderr
    images, _, _ = decode_all(out)
    src_images, _, _ = decode_all(src)
    gain = np.mean(
        [psnr(o, c) - psnr(r, c) for o, r, c in zip(images, src_images, clean, strict=True)]
    )
    assert gain >= 2.0, f"derained output is only {gain:.2f} dB closer to the clean frames"


def round_trip(src: Path, out: Path) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """``src`` decoded and encoded again at CRF 0 into ``out``: the mean shift of each RGB
    channel, and the frames before and after."""
    from streamderain.decoder import Decoder
    from streamderain.encoder import Encoder
    from streamderain.options import EncodeOptions

    with Decoder(str(src)) as decoder:
        encoder = Encoder(out, decoder.info, EncodeOptions(crf=0))
        for frame in decoder:
            encoder.write(frame)
        encoder.finish()
    before, after = decode_all(src)[0], decode_all(out)[0]
    shift = np.mean(
        [b.astype(float).mean((0, 1)) - a.mean((0, 1)) for a, b in zip(before, after, strict=True)],
        0,
    )
    return shift, before, after


def test_a_round_trip_keeps_the_colours(vfr_clip, tmp_path):
    """Decode and encode convert with the source's own matrix (BT.709 here) and range, rounding
    accurately: the frames come back with no shift of brightness or colour."""
    shift, before, after = round_trip(vfr_clip[0], tmp_path / "same.mp4")
    assert np.abs(shift).max() < 0.1, shift
    assert np.mean([psnr(a, b) for a, b in zip(before, after, strict=True)]) > 46


@pytest.mark.parametrize(
    ("name", "codec", "pix_fmt", "colorspace", "limit"),
    [
        ("webcam.avi", "mjpeg", "yuvj420p", None, 0.1),
        ("full709.mp4", "libx264", "yuv420p", 1, 0.1),
        ("full422.mkv", "ffv1", "yuv422p", 5, 0.1),
        ("full10.mkv", "libx265", "yuv420p10le", 1, 0.15),
    ],
)
def test_a_full_range_round_trip_keeps_the_colours(
    tmp_path, name, codec, pix_fmt, colorspace, limit
):
    """Full-range video (a webcam's MJPEG, screen captures, PNG frames in Matroska) came
    back tinted green, -0.7 +0.6 -0.7 in R, G, B (MJPEG): swscale truncates full range's colour planes.
    At 10 bits what is left (-0.1) is the decoder's."""
    src = tmp_path / name
    with av.open(str(src), "w") as container:
        v = container.add_stream(codec, rate=25)
        v.width, v.height, v.pix_fmt = 160, 96, pix_fmt
        v.options = {
            "libx264": {"crf": "0"},
            "libx265": {"x265-params": "lossless=1:log-level=error"},
        }.get(codec, {})
        v.codec_context.color_range = 2
        if colorspace:
            v.codec_context.colorspace = colorspace
        for i, image in enumerate(clean_frames(6, (160, 96))):
            vf = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                format=pix_fmt, dst_colorspace=colorspace, dst_color_range=2
            )
            vf.pts = i
            container.mux(v.encode(vf))
        container.mux(v.encode(None))
    shift = round_trip(src, tmp_path / "same.mkv")[0]
    assert np.abs(shift).max() < limit, shift


def test_frames_without_timestamps_are_placed_at_the_frame_rate(tmp_path):
    """A source that gives no pts: frame i is shown at i / rate, in whatever time base."""
    from streamderain.encoder import Encoder
    from streamderain.frames import VideoInfo

    tb = Fraction(1, 90000)
    out = tmp_path / "untimed.mp4"
    encoder = Encoder(out, VideoInfo(64, 48, tb, Fraction(25), None))
    for i, image in enumerate(clean_frames(5, (64, 48))):
        encoder.write(Frame(i, None, tb, image))
    encoder.finish()
    times = decode_all(out)[1]
    assert times == pytest.approx([0.0, 0.04, 0.08, 0.12, 0.16], abs=1e-3)


def _luma_10bit(path) -> tuple[list[np.ndarray], av.video.stream.VideoStream]:
    """Every frame's 10-bit luma plane, as coded, and the stream."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        planes = []
        for f in c.decode(s):
            plane = f.planes[0]
            rows = np.frombuffer(plane, np.uint16).reshape(f.height, plane.line_size // 2)
            planes.append(rows[:, : f.width].astype(np.int32))
        return planes, s


def test_a_ten_bit_hdr_source_keeps_its_finer_levels(tmp_path, shared):
    """A 10-bit HLG phone-style clip comes out as 10-bit HEVC (``hvc1``, tagged as the source),
    and where the model leaves the picture alone its 10-bit levels come back. Measured on this
    ramp: 190 distinct levels in a row and 0.4 levels of error, against 155 and 1.45 through
    8 bits (58 distinct at CRF 0)."""
    rainy, _ = rainy_frames(4, (256, 144))
    ramp = (np.linspace(300, 555, 256).round().astype(np.uint16) << 6)[None, :, None]
    src = tmp_path / "hdr.mov"
    with av.open(str(src), "w") as out:
        v = out.add_stream("libx265", rate=25)
        v.width, v.height, v.pix_fmt = 256, 144, "yuv420p10le"
        v.options = {"x265-params": "lossless=1:log-level=error"}
        ctx = v.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 9, 9, 18, 1
        for i, image in enumerate(rainy):
            deep = image.astype(np.uint16) * 257
            deep[:64] = ramp
            vf = av.VideoFrame.from_ndarray(deep, format="rgb48le").reformat(
                format="yuv420p10le", dst_colorspace=9, dst_color_range=1
            )
            vf.pts = i
            out.mux(v.encode(vf))
        out.mux(v.encode(None))
    result = run_cli(src, tmp_path / "out.mov", "-v")
    assert result.returncode == 0, result.stderr
    assert "hevc 10-bit 256x144" in result.stderr and "libx265, 10 bits" in result.stderr
    before, _ = _luma_10bit(src)
    after, stream = _luma_10bit(tmp_path / "out.mov")
    ctx = stream.codec_context
    assert (stream.codec_context.name, ctx.pix_fmt, stream.codec_tag) == (
        "hevc",
        "yuv420p10le",
        "hvc1",
    )
    assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc) == (9, 9, 18)
    assert len(after) == 4
    for a, b in zip(before, after, strict=True):
        row = b[24, 16:240]
        assert len(np.unique(row)) > 175, "the ramp's 10-bit steps, not 8-bit ones"
        assert np.abs(b[8:56] - a[8:56]).mean() < 0.8
        assert b[80:].mean() < a[80:].mean() - 0.5, "the rain below the ramp is taken out"


MASTERING = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_an_hdr10_videos_mastering_display_and_light_levels_are_kept(tmp_path, encoder):
    """A PQ video's mastering display and content light levels (HDR10's static metadata) were
    dropped: players then map the picture onto their screens by guesswork."""
    from streamderain.frames import HdrLight

    src, out = tmp_path / "hdr10.mp4", tmp_path / "out.mp4"
    with av.open(str(src), "w") as container:
        v = container.add_stream("libx265", rate=25)
        v.width, v.height, v.pix_fmt = 128, 96, "yuv420p10le"
        v.options = {
            "x265-params": f"hdr10=1:master-display={MASTERING}:max-cll=1000,400:log-level=error"
        }
        ctx = v.codec_context
        ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range = 9, 9, 16, 1
        encode_frames(container, v, clean_frames(3, (128, 96)))
    result = run_cli(src, out, "-q", "--encoder", encoder)
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as c:
        frame = next(c.decode(video=0))
        assert c.streams.video[0].codec_context.color_trc == 16
    kept = HdrLight.of(frame)
    assert kept == HdrLight(
        (13250, 34500, 7500, 3000, 34000, 16000, 15635, 16450, 10000000, 50), (1000, 400)
    )
    assert kept.x265_params() == f"hdr10=1:master-display={MASTERING}:max-cll=1000,400"


@pytest.mark.parametrize("suffix", [".mkv", ".mov", ".webm"])
def test_container_round_trips(tmp_path, shared, suffix):
    frames = clean_frames(6, (130, 98))
    src = tmp_path / f"in{suffix}"
    make_clip(src, frames, audio=True)
    out = tmp_path / f"out{suffix}"
    result = run_cli(src, out, "-q")
    assert result.returncode == 0, result.stderr
    images, _, stream = decode_all(out)
    assert len(images) == 6
    assert images[0].shape == (98, 130, 3)
    assert len(packets(out, "audio")) > 0


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_a_run_cut_short_cuts_the_audio_with_the_picture(tmp_path, shared, encoder):
    """--max-frames (as Ctrl-C or a damaged source): no sound runs on past the last picture."""
    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(50, (96, 64)), audio=True)  # 2 s of picture and sound
    out = tmp_path / "out.mp4"
    result = run_cli(src, out, "-q", "--max-frames", "10", "--encoder", encoder)
    assert result.returncode == 0, result.stderr
    video = [t for t, _ in packets(out, "video")]
    audio = [t for t, _ in packets(out, "audio")]
    assert len(video) == 10 and audio
    assert max(audio) < max(video) + 0.04 + 1e-6, "the sound stops with the last frame"
    assert max(audio) > max(video) - 0.1, "and not before it"


@pytest.mark.parametrize(
    ("encoder", "suffix", "start"),
    [("pyav", ".ts", 1), ("ffmpeg", ".mkv", 1), ("pyav", ".mkv", None), ("ffmpeg", ".ts", None)],
)
def test_start_and_duration_count_from_the_files_start(tmp_path, shared, encoder, suffix, start):
    """A camera's recording an hour in (as MPEG-TS starts 1.4 s in): --start 1 --duration 1 is the
    second second of the file, picture and sound, as ffmpeg's -ss counts, and the output starts
    at 0 (no hour of nothing before it). The MPEG-TS file is one GOP with no index: a seek
    lands after its only keyframe. Matroska out keeps sound that starts before the picture."""
    if encoder == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg binary (Debian package ffmpeg)")
    frames = clean_frames(50, (96, 64))
    src = tmp_path / f"cam{suffix}"
    make_clip(src, frames, audio=True, start_ms=3_600_000)
    out = tmp_path / "out.mkv"
    cut = ["--duration", "1"] + (["--start", str(start)] if start else [])
    result = run_cli(src, out, "-q", *cut, "--encoder", encoder)
    assert result.returncode == 0, result.stderr
    images, times, _ = decode_all(out)
    assert len(images) == 25 and 0 <= times[0] < 0.03
    error = [np.abs(images[0].astype(float) - f).mean() for f in frames]
    assert int(np.argmin(error)) == 25 * (start or 0), "the first frame is the one asked for"
    audio = [t for t, _ in packets(out, "audio")]
    assert audio and -0.03 <= min(audio) < 0.05, "the sound starts with the picture"
    assert 0.9 < max(audio) < 1.0 + 0.04, "and is the same second"


def test_image_folder_in_and_out_with_odd_sizes(tmp_path, shared):
    import cv2

    src = tmp_path / "frames"
    src.mkdir()
    for i, img in enumerate(clean_frames(4, (67, 45))):
        cv2.imwrite(str(src / f"{i + 1}.png"), img[..., ::-1])
    out = tmp_path / "derained"
    result = run_cli(src, out, "--crf", "5")  # said to be ignored: it was, silently
    assert result.returncode == 0, result.stderr
    assert "pictures take no --crf (ignored)" in result.stderr
    written = sorted(out.iterdir())
    assert len(written) == 4
    assert cv2.imread(str(written[0])).shape == (45, 67, 3)
    odd = tmp_path / "odd.webm"
    result = run_cli(src, odd, "--preset", "slow")
    assert result.returncode == 0 and "libvpx-vp9 takes none (ignored)" in result.stderr
    assert decode_all(odd)[0][0].shape == (45, 67, 3)


def test_a_video_made_of_pictures_says_how_its_colours_are_coded(tmp_path, shared):
    """Pictures are sRGB: the video made of them is tagged BT.709 throughout. Untagged, it was
    coded with BT.601's matrix, which players take HD video not to be: red (200, 0, 0) came out
    as (217, 12, 0) in a BT.709 player."""
    import cv2

    src = tmp_path / "frames"
    src.mkdir()
    for i, img in enumerate(clean_frames(3, (320, 180))):
        img[:60, :80] = (200, 0, 0)
        cv2.imwrite(str(src / f"{i + 1}.png"), img[..., ::-1])
    out = tmp_path / "pictures.mp4"
    assert run_cli(src, out, "--crf", "0", "--temporal", "off").returncode == 0
    images, _, stream = decode_all(out)
    ctx = stream.codec_context
    assert (ctx.colorspace, ctx.color_primaries, ctx.color_trc, ctx.color_range) == (1, 1, 1, 1)
    with av.open(str(out)) as c:  # decoded as a BT.709 player does, by the matrix, not the tag
        vf = next(c.decode(video=0))
        red = vf.to_ndarray(format="rgb24", src_colorspace=1, interpolation="BICUBIC")
    assert np.abs(red[10:50, 10:70].astype(float).mean((0, 1)) - (200, 0, 0)).max() < 4


def test_a_picture_in_and_a_picture_out(tmp_path, shared):
    """A photo derained into a photo ("unknown output container" before), and a video's one
    frame as a snapshot; more than one frame to a picture is refused before any work."""
    import cv2

    cv2.imwrite(str(tmp_path / "photo.png"), clean_frames(1, (67, 45))[0][..., ::-1])
    assert run_cli(tmp_path / "photo.png", tmp_path / "clean.jpg", "-q").returncode == 0
    assert cv2.imread(str(tmp_path / "clean.jpg")).shape == (45, 67, 3)
    clip = tmp_path / "clip.mp4"
    make_clip(clip, clean_frames(3, (64, 48)))
    refused = run_cli(clip, tmp_path / "snap.png")
    assert refused.returncode == 1 and "a picture, one frame; the input has 3" in refused.stderr
    assert not (tmp_path / "snap.png").exists()
    uncounted = tmp_path / "clip.mkv"  # Matroska keeps no frame count: refused all the same
    make_clip(uncounted, clean_frames(3, (64, 48)))
    refused = run_cli(uncounted, tmp_path / "snap.png")
    assert refused.returncode == 1 and "a count unknown" in refused.stderr
    assert not (tmp_path / "snap.png").exists(), "its first frame was left as the picture"
    assert run_cli(clip, tmp_path / "snap.png", "--max-frames", "1", "-q").returncode == 0
    assert cv2.imread(str(tmp_path / "snap.png")).shape == (48, 64, 3)
    assert run_cli(clip, f"{tmp_path / 'shots.png'}/", "-q").returncode == 0, "a folder"
    assert len(list((tmp_path / "shots.png").iterdir())) == 3


def test_a_folder_of_pictures_of_several_sizes(tmp_path, shared):
    """A photo folder is not one size: to a folder each picture keeps its own. A video has one
    size: it is refused in one line, and like any failed run it keeps, playable, what it wrote
    before (the first picture), with no hidden file left behind."""
    import cv2

    src = tmp_path / "photos"
    src.mkdir()
    sizes = ((67, 45), (96, 64), (64, 96))
    for i, size in enumerate(sizes):
        cv2.imwrite(str(src / f"{i + 1}.png"), clean_frames(1, size)[0][..., ::-1])
    # PyTorch, without the mirror: no network compiled per size; the sizes are what is tested
    fast = ("--flip-average", "off", "--precision", "fp32", "--backend", "torch")
    result = run_cli(src, tmp_path / "derained", "-q", *fast)
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "derained").iterdir())
    assert [cv2.imread(str(p)).shape[1::-1] for p in written] == list(sizes)
    video = tmp_path / "photos.mp4"
    result = run_cli(src, video, "-q", *fast)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "a video has one size" in result.stderr and len(result.stderr.splitlines()) == 1
    assert [image.shape for image in decode_all(video)[0]] == [(45, 67, 3)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_folder_of_frames_written_again_holds_this_runs_frames_only(tmp_path, shared):
    """A shorter run over an earlier one's frames replaces them all (9 of 12 stayed); a folder
    that holds anything besides frames is the user's, and keeps it; so does a link's folder."""
    from streamderain import derain_video
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner

    runner = ModelRunner(ModelOptions(device="cpu", model="dcsfn-lite", flip_average="off"))
    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(6, (96, 64)))
    frames = tmp_path / "frames"
    derain_video(src, frames, runner=runner)
    derain_video(src, frames, runner=runner, max_frames=2)
    assert sorted(p.name for p in frames.iterdir()) == ["frame-000001.png", "frame-000002.png"]
    (frames / "notes.txt").write_text("the user's")
    derain_video(src, frames, runner=runner, max_frames=1)
    assert sorted(p.name for p in frames.iterdir())[-1] == "notes.txt"
    link = tmp_path / "link"
    link.symlink_to(frames)
    derain_video(src, link, runner=runner, max_frames=1)
    assert link.is_symlink() and (frames / "notes.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_compare_output_is_twice_as_wide(vfr_clip, tmp_path):
    out = tmp_path / "compare.mp4"
    result = run_cli(vfr_clip[0], out, "-q", "--compare", "side-by-side", "--max-frames", "3")
    assert result.returncode == 0, result.stderr
    images, _, _ = decode_all(out)
    assert len(images) == 3
    # the clip is 256x144 shown turned 90 degrees: two upright 144x256 halves, side by side
    assert images[0].shape == (256, 288, 3) and display_rotation(out) == 0


def test_never_overwrites_without_y(vfr_clip, tmp_path):
    out = tmp_path / "exists.mp4"
    out.write_bytes(b"precious")
    result = run_cli(vfr_clip[0], out, "--max-frames", "2", stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "exists" in result.stderr and "Traceback" not in result.stderr
    assert out.read_bytes() == b"precious"
    result = run_cli(vfr_clip[0], out, "--max-frames", "2", "-y", "-q")
    assert result.returncode == 0, result.stderr
    assert len(decode_all(out)[0]) == 2


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg", "ffmpeg, signalled too"])
def test_sigint_leaves_a_playable_partial_file(tmp_path, shared, encoder):
    """Ctrl-C in a terminal signals the whole process group: an ffmpeg writer too, which must
    not die with the file it writes. A service manager's stop reaches ffmpeg itself too (its
    control group): ffmpeg closes its file and exits, and the run was lost ("ffmpeg stopped")."""
    import os

    frames = clean_frames(75, (320, 180)) * 2
    src = tmp_path / "long.mp4"
    make_clip(src, frames)
    out = tmp_path / "partial.mp4"
    proc = subprocess.Popen(
        [*CLI, str(src), str(out), "-q", "--encoder", encoder.split(",")[0]],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    partial = partial_path(out)
    deadline = time.monotonic() + 120
    # interrupted once the first frame is written (the muxer writes nothing before it),
    # however slow the machine is at the moment
    while not (partial.exists() and partial.stat().st_size > 0):
        assert proc.poll() is None and time.monotonic() < deadline, "no frame was written"
        time.sleep(0.05)
    if encoder == "ffmpeg, signalled too":
        tasks = Path(f"/proc/{proc.pid}/task").iterdir()
        children = [int(c) for t in tasks for c in (t / "children").read_text().split()]
        writer = [c for c in children if Path(f"/proc/{c}/comm").read_text().strip() == "ffmpeg"]
        for pid in [proc.pid, *writer]:
            os.kill(pid, signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    images, times, _ = decode_all(out)
    assert 0 < len(images) < len(frames)
    assert times == sorted(times)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "temporary file left behind"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_stages_that_only_keep_up_yield_the_cpu_to_the_model():
    """The file decoder and encoder run at a lower priority than the model's stage."""
    import os
    import threading

    from streamderain.pipeline import YIELDING_NICE, Pipeline, Stage

    seen: dict[str, int] = {}

    class Source(list):
        yields_cpu = True

        def __iter__(self):
            seen["decode"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            return super().__iter__()

        def stop(self) -> None:
            pass

    class Probe(Stage):
        def __init__(self, name: str, yields_cpu: bool) -> None:
            self.name, self.yields_cpu = name, yields_cpu

        def process(self, item):
            seen[self.name] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            return [item]

    base = os.getpriority(os.PRIO_PROCESS, 0)
    stages = [("model", Probe("model", False)), ("encode", Probe("encode", True))]
    Pipeline(Source([[1], [2]]), stages).run()
    assert seen == {"decode": YIELDING_NICE, "model": base, "encode": YIELDING_NICE}


def test_after_an_error_the_last_stage_is_given_time_to_close_its_output(monkeypatch):
    """A stage fails; the encoder's abort (closing the file) outlasts the other stages' join
    time and still ends before the error reaches the caller."""
    import time

    from streamderain import pipeline
    from streamderain.errors import StreamDerainError

    monkeypatch.setattr(pipeline, "JOIN_TIMEOUT", 0.2)
    closed = []

    class Fails(pipeline.Stage):
        def process(self, item):
            raise StreamDerainError("the model failed")

    class SlowToClose(pipeline.Stage):
        def process(self, item):
            return [item]

        def abort(self, failed: bool = False) -> None:
            time.sleep(1.0)
            closed.append(failed)

    class Source(list):
        yields_cpu = False

        def stop(self) -> None:
            pass

    stages = [("model", Fails()), ("encode", SlowToClose())]
    with pytest.raises(StreamDerainError, match="the model failed"):
        pipeline.Pipeline(Source([[1], [2]]), stages).run()
    assert closed == [True]


def test_a_failing_stage_stops_a_source_that_is_waiting(monkeypatch):
    """A live source between two connections waits on its own stop: a later stage's failure
    must reach it, or its thread outlives the run."""
    import threading

    from streamderain import pipeline
    from streamderain.errors import StreamDerainError

    monkeypatch.setattr(pipeline, "JOIN_TIMEOUT", 0.5)
    stopped = threading.Event()
    ended = []

    class Reconnecting:
        yields_cpu = False

        def __iter__(self):
            yield [1]
            stopped.wait(30)  # as a decoder does while its source is away
            ended.append(stopped.is_set())

        def stop(self) -> None:
            stopped.set()

    class Fails(pipeline.Stage):
        def process(self, item):
            raise StreamDerainError("the encoder failed")

    with pytest.raises(StreamDerainError, match="the encoder failed"):
        pipeline.Pipeline(Reconnecting(), [("encode", Fails())]).run()
    assert ended == [True]


class _Items(list):
    """A source of items that stops when told."""

    yields_cpu = False

    def stop(self) -> None:
        pass


class _Closes(Stage):
    """A stage that notes how each run ended for it (``failed``, as the encoder is told)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.aborted = delay, []

    def process(self, item):
        time.sleep(self.delay)
        return [item]

    def abort(self, failed: bool) -> None:
        self.aborted.append(failed)


def test_an_error_in_the_callers_on_frame_fails_the_run():
    """An exception raised in the main thread (the caller's ``on_frame``) stopped the stages as
    a user's stop does, and the encoder then moved its partial file over an existing output."""
    from streamderain.pipeline import Pipeline

    def on_frame(n: int) -> None:
        raise ValueError("the caller's own bug")

    last = _Closes()
    with pytest.raises(ValueError, match="the caller's own bug"):
        Pipeline(_Items([[1]] * 20), [("encode", last)], on_frame=on_frame).run()
    assert last.aborted == [True]


def test_a_stage_still_busy_after_a_second_ctrl_c_is_left_to_end(monkeypatch):
    """A model call of seconds (a 4K batch) outlasts the join after a second Ctrl-C; the run
    used to end as an error ("the model stage did not stop", exit 1), not as interrupted."""
    import threading

    from streamderain import pipeline

    monkeypatch.setattr(pipeline, "JOIN_TIMEOUT", 0.2)
    model, last = _Closes(delay=1.5), _Closes()
    run = pipeline.Pipeline(_Items([[1]] * 5), [("model", model), ("encode", last)])
    threading.Timer(0.3, run.abort).start()
    stats = run.run()
    assert stats.interrupted and last.aborted == [False]


def test_a_stage_stalled_past_its_limit_ends_the_run():
    """A live receiver that stops reading without closing holds PyAV's write forever (it takes
    no I/O timeout for outputs): the run waited on it past Ctrl-C and SIGTERM. A stage that says
    it is stalled is given up, and the run ends with its error at once."""
    import threading

    from streamderain.pipeline import Pipeline

    never = threading.Event()

    class Stalls(_Closes):
        since: float | None = None

        def process(self, item):
            if item == [3]:
                self.since = time.monotonic()
                never.wait(60)  # as a write to a receiver that stopped reading
            return [item]

        def stalled(self) -> StreamDerainError | None:
            if self.since is None or time.monotonic() - self.since < 0.5:
                return None
            return StreamDerainError("the receiver stalled")

    last = Stalls()
    began = time.perf_counter()
    with pytest.raises(StreamDerainError, match="the receiver stalled"):
        Pipeline(_Items([[1], [2], [3], [4]]), [("model", _Closes()), ("encode", last)]).run()
    assert time.perf_counter() - began < 5
    never.set()


def test_a_file_published_at_its_pace_is_not_taken_for_a_stall(monkeypatch):
    """A file published live waits for each frame's time: a gap in its timestamps (a
    timelapse, a camera's pause) is no stalled receiver; only a write that hangs is."""
    import threading

    from streamderain import encoder as encoding
    from streamderain.frames import VideoInfo

    monkeypatch.setattr(encoding, "LIVE_STALL_SECONDS", 0.2)
    tb = Fraction(1, 1000)
    out = encoding.Encoder("udp://127.0.0.1:45999", VideoInfo(64, 48, tb, Fraction(25), None))
    said, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            said.append(out.stalled())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i, pts in enumerate((0, 40, 1040)):  # a second between the last two
            out.write(Frame(i, pts, tb, clean_frames(1, (64, 48))[0]))
        out.finish()
    finally:
        done.set()
        watcher.join()
    assert len(said) > 10 and not any(said)
    out._writing_since = time.monotonic() - 1  # as a write hung for a second
    assert "the receiver has taken nothing for 0.2 s" in str(out.stalled())


def test_a_stage_thread_that_cannot_start_stops_those_started(monkeypatch):
    """No thread to start (``can't start new thread``) or a Ctrl-C while starting them left the
    started stages running, and the decoder was then closed under its thread (a crash)."""
    import threading

    from streamderain.pipeline import Pipeline

    start, started = threading.Thread.start, []

    def start_two(thread: threading.Thread) -> None:
        if len(started) == 2:
            raise RuntimeError("can't start new thread")
        started.append(thread)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_two)
    model = _Closes()
    with pytest.raises(RuntimeError, match="can't start"):
        Pipeline(_Items([[1]] * 5), [("model", model), ("encode", _Closes())]).run()
    assert model.aborted == [True]
    assert not any(t.is_alive() for t in started)


def test_cores_are_counted_where_the_system_has_no_affinity(monkeypatch):
    """macOS and Windows have no os.sched_getaffinity: the model runs on every core there."""
    import os

    from streamderain.pipeline import usable_cores

    assert usable_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")
    assert usable_cores() == os.cpu_count()


def test_batcher_groups_by_size_and_flushes_on_timeout():
    tb = Fraction(1, 25)

    def frame(i, h):
        return Frame(i, i, tb, np.zeros((h, 8, 3), np.uint8))

    b = Batcher(size=3, timeout=0.05)
    assert list(b.process(frame(0, 4))) == []
    assert list(b.process(frame(1, 4))) == []
    out = list(b.process(frame(2, 6)))
    assert [len(x) for x in out] == [2]
    assert list(b.poll()) == []
    time.sleep(0.06)
    assert [len(x) for x in b.poll()] == [1]
    for i in range(3):
        out = list(b.process(frame(3 + i, 4)))
    assert [[f.index for f in x.frames] for x in out] == [[3, 4, 5]]
    assert list(b.finish()) == []


def test_a_runner_given_to_derain_video_brings_its_batch_and_temporal_stage(tmp_path, shared):
    """Its model options stand instead of ``options.model``: all of them, not the mirror alone."""
    from streamderain import derain_video
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner

    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(6, (96, 64)))
    runner = ModelRunner(ModelOptions(device="cpu", batch=2, temporal="off", flip_average="off"))
    sizes = []
    infer = runner.infer
    runner.infer = lambda images: (sizes.append(len(images)), infer(images))[1]
    stats = derain_video(src, tmp_path / "out.mp4", runner=runner)
    assert stats.frames == 6 and "temporal" not in stats.busy
    assert sizes == [2, 2, 2]


def test_derainer_api_accepts_bgr_rgb_and_tensors(shared):
    """And says what it takes when given no picture (0 x 0, or a batch of none)."""
    from streamderain import Derainer

    rgb = clean_frames(1, (96, 64))[0]
    rgb_out = Derainer(device="cpu")(rgb)
    bgr_out = Derainer(device="cpu", channel_order="BGR")(np.ascontiguousarray(rgb[..., ::-1]))
    assert rgb_out.shape == rgb.shape and rgb_out.dtype == np.uint8
    assert np.array_equal(bgr_out[..., ::-1], rgb_out)
    batch_out = Derainer(device="cpu")(np.stack([rgb, rgb]))
    assert np.array_equal(batch_out[1], rgb_out)
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    t_out = Derainer(device="cpu")(t)
    assert t_out.shape == t.shape
    assert (
        t_out[0].permute(1, 2, 0) * 255 - torch.from_numpy(rgb_out).float()
    ).abs().max() <= 0.5001
    t_out.mul_(1.0)  # a tensor like any other: changed in place, or learnt through
    torch.nn.Conv2d(3, 1, 3)(t_out).sum().backward()
    derainer = Derainer(device="cpu")
    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 64, 96, 3), np.uint8), t[:0]):
        with pytest.raises(ValueError, match="none of them 0"):
            derainer(empty)
    # 0..255 in a float tensor came back clamped to [0, 1]: garbage, and no word
    for wrong in (t * 255, t - 0.5, t.clone().fill_(float("nan"))):
        with pytest.raises(ValueError, match=r"in \[0, 1\]"):
            derainer(wrong)
    frozen = np.frombuffer(rgb.tobytes(), np.uint8).reshape(rgb.shape)  # a read-only array
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning
        assert np.array_equal(derainer(frozen), derainer(rgb))


def test_a_derainer_lent_to_a_file_runs_its_own_frames_as_before(vfr_clip, tmp_path):
    """A file turned its mirror average on (``auto`` is on for files) and left it on: the
    Derainer's own frames then took twice the time and came out otherwise."""
    from streamderain import Derainer, derain_video
    from streamderain.options import ModelOptions, RunOptions

    derainer = Derainer(device="cpu", model="dcsfn-lite")
    rgb = clean_frames(1, (96, 64))[0]
    before = derainer(rgb)
    derain_video(vfr_clip[0], tmp_path / "o.mp4", runner=derainer, max_frames=2)
    assert np.array_equal(derainer(rgb), before)
    # the runner's model stands: a model option beside it was left out without a word
    with pytest.raises(StreamDerainError, match="temporal: a runner's model options stand"):
        derain_video(vfr_clip[0], tmp_path / "p.mp4", runner=derainer, temporal="off")
    # in an options object too (it was left out without a word there)
    for options in (ModelOptions(temporal="off"), RunOptions.of(temporal="off")):
        with pytest.raises(StreamDerainError, match="temporal: a runner's model options stand"):
            derain_video(vfr_clip[0], tmp_path / "p.mp4", options, runner=derainer)
    # what the runner chose for auto is what it stands for (the precision it picked was refused)
    runner = derainer.runner
    same = {"precision": runner.precision, "backend": runner.backend, "model": "dcsfn-lite"}
    stats = derain_video(vfr_clip[0], tmp_path / "q.mp4", runner=derainer, max_frames=1, **same)
    assert stats.frames == 1
    assert Derainer(device="cpu").runner.stands_for("model", "auto")


def test_one_derainer_shared_by_threads(shared):
    """Two threads calling one Derainer: one of them failed with OpenVINO's "Infer Request is
    busy"; its frames now go through one at a time, each as it would alone."""
    from concurrent.futures import ThreadPoolExecutor

    from streamderain import Derainer

    derainer = Derainer(device="cpu", model="dcsfn-lite")
    frames = clean_frames(4, (96, 64))
    alone = [derainer(f) for f in frames]
    with ThreadPoolExecutor(4) as pool:
        shared_out = list(pool.map(derainer, frames * 3))
    assert all(np.array_equal(a, b) for a, b in zip(shared_out, alone * 3, strict=True))


def test_cuda_without_gpu_is_a_clean_error(vfr_clip, tmp_path):

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli(vfr_clip[0], tmp_path / "o.mp4", "--device", "cuda")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "no CUDA GPU" in result.stderr


def test_tiles_match_the_whole_frame(shared):
    import cv2

    from streamderain.runner import min_tile, tiled
    from tests.conftest import DATA
    from training import load_model

    model = load_model()
    img = cv2.imread(str(DATA / "real-rain" / "nturain-rb2" / "00007.jpg"))[:352, :640, ::-1]
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
    shapes = []

    def run(tile: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(tile.shape[-2:]))
        return model(tile)

    with torch.inference_mode():
        whole = model(x)
        stride = model.net.min_size
        pieces = tiled(run, x, min_tile(stride), stride)
        odd = tiled(run, x[..., :345, :601], min_tile(stride), stride)
    assert (pieces - whole).abs().max().item() <= 1e-3
    assert odd.shape[-2:] == (345, 601)
    # one tile size a frame: OpenVINO compiles once per size
    assert len(shapes) == 10 and set(shapes) == {(352, 448)}


def test_ffmpeg_encoder_backend_keeps_time_and_audio(vfr_clip, tmp_path):
    if shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg binary (Debian package ffmpeg)")
    src, pts_ms, _ = vfr_clip
    out = tmp_path / "ffmpeg.mp4"
    result = run_cli(src, out, "-q", "--encoder", "ffmpeg", "--max-frames", "10")
    assert result.returncode == 0, result.stderr
    images, times, stream = decode_all(out)
    assert len(images) == 10
    assert max(abs(t - p / 1000) for t, p in zip(times, pts_ms[:10], strict=True)) <= 0.002
    assert stream.codec_context.name == "h264"
    assert len(packets(out, "audio")) > 0
    assert display_rotation(out) == 90


@pytest.mark.parametrize(
    ("suffix", "codec", "tag"), [(".mkv", "libx264", ""), (".mp4", "libx265", "hvc1")]
)
def test_ffmpeg_encoders_file_keeps_its_rate_and_apples_hevc_tag(tmp_path, suffix, codec, tag):
    """The sound's remux after ffmpeg built the video from a template, which carries neither
    the rate (Matroska said 30,000 frames/s, and OpenCV counted 61,290 frames in 20) nor
    HEVC's ``hvc1`` (``hev1``: Apple's players refuse it)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg binary (Debian package ffmpeg)")
    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(6, (64, 48)), audio=True)
    out = tmp_path / f"out{suffix}"
    flags = ("--flip-average", "off", "--temporal", "off", "--codec", codec)
    result = run_cli(src, out, "-q", "--encoder", "ffmpeg", *flags)
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as done:
        video = done.streams.video[0]
        assert video.average_rate == 25
        assert video.codec_tag.strip("\0") == tag
    assert cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FPS) == 25


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_audio_the_container_cannot_take_is_re_encoded_in_sync(vfr_clip, tmp_path, encoder):
    """AAC does not fit WebM: it becomes Opus, as long as the source's audio and in time."""
    if encoder == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg binary (Debian package ffmpeg)")
    src = vfr_clip[0]
    out = tmp_path / "out.webm"
    result = run_cli(src, out, "-q", "--encoder", encoder)
    assert result.returncode == 0, result.stderr
    assert "left out" not in result.stderr
    with av.open(str(out)) as c:
        assert c.streams.audio[0].codec_context.name == "opus"
        frames = list(c.decode(audio=0))
    src_audio = packets(src, "audio")
    start, end = frames[0].time, frames[-1].time + frames[-1].samples / frames[-1].sample_rate
    src_end = src_audio[-1][0] + 1024 / 48000
    assert abs(start - max(0.0, src_audio[0][0])) <= 0.04, "audio starts with the video"
    assert abs(end - src_end) <= 0.04, "same duration within one video frame"
    tone = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    spectrum = np.abs(np.fft.rfft(tone[: 48000 // 2]))
    assert abs(np.argmax(spectrum) * 2 - 440) <= 4, "the 440 Hz tone survived"


def test_openvino_backend_matches_pytorch_on_real_frames(shared):
    import cv2

    from streamderain.backends import openvino_available
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner
    from tests.conftest import DATA

    if not openvino_available():
        pytest.skip("openvino is not installed")
    frames = np.stack(
        [
            cv2.imread(str(DATA / "real-rain" / "nturain-rb2" / f"0000{i}.jpg"))[..., ::-1]
            for i in (1, 2)
        ]
    )
    fast = ModelRunner(ModelOptions(device="cpu", backend="openvino", precision="fp32"))
    exact = ModelRunner(ModelOptions(device="cpu", backend="torch"))
    assert (
        fast.backend == "openvino" and ModelRunner(ModelOptions(device="cpu")).backend == "openvino"
    )
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        assert (fast.forward(x) - exact.forward(x)).abs().max().item() <= 1e-3
    small = torch.rand(1, 3, 20, 30)
    assert fast.forward(small).shape == small.shape


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runner_overlaps_batches_and_matches_the_cpu(shared):
    """The CUDA path (pinned memory, copy and compute streams, one batch in flight) returns every
    batch, in order, with the CPU's result (within a few grey levels: cuDNN may run fp32
    convolutions in TF32); fp16 stays close to it."""
    import cv2

    from streamderain.frames import Batch
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner
    from tests.conftest import DATA

    files = sorted((DATA / "real-rain" / "nturain-rb2").glob("*.jpg"))[:6]
    images = [cv2.imread(str(f))[..., ::-1].copy() for f in files]
    batches = [
        Batch(tuple(Frame(i + j, i + j, Fraction(1, 25), images[i + j]) for j in range(2)))
        for i in range(0, 6, 2)
    ]
    cpu = ModelRunner(ModelOptions(device="cpu", backend="torch"))
    expected = [b for batch in batches for b in cpu.process(batch)]
    for precision, tolerance in (("fp32", 3), ("fp16", 8)):
        gpu = ModelRunner(ModelOptions(device="cuda", precision=precision))
        got = [b for batch in batches for b in gpu.process(batch)] + list(gpu.finish())
        assert [f.index for b in got for f in b.frames] == list(range(6))
        for want, have in zip(expected, got, strict=True):
            diff = np.abs(want.images.astype(int) - have.images.astype(int))
            assert diff.max() <= tolerance, (precision, int(diff.max()))
    # a run stopped with a batch in flight: the runner's next run does not return it
    stopped = ModelRunner(ModelOptions(device="cuda"))
    list(stopped.process(batches[0]))
    stopped.prepare(*images[0].shape[:2])
    got = [b for batch in batches[1:] for b in stopped.process(batch)] + list(stopped.finish())
    assert [f.index for b in got for f in b.frames] == [2, 3, 4, 5]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_whole_pipeline_on_the_gpu_gives_the_cpu_picture(vfr_clip, tmp_path):
    """``streamderain in.mp4 out.mp4 --device cuda`` end to end: every frame at its time, the
    audio as it was, and the CPU's picture (fp16 batches of 4 against the CPU's fp32)."""
    src, pts_ms, _ = vfr_clip
    gpu, _ = derained_in_time(
        src,
        pts_ms,
        tmp_path / "cuda.mp4",
        "--device",
        "cuda",
        "--precision",
        "fp16",
        "--batch",
        "4",
    )
    cpu, _ = derained_in_time(src, pts_ms, tmp_path / "cpu.mp4", "--device", "cpu")
    agreement = [psnr(g, c) for g, c in zip(gpu, cpu, strict=True)]
    assert min(agreement) >= 35, min(agreement)


def test_a_batch_larger_than_the_clip_is_compiled_for_the_clip(tmp_path):
    """``--batch 3000`` on a 7-frame clip compiled OpenVINO for 3,000 frames before the first
    (27 GB at 160x96: out of memory), though no batch of the clip can hold more than 7."""
    from streamderain import derain_video
    from streamderain.backends import OpenVINOBackend
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner

    src = tmp_path / "in.mp4"
    make_clip(src, clean_frames(7, (64, 48)))
    runner = ModelRunner(ModelOptions(model="dcsfn-lite", batch=500, flip_average="off"))
    if not isinstance(runner.forwards[0], OpenVINOBackend):
        pytest.skip("OpenVINO is not this machine's backend")
    assert derain_video(src, tmp_path / "out.mp4", runner=runner).frames == 7
    assert set(runner.forwards[0]._compiled) == {(7, 48, 64)}


def test_compiled_networks_are_kept_for_the_next_start_and_no_more_than_asked(
    tmp_path, monkeypatch
):
    """A start compiled each model for the CPU again (about 1.2 s of 2.2 each on the dev CPU);
    the compiled networks are now kept, give the same frames, and do not pile up with every
    frame size a run meets."""
    pytest.importorskip("openvino")
    from streamderain.backends import OpenVINOBackend
    from training import load_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = load_model("dcsfn-lite")
    frame = torch.from_numpy(clean_frames(1, (64, 64))[0]).permute(2, 0, 1)[None] / 255
    first = OpenVINOBackend(model, threads=1, int8=True)
    first.kept_compiled = 2
    for h, w in ((48, 64), (56, 64), (64, 64)):
        first.prepare(1, h, w)

    def kept() -> dict[str, int]:
        blobs = (tmp_path / "streamderain" / "compiled").glob("*.blob")
        return {blob.name: blob.stat().st_mtime_ns for blob in blobs}

    assert len(kept()) == 2
    before = kept()
    again = OpenVINOBackend(model, threads=1, int8=True)  # the 64x64 network read, not written
    assert torch.equal(again(frame), first(frame))
    assert kept() == before


def test_a_phone_video_written_as_frames_comes_out_upright(tmp_path):
    """A PNG keeps no display rotation: the frames of a video a player turns by 90 degrees came
    out sideways."""
    import cv2

    from streamderain.encoder import Encoder
    from streamderain.frames import VideoInfo

    tb = Fraction(1, 25)
    image = np.zeros((48, 64, 3), np.uint8)
    image[:, :8] = 255  # a bar at the left edge: at the bottom once turned counter-clockwise
    frames = Encoder(tmp_path / "frames", VideoInfo(64, 48, tb, Fraction(25), None))
    frames.write(Frame(0, 0, tb, image, rotation=90))
    frames.finish()
    written = cv2.imread(str(tmp_path / "frames" / "frame-000001.png"))
    assert written.shape == (64, 48, 3)
    assert written[-8:].min() == 255 and written[:-8].max() == 0


def test_an_interlaced_camera_comes_out_in_whole_pictures(tmp_path):
    """Interlaced frames were derained and written as they were, flagged progressive: every
    moving edge stayed a comb of two fields, on a screen that shows whole pictures."""
    src, out = tmp_path / "interlaced.mp4", tmp_path / "out.mp4"
    interlaced_clip(src, 20)
    result = run_cli(src, out, "-q", "--temporal", "off")
    assert result.returncode == 0, result.stderr
    before, times_in, _ = decode_all(src)
    after, times_out, _ = decode_all(out)
    assert times_out == times_in
    assert np.median([combing(i) for i in before]) > 5
    assert np.median([combing(i) for i in after]) < 1


def test_deinterlacing_keeps_every_frame_through_a_switch_and_a_new_size(tmp_path):
    """A source may turn interlaced part way, or change its size: every frame comes out once, in
    order, with its time and size; progressive frames before the switch pass as they were."""
    from streamderain.deinterlace import Deinterlacer

    interlaced_clip(tmp_path / "a.mp4", 6)
    interlaced_clip(tmp_path / "b.mp4", 6, size=(96, 64))
    make_clip(tmp_path / "p.mp4", clean_frames(4, (160, 120)))
    frames = []
    for name in ("p", "a", "b"):
        with av.open(str(tmp_path / f"{name}.mp4")) as c:
            frames += list(c.decode(video=0))
    progressive = frames[:4]
    frames[4:] = [f for f in frames[4:] if f.interlaced_frame]
    assert len(frames) == 16
    shifted = []  # one timeline: each clip after the one before
    for i, f in enumerate(frames):
        f.pts, f.time_base = i * 40, Fraction(1, 1000)
        shifted.append((f.pts, f.width))
    made = list(Deinterlacer().frames(frames))
    assert [(f.pts, f.width) for f in made] == shifted
    assert made[:4] == progressive
    assert all(f.time_base == Fraction(1, 1000) and not f.interlaced_frame for f in made[4:])


def test_a_dv_tape_is_written_at_its_frame_rate(tmp_path):
    """FFmpeg 8 gives a DV file's average rate as its clock's 60,000 ticks a second: the run
    derained every frame, then MP4 refused the file at its end ("Invalid argument")."""
    src = tmp_path / "tape.dv"
    with av.open(str(src), "w", format="dv") as out:
        stream = out.add_stream("dvvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 720, 576, "yuv420p"
        encode_frames(out, stream, clean_frames(2, (720, 576)))
    result = run_cli(src, tmp_path / "out.mp4", "-q")
    assert result.returncode == 0, result.stderr
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].average_rate == 25 and c.streams.video[0].frames == 2


def test_a_recording_whose_frame_size_changes_comes_out_whole_at_its_first_size(tmp_path):
    """A broadcast recording changes size where an SD advert sits between HD programmes: the
    run stopped there ("a video has one size") and kept the first part only."""
    src = tmp_path / "channel.ts"
    with src.open("wb") as joined:  # two MPEG-TS recordings end to end, as a recorder cuts them
        for part, (size, first) in enumerate((((160, 120), 0), ((320, 240), 5))):
            path = tmp_path / f"{part}.ts"
            with av.open(str(path), "w", format="mpegts") as out:
                stream = out.add_stream("mpeg2video", rate=25)
                stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
                for i, image in enumerate(clean_frames(5, size)):
                    vf = av.VideoFrame.from_ndarray(image, format="rgb24")
                    vf.pts, vf.time_base = first + i, Fraction(1, 25)
                    out.mux(stream.encode(vf))
                out.mux(stream.encode(None))
            joined.write(path.read_bytes())
    read, _, _ = decode_all(src)
    result = run_cli(src, tmp_path / "out.mkv", "--temporal", "off")
    assert result.returncode == 0, result.stderr
    assert "is 320x240, the video 160x120: scaled to it" in result.stderr
    written, _, _ = decode_all(tmp_path / "out.mkv")
    assert len(written) == len(read) and {i.shape for i in written} == {(120, 160, 3)}
    assert 90 < written[-1].mean() < 170  # the picture, scaled, not a blank frame


def test_a_cameras_sound_and_a_tag_that_is_not_utf8_do_not_stop_a_run(tmp_path):
    """An IP camera's G.711 sound does not fit Matroska as it is (the run failed at its
    output; now FLAC, lossless), and one tag that is not UTF-8 failed every run of the file."""
    src = tmp_path / "camera.mov"
    with av.open(str(src), "w") as out:
        out.metadata["title"] = "cafX"
        v = h264_stream(out, (64, 48), 10)
        a = out.add_stream("pcm_mulaw", rate=8000)
        a.layout = "mono"
        encode_frames(out, v, clean_frames(6, (64, 48)))
        for i in range(6):
            sound = av.AudioFrame.from_ndarray(
                np.zeros((1, 800), np.int16), format="s16", layout="mono"
            )
            sound.sample_rate, sound.pts = 8000, i * 800
            out.mux(a.encode(sound))
        out.mux(a.encode(None))
    data = src.read_bytes()
    src.write_bytes(data.replace(b"cafX", b"caf\xe9"))  # Latin-1, as old cameras write
    out = tmp_path / "clean.mkv"
    result = run_cli(src, out, "-q", "--flip-average", "off", "--temporal", "off")
    assert result.returncode == 0, result.stderr
    assert len(decode_all(out)[0]) == 6
    with av.open(str(out)) as done:
        assert done.streams.audio[0].codec_context.name == "flac"
    assert len(packets(out, "audio")) > 0


def test_a_cameras_pcm_sound_and_the_tracks_labels_are_kept(tmp_path):
    """QuickTime's big-endian PCM (as cameras write it) became AAC; every track's language and
    the track a player picks first were lost, and so were the recording's title and date."""
    src = tmp_path / "camera.mov"
    with av.open(str(src), "w") as out:
        out.metadata.update({"title": "Trip", "creation_time": "2024-05-01T10:00:00Z"})
        v = h264_stream(out, (64, 48), 10)
        tracks = [out.add_stream("pcm_s16be", rate=8000, layout="mono") for _ in range(2)]
        for track, language in zip(tracks, ("eng", "fra"), strict=True):
            track.metadata["language"] = language
        tracks[0].disposition = av.stream.Disposition(0)
        tracks[1].disposition = av.stream.Disposition.default
        encode_frames(out, v, clean_frames(4, (64, 48)))
        for track in tracks:
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 3200), np.int16), "s16", "mono")
            sound.sample_rate, sound.pts = 8000, 0
            out.mux(track.encode(sound))
            out.mux(track.encode(None))
    out = tmp_path / "clean.mov"
    result = run_cli(src, out, "-q", "--flip-average", "off", "--temporal", "off")
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as done:
        assert done.metadata["title"] == "Trip"
        assert done.metadata["creation_time"].startswith("2024-05-01T10:00:00")
        sounds = done.streams.audio
        assert [a.codec_context.name for a in sounds] == ["pcm_s16be"] * 2
        assert [a.metadata.get("language") for a in sounds] == ["eng", "fra"]
        assert [bool(a.disposition & av.stream.Disposition.default) for a in sounds] == [
            False,
            True,
        ]


@pytest.mark.parametrize("encoder", ["pyav", "ffmpeg"])
def test_sound_of_four_channels_with_no_speakers_named_becomes_aac(tmp_path, encoder):
    """Matroska's PCM of 4 or 6 channels names no speakers ("4 channels"); AAC opens only with
    named ones, so the run failed (with ``--encoder ffmpeg`` after the whole video was done)."""
    if encoder == "ffmpeg" and shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg binary (Debian package ffmpeg)")
    src = tmp_path / "four.mkv"
    with av.open(str(src), "w") as out:
        v = h264_stream(out, (64, 48), 10)
        track = out.add_stream("pcm_s16le", rate=48000, layout="4 channels")
        encode_frames(out, v, clean_frames(4, (64, 48)))
        seconds = np.arange(19200) / 48000
        tones = [8000 * np.sin(2 * np.pi * hz * seconds) for hz in (300, 500, 700, 900)]
        samples = np.stack(tones, axis=1).astype(np.int16).reshape(1, -1)
        sound = av.AudioFrame.from_ndarray(samples, "s16", "4 channels")
        sound.sample_rate, sound.pts = 48000, 0
        out.mux(track.encode(sound))
        out.mux(track.encode(None))
    out = tmp_path / "clean.mp4"
    flags = ("--flip-average", "off", "--temporal", "off", "--encoder", encoder)
    result = run_cli(src, out, "-q", *flags)
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as done:
        assert done.streams.audio[0].codec_context.name == "aac"
        heard = np.concatenate([f.to_ndarray() for f in done.decode(audio=0)], axis=1)
    assert heard.shape[0] == 4, "every channel kept"
    for channel, hz in zip(heard, (300, 500, 700, 900), strict=True):
        spectrum = np.abs(np.fft.rfft(channel[:19200]))
        assert abs(np.argmax(spectrum) * 48000 / 19200 - hz) <= 5, "each channel its own tone"


@pytest.mark.parametrize("pix_fmt", ["yuv444p", "yuv422p"])
def test_a_sources_colour_resolution_is_kept(tmp_path, pix_fmt):
    """4:4:4 and 4:2:2 sources (screen captures, ProRes masters) came out 4:2:0 without a word;
    x264 and x265 keep them, as ffmpeg does."""
    src = tmp_path / "full.mkv"
    with av.open(str(src), "w") as out:
        v = h264_stream(out, (64, 48), 10)
        v.pix_fmt = pix_fmt
        encode_frames(out, v, clean_frames(2, (64, 48)))
    out = tmp_path / "clean.mp4"
    result = run_cli(src, out, "-q", "--flip-average", "off", "--temporal", "off")
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as done:
        assert done.streams.video[0].codec_context.pix_fmt == pix_fmt


def test_chapters_are_kept_on_the_part_derained(tmp_path):
    """Chapters were dropped from every output (ffmpeg keeps them); with ``--start`` they move
    with the picture, and one that ends before it is left out."""
    src = tmp_path / "chapters.mkv"
    with av.open(str(src), "w") as out:
        v = h264_stream(out, (64, 48), 10)
        out.set_chapters(
            [
                {"id": i + 1, "start": i * 500, "end": (i + 1) * 500, "time_base": Fraction(1, 1000),
                 "metadata": {"title": title}}
                for i, title in enumerate(["Arrival", "Downpour", "Clearing"])
            ]
        )  # fmt: skip
        encode_frames(out, v, clean_frames(15, (64, 48)))
    out = tmp_path / "clean.mp4"
    result = run_cli(src, out, "-q", "--start", "0.7", "--flip-average", "off")
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as done:
        kept = [
            (c["metadata"]["title"], round(float(c["start"] * c["time_base"]), 2),
             round(float(c["end"] * c["time_base"]), 2))
            for c in done.chapters()
        ]  # fmt: skip
    assert kept == [("Downpour", 0.0, 0.3), ("Clearing", 0.3, 0.8)]


def test_a_codec_named_by_its_format_gets_its_encoders_settings(tmp_path, caplog):
    """``--codec h264`` is libx264, but only ``libx264`` got the product's settings: an odd
    frame size failed ("h264 cannot encode this"), the quality was x264's default (crf 23)
    and ``--preset`` was dropped. The odd size is written in 4:4:4, which the user is told (some
    players refuse it)."""
    from streamderain.encoder import Encoder
    from streamderain.frames import VideoInfo
    from streamderain.options import EncodeOptions

    tb = Fraction(1, 25)
    out = tmp_path / "odd.mp4"
    options = EncodeOptions(codec="h264", preset="veryslow")
    encoder = Encoder(out, VideoInfo(65, 49, tb, Fraction(25), None), options)
    for i, image in enumerate(clean_frames(3, (65, 49))):
        encoder.write(Frame(i, i, tb, image))
    encoder.finish()
    assert len(decode_all(out)[0]) == 3
    settings = out.read_bytes()
    assert b"crf=18.0" in settings and b"subme=10" in settings
    assert "libx264 writes 65x49 in 4:4:4" in caplog.text


def test_ffmpeg_encoder_keeps_the_picture_past_a_sound_that_ends_first(tmp_path):
    """ffmpeg's ``-shortest`` ended the output where the sound ended, broke the pipe, and the
    whole run was lost ("ffmpeg stopped"): sound a little shorter than the picture is common."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg binary (Debian package ffmpeg)")
    src = tmp_path / "short-sound.mp4"
    with av.open(str(src), "w") as out:
        v = h264_stream(out, (64, 48), 10)
        a = out.add_stream("aac", rate=48000)
        a.layout = "mono"
        encode_frames(out, v, clean_frames(75, (64, 48)) * 2)
        for i in range(14):  # 0.3 s of sound under 15 s of picture
            sound = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            sound.sample_rate, sound.pts = 48000, i * 1024
            out.mux(a.encode(sound))
        out.mux(a.encode(None))
    out = tmp_path / "out.mp4"
    result = run_cli(src, out, "-q", "--encoder", "ffmpeg", "--flip-average", "off")
    assert result.returncode == 0, result.stderr
    assert len(decode_all(out)[0]) == 150
    assert 0.2 < max(t for t, _ in packets(out, "audio")) < 0.4


def test_the_video_track_read_is_the_one_a_player_shows(tmp_path):
    """The first video track was read whatever it was: a file whose first track is a still
    picture (a poster, cover art) came out as that one frame."""
    from streamderain.decoder import Decoder
    from streamderain.options import DecodeOptions

    src = tmp_path / "two-tracks.mkv"
    with av.open(str(src), "w") as out:
        poster, movie = h264_stream(out, (40, 32), 10), h264_stream(out, (64, 48), 10)
        poster.disposition, movie.disposition = (
            av.stream.Disposition(0),
            av.stream.Disposition.default,
        )
        encode_frames(out, poster, clean_frames(1, (40, 32)))
        encode_frames(out, movie, clean_frames(10, (64, 48)))
    with Decoder(src, DecodeOptions()) as decoder:
        assert (decoder.info.width, decoder.info.height) == (64, 48)
        assert len(list(decoder)) == 10


def test_a_raw_stream_without_times_is_cut_at_the_frame_rate(tmp_path):
    """A raw ``.h264`` (a Raspberry Pi's, a dashcam's) has no timestamps: ``--duration`` kept
    every frame and ``--start`` failed ("Operation not permitted", FFmpeg cannot seek it)."""
    from streamderain.decoder import Decoder
    from streamderain.options import DecodeOptions

    src = tmp_path / "camera.h264"
    images = clean_frames(50, (64, 48))
    with av.open(str(src), "w", format="h264") as out:
        encode_frames(out, h264_stream(out, (64, 48), 25), images)
    with Decoder(src, DecodeOptions(duration=0.4)) as decoder:
        assert len(list(decoder)) == 10
    with Decoder(src, DecodeOptions(start=0.5, duration=0.4)) as decoder:
        frames = list(decoder)
    assert len(frames) == 10
    error = [np.abs(frames[0].image.astype(float) - image).mean() for image in images]
    assert int(np.argmin(error)) == 13  # the first frame at or after 0.5 s (0.52)


@pytest.mark.parametrize(
    ("codec", "sar", "suffix"),
    [
        ("libx264", Fraction(4, 3), ".mp4"),
        ("libvpx-vp9", Fraction(4, 3), ".mp4"),
        # an encoder PyAV's FFmpeg cannot open so: the ffmpeg binary's to judge; no shape to keep
        ("prores_ks", None, ".mov"),
    ],
)
def test_ffmpeg_encoder_keeps_the_sample_aspect_ratio(tmp_path, codec, sar, suffix):
    """Raw video in NUT carries no sample aspect ratio: ``--encoder ffmpeg`` wrote anamorphic
    video (DV, 4:3 pixels) as square pixels; and VP9, which holds none in its own stream, lost
    it again where the source's sound is remuxed in."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("no ffmpeg binary (Debian package ffmpeg)")
    from streamderain.encoder import Encoder
    from streamderain.frames import VideoInfo
    from streamderain.options import EncodeOptions

    src = tmp_path / "src.mp4"
    make_clip(src, clean_frames(3, (64, 48)), audio=True)
    tb = Fraction(1, 25)
    info = VideoInfo(64, 48, tb, Fraction(25), None, sample_aspect_ratio=sar)
    out = (tmp_path / "wide").with_suffix(suffix)
    options = EncodeOptions(encoder="ffmpeg", codec=codec)
    encoder = Encoder(out, info, options, copy_streams_from=str(src))
    for i, image in enumerate(clean_frames(3, (64, 48))):
        encoder.write(Frame(i, i, tb, image))
    encoder.finish()
    with av.open(str(out)) as done:
        assert done.streams.video[0].sample_aspect_ratio == sar
        assert len(done.streams.audio) == 1


def test_a_pixel_shape_matroska_cannot_keep_is_said(tmp_path, caplog):
    """VP9 holds no pixel shape in its stream, and FFmpeg's Matroska takes it from a field
    PyAV cannot set: a 4:3-pixel source comes out squeezed, which the user is told."""
    from streamderain.encoder import Encoder
    from streamderain.frames import VideoInfo

    tb = Fraction(1, 25)
    info = VideoInfo(64, 48, tb, Fraction(25), None, sample_aspect_ratio=Fraction(4, 3))
    for name, said in (("wide.webm", True), ("wide.mkv", False), ("wide.mp4", False)):
        caplog.clear()
        encoder = Encoder(tmp_path / name, info)
        encoder.write(Frame(0, 0, tb, clean_frames(1, (64, 48))[0]))
        encoder.finish()
        assert ("keeps no pixel shape (the source's is 4:3)" in caplog.text) == said, name


def test_mpeg_ts_files_joined_end_to_end_play_on(tmp_path):
    """``cat a.ts b.ts`` (a DVR's parts): the second part's times start again, and its frames
    were crowded onto the first's last instant; with sound the run failed at its end."""
    part = tmp_path / "part.ts"
    make_clip(part, clean_frames(25, (64, 48)), audio=True)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(part.read_bytes() * 2)
    out = tmp_path / "out.mp4"
    result = run_cli(joined, out, "-q", "--flip-average", "off", "--temporal", "off")
    assert result.returncode == 0, result.stderr
    _, times, _ = decode_all(out)
    assert len(times) == 50
    assert max(np.diff(times)) < 0.05, "one frame after another across the join"
    assert max(t for t, _ in packets(out, "audio")) > 1.8, "the second part's sound too"
