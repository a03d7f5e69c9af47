"""The temporal stage: every frame back in order with its time, and less rain where the scene
holds still, without smearing what moves. Synthetic clips only (no model)."""

from __future__ import annotations

from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from streamderain.frames import Batch, Frame
from streamderain.temporal import TemporalFilter, TemporalStage
from training.video_eval import cache_folder
from training.video_eval import temporal as stage_output
from training.weights import resolve_source

H, W = 96, 160
OBJECT = 24  # side of the moving square, pixels
STEP = (3, 1)  # its motion, pixels per frame


def background(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A textured still picture, uint8 RGB."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.uniform(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 2.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return (40 + 160 * noise).astype(np.uint8)


def scene(n: int, seed: int = 0, pan: float = 0.0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Clean frames with a textured square moving across, and its mask in each frame.

    ``pan``: the camera's motion, pixels per frame to the left.
    """
    wide = background(seed, H, W + int(abs(pan) * n) + 1)
    patch = cv2.resize(
        background(seed + 1, 12, 12), (OBJECT, OBJECT), interpolation=cv2.INTER_NEAREST
    )
    frames, masks = [], []
    for t in range(n):
        shift = np.float32([[1, 0, -pan * t], [0, 1, 0]])
        frame = cv2.warpAffine(wide, shift, (W, H), flags=cv2.INTER_LINEAR)
        x, y = 10 + STEP[0] * t, 30 + STEP[1] * t
        frame[y : y + OBJECT, x : x + OBJECT] = patch
        mask = np.zeros((H, W), bool)
        mask[y : y + OBJECT, x : x + OBJECT] = True
        frames.append(frame)
        masks.append(mask)
    return frames, masks


def rain(clean: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """What a per-frame model leaves: bright streaks in new places every frame, and some noise."""
    rng = np.random.default_rng(seed)
    out = []
    for frame in clean:
        streaks = np.zeros((H, W), np.float32)
        for _ in range(25):
            x, y = int(rng.integers(0, W)), int(rng.integers(0, H))
            cv2.line(streaks, (x, y), (x + 2, y + 9), float(rng.uniform(25, 50)), 1)
        noisy = frame + streaks[..., None] + rng.normal(0, 1.5, frame.shape)
        out.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return out


def frames_of(images: list[np.ndarray], start: int = 0) -> list[Frame]:
    """Frames with uneven timestamps (variable frame rate), a rotation and an original."""
    pts = np.cumsum([0, *[3000 + 7 * (i % 3) for i in range(len(images) - 1)]])
    return [
        Frame(start + i, int(pts[i]) + 90000, Fraction(1, 90000), image, image, 90)
        for i, image in enumerate(images)
    ]


def run_filter(images: list[np.ndarray], lookahead: int) -> list[np.ndarray]:
    f = TemporalFilter(lookahead)
    out = [o for frame in frames_of(images) for o in f.push(frame)] + f.flush()
    return [o.image for o in out]


def error(images: list[np.ndarray], clean: list[np.ndarray], masks: list[np.ndarray]) -> float:
    """Mean absolute error over the masked pixels of every frame."""
    diffs = [np.abs(a.astype(float) - c)[m] for a, c, m in zip(images, clean, masks)]
    return float(np.mean(np.concatenate(diffs)))


def batches_of(frames: list[Frame], sizes: list[int]) -> list[Batch]:
    out, i = [], 0
    for n in sizes:
        out.append(Batch(tuple(frames[i : i + n])))
        i += n
    assert i == len(frames)
    return out


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_every_frame_comes_back_in_order_with_its_time(lookahead: int) -> None:
    clean, _ = scene(23)
    frames = frames_of(rain(clean))
    stage = TemporalStage(lookahead)
    out = []
    for batch in batches_of(frames, [1, 4, 2, 7, 1, 5, 3]):
        got = list(stage.process(batch))
        if lookahead == 0:  # live: nothing is held back
            assert [f.index for b in got for f in b.frames] == [f.index for f in batch.frames]
        out += got
    out += stage.finish()
    assert all(isinstance(b, Batch) for b in out)
    got = [f for b in out for f in b.frames]
    assert [f.index for f in got] == [f.index for f in frames]
    for a, b in zip(got, frames):
        assert (a.pts, a.time_base, a.rotation) == (b.pts, b.time_base, b.rotation)
        assert a.original is b.original
        assert a.image.shape == b.image.shape and a.image.dtype == np.uint8
    assert list(stage.finish()) == []


def test_files_hold_back_the_look_ahead_and_give_it_back_at_finish() -> None:
    clean, _ = scene(6)
    f = TemporalFilter(lookahead=3)
    returned = [o for frame in frames_of(clean) for o in f.push(frame)]
    assert [o.index for o in returned] == [0, 1, 2]
    assert f.pending == 3
    assert [o.index for o in f.flush()] == [3, 4, 5]
    assert f.pending == 0


def test_frames_without_timestamps_and_a_size_change_start_a_new_window() -> None:
    small = [cv2.resize(img, (128, 80)) for img in rain(scene(8)[0], seed=1)]
    images = rain(scene(8)[0]) + small
    frames = [Frame(i, None, Fraction(1, 25), img) for i, img in enumerate(images)]
    stage = TemporalStage(lookahead=0)
    out = [f for b in stage.process(Batch(tuple(frames[:8]))) for f in b.frames]
    for frame in frames[8:]:
        out += [f for b in stage.process(Batch((frame,))) for f in b.frames]
    assert [f.index for f in out] == list(range(16)) and all(f.pts is None for f in out)
    assert [f.size for f in out] == [(H, W)] * 8 + [(80, 128)] * 8
    # the new size starts with no history: its first frame is passed on as it came
    assert np.array_equal(out[8].image, frames[8].image)


def test_abort_drops_what_is_held() -> None:
    stage = TemporalStage(lookahead=3)
    stage.process(Batch(tuple(frames_of(scene(2)[0]))))
    stage.abort(failed=True)
    assert list(stage.finish()) == []


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        TemporalFilter(lookahead=-1)
    with pytest.raises(ValueError):
        TemporalFilter(lookahead=2, history=0)


@pytest.mark.parametrize("lookahead", [0, 3])
def test_a_still_camera_loses_most_of_the_rain(lookahead: int) -> None:
    clean, masks = scene(30)
    noisy = rain(clean)
    background_px = [~np.any(masks, axis=0)] * len(clean)
    before = error(noisy, clean, background_px)
    after = error(run_filter(noisy, lookahead), clean, background_px)
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize("lookahead", [0, 3])
def test_a_moving_object_is_not_smeared_nor_left_behind(lookahead: int) -> None:
    clean, masks = scene(30)
    noisy = rain(clean)
    out = run_filter(noisy, lookahead)
    assert error(out, clean, masks) <= error(noisy, clean, masks) + 0.5
    # where the object was in the last frames and is no more: no ghost of it
    trail = [
        np.any(masks[max(0, t - 4) : t], axis=0) & ~m if t else np.zeros_like(m)
        for t, m in enumerate(masks)
    ]
    assert error(out, clean, trail) <= error(noisy, clean, trail) + 0.5


def blotches(images: list[np.ndarray], level: float, seed: int = 3) -> list[np.ndarray]:
    """What a model leaves of heavy rain: faint blotches of light all over, anew every frame."""
    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        field = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 3)
        light = np.abs(field) * (level / field.std())
        out.append(np.clip(image + light[..., None], 0, 255).astype(np.uint8))
    return out


def bars_given_back(lookahead: int, blotch_level: float) -> dict[str, float]:
    """Thin bars that a model removes from every frame, as it would a fence behind rain, run
    through the stage with and without the rainy sources: errors on the bars, on the moving
    object, and the mean brightness shift."""
    clean_base, masks = scene(30)
    bars = np.zeros((H, W), bool)
    bars[:, 5::9] = True
    clean = []
    for frame, mask in zip(clean_base, masks):
        with_bars = frame.copy()
        with_bars[bars & ~mask] = 20
        clean.append(with_bars)
    # the bars taken out, some rain left
    derained = blotches(rain(clean_base, seed=1), blotch_level)
    sources = [
        np.clip(c.astype(float) + 30 + s.astype(float) - b, 0, 255).astype(np.uint8)
        for c, s, b in zip(clean, rain(clean_base, seed=2), clean_base)
    ]
    with_sources = stage_output(derained, sources, lookahead)
    without = stage_output(derained, [None] * len(derained), lookahead)
    still_bars = [bars & ~np.any(masks, axis=0)] * len(clean)
    k = 6  # from the frame on where the window is long enough
    return {
        "bars": error(with_sources[k:], clean[k:], still_bars[k:]),
        "bars_without_sources": error(without[k:], clean[k:], still_bars[k:]),
        "object": error(with_sources, clean, masks),
        "object_per_frame": error(derained, clean, masks),
        "shift": float(
            np.mean([o.astype(float).mean() - c.mean() for o, c in zip(with_sources, clean)])
        ),
    }


@pytest.mark.parametrize("lookahead", [0, 3])
def test_fine_scene_the_model_took_out_of_every_frame_comes_back_and_the_veil_does_not(
    lookahead: int,
) -> None:
    """The stage gives the bars back from the rainy sources, but not the smooth veil the model
    rightly removed, nor the rain."""
    e = bars_given_back(lookahead, blotch_level=0)
    assert e["bars"] < 0.3 * e["bars_without_sources"]
    assert abs(e["shift"]) < 2.0, "the veil the model removed stays removed"
    assert e["object"] <= e["object_per_frame"] + 0.5


@pytest.mark.parametrize("lookahead", [0, 3])
def test_fine_scene_comes_back_where_the_model_leaves_heavy_rain_all_over(lookahead: int) -> None:
    """Left-over blotches make neighbours differ everywhere; judged against the rain level they
    still count as agreeing (with a fixed limit the bars' error stayed at 0.64x)."""
    e = bars_given_back(lookahead, blotch_level=10)
    assert e["bars"] < 0.3 * e["bars_without_sources"]


def downpour(clean: list[np.ndarray], seed: int = 4) -> tuple[list, list]:
    """Rain over more than half of every frame (sources), and what a model leaves of it: a
    quarter of each streak, too often at a pixel for a median to drop it (derained)."""
    rng = np.random.default_rng(seed)
    sources, derained = [], []
    for frame in clean:
        streaks = np.zeros((H, W), np.float32)
        for _ in range(1400):
            x, y = int(rng.integers(0, W)), int(rng.integers(-9, H))
            cv2.line(streaks, (x, y), (x + 2, y + 9), 1.0, 1)
        base = frame + rng.normal(0, 1.5, frame.shape)
        sources.append(np.clip(base + 60 * streaks[..., None], 0, 255).astype(np.uint8))
        derained.append(np.clip(base + 15 * streaks[..., None], 0, 255).astype(np.uint8))
    return sources, derained


@pytest.mark.parametrize("lookahead", [0, 3])
def test_what_the_model_leaves_of_a_downpour_goes_where_a_source_was_dry(lookahead: int) -> None:
    """Rain only adds light: on a still camera no pixel is brighter than its darkest agreeing
    source (plus the noise), and in a window of 7 to 10 frames nearly every pixel was dry in one.
    Without the sources (the median alone) the left-over streaks stay."""
    clean, masks = scene(30)
    sources, derained = downpour(clean)
    background_px = [~np.any(masks, axis=0)] * len(clean)
    k = 6  # from the frame on where the window is long enough
    with_sources = stage_output(derained, sources, lookahead)
    without = stage_output(derained, [None] * len(clean), lookahead)
    e_with = error(with_sources[k:], clean[k:], background_px[k:])
    e_without = error(without[k:], clean[k:], background_px[k:])
    assert e_with < 0.6 * e_without, (e_with, e_without)


@pytest.mark.parametrize("lookahead", [0, 3])
def test_a_noisy_still_scene_without_rain_keeps_its_brightness(lookahead: int) -> None:
    """The darkest of several noisy sources lies below the scene; the margin read from the noise
    keeps the floor above it, so a dry, noisy camera is not darkened."""
    clean, masks = scene(30)
    rng = np.random.default_rng(8)
    noisy = [
        np.clip(np.round(c + rng.normal(0, 4, c.shape)), 0, 255).astype(np.uint8) for c in clean
    ]
    smoother = [
        np.clip(np.round(c + rng.normal(0, 2, c.shape)), 0, 255).astype(np.uint8) for c in clean
    ]
    out = stage_output(smoother, noisy, lookahead)
    background = ~np.any(masks, axis=0)
    shift = np.mean([(o.astype(float) - c)[background].mean() for o, c in zip(out, clean)])
    assert abs(shift) < 0.5, shift


@pytest.mark.parametrize("lookahead", [0, 3])
@pytest.mark.parametrize(
    "gains", [{15: 1.4}, {t: 1.25 for t in range(15, 30)}], ids=["flash", "lamp on"]
)
def test_a_flash_or_a_light_switched_on_is_kept(lookahead: int, gains: dict[int, float]) -> None:
    """A lightning flash brightens a whole frame: its envelope (the minimum with the frames
    beside it) matched theirs, so the flash was taken for rain and erased, and the first frame
    of a lamp switched on came out unlit."""
    clean, _ = scene(30)
    clean = [np.clip(c * gains.get(t, 1.0), 0, 255).astype(np.uint8) for t, c in enumerate(clean)]
    out = run_filter(rain(clean), lookahead)
    assert abs(out[15].mean() - clean[15].mean()) < 2, (out[15].mean(), clean[15].mean())


@pytest.mark.parametrize("lookahead", [0, 3])
def test_a_fast_bright_object_and_a_lamp_coming_on_are_kept(lookahead: int) -> None:
    """A frame's envelope (its minimum with the frames beside it) is the background behind a
    bright object that moves its own width in a frame, and behind a lamp's first frame on: the
    neighbours stood in for them, and a white car at 20 pixels a frame came out erased."""
    still = background(0)
    clean, car = [], []
    for t in range(30):
        frame, mask = still.copy(), np.zeros((H, W), bool)
        x = 8 + (28 * t) % (W - OBJECT - 16)
        mask[30 : 30 + OBJECT, x : x + OBJECT] = True
        frame[mask] = 235
        if t >= 15:
            frame[66:90, 110:150] = 230
        clean.append(frame)
        car.append(mask)
    noisy = rain(clean)
    out = run_filter(noisy, lookahead)
    assert error(out, clean, car) <= error(noisy, clean, car) + 0.5
    lamp = np.zeros((H, W), bool)
    lamp[66:90, 110:150] = True
    assert (
        error(out[15:16], clean[15:16], [lamp]) <= error(noisy[15:16], clean[15:16], [lamp]) + 0.5
    )


@pytest.mark.parametrize("lookahead", [0, 3])
def test_a_camera_bumped_for_a_frame_leaves_no_ghost(lookahead: int) -> None:
    """A frame shifted by a bump (wind on a still camera) sat in windows whose first and last
    frames agreed: it was combined, unaligned, with its neighbours (and they with it)."""
    clean, _ = scene(30)
    bump = np.float32([[1, 0, 6], [0, 1, 0]])
    clean[15] = cv2.warpAffine(clean[15], bump, (W, H), borderMode=cv2.BORDER_REFLECT)
    noisy = rain(clean)
    out = run_filter(noisy, lookahead)
    whole = [np.ones((H, W), bool)] * 5
    assert error(out[13:18], clean[13:18], whole) <= error(noisy[13:18], clean[13:18], whole) + 0.5


def test_a_panning_camera_keeps_the_models_frames() -> None:
    """After a warp, parallax and sub-pixel errors look like rain: a moving camera's frames
    come back as the model made them, every one, files and live alike."""
    clean, _ = scene(24, pan=2.5)
    noisy = rain(clean)
    for lookahead in (0, 3):
        out = run_filter(noisy, lookahead)
        assert len(out) == len(noisy)
        assert all(np.array_equal(a, b) for a, b in zip(out, noisy))


def test_the_command_keeps_every_frame_and_time_with_the_stage_on(tmp_path, shared) -> None:
    """A variable-frame-rate file through the real command, the stage on and off: the same
    frames at the same times; the stage is on by default for video."""
    from tests.media import clean_frames, decode_all, make_clip
    from tests.test_reliability import run_cli

    src = tmp_path / "vfr.mp4"
    make_clip(src, clean_frames(12, (96, 64)), vfr=True)
    times = {}
    fast = ("--flip-average", "off", "--precision", "fp32", "--backend", "torch")  # any model
    for mode in ("on", "off"):
        out = tmp_path / f"{mode}.mp4"
        result = run_cli(src, out, "--temporal", mode, "--crf", "0", "-v", *fast)
        assert result.returncode == 0, result.stderr
        assert ("temporal" in result.stderr.split("busy:")[-1]) == (mode == "on")
        images, times[mode], _ = decode_all(out)
        assert len(images) == 12
    assert times["on"] == times["off"]
    default = run_cli(src, tmp_path / "auto.mp4", *fast)
    assert "temporal" in default.stderr.split("busy:")[-1], "auto is on for a video file"


def test_a_derainer_with_the_stage_on_steadies_a_still_scene(shared) -> None:
    """The per-stream Python API: frames from a fixed camera come back with less of the rain
    the model leaves, each at once (past frames only)."""
    from streamderain import Derainer, ModelOptions

    clean, _ = scene(16)
    noisy = rain(clean)
    plain = Derainer(device="cpu", temporal="off")
    steady = Derainer(ModelOptions(device="cpu"), temporal="on")  # a keyword beside options
    still = [np.ones((H, W), bool)] * len(clean)
    per_frame = [plain(image) for image in noisy]
    buffer = np.empty_like(noisy[0])  # one array reused for every frame, as a capture loop does
    combined = []
    for image in noisy:
        buffer[:] = image
        combined.append(steady(buffer))
    assert all(a.shape == b.shape for a, b in zip(per_frame, combined))
    assert error(combined[6:], clean[6:], still[6:]) < error(per_frame[6:], clean[6:], still[6:])
    fresh = Derainer(device="cpu", temporal="on")  # the same frames again, each its own array
    assert all(np.array_equal(fresh(image), out) for image, out in zip(noisy, combined))
    as_tensors = Derainer(device="cpu", temporal="on")  # floats go through the stage too
    for image, out in zip(noisy, combined):
        x = torch.from_numpy(image).permute(2, 0, 1)[None] / 255.0
        y = (as_tensors(x)[0].permute(1, 2, 0) * 255).round().byte().numpy()
        assert np.abs(y.astype(int) - out).max() <= 1


def test_eval_video_scores_each_clip_under_the_same_rain_whatever_else_is_scored(tmp_path):
    """A clip's rain is seeded by its name: scored alone or beside another, it scores the same."""
    import json
    import subprocess
    import sys

    def rows(presets: str) -> dict[str, dict]:
        out = tmp_path / f"{presets}.json"
        cmd = [sys.executable, "-m", "training", "eval-video", "--frames", "6"]
        cmd += ["--model", "dcsfn-lite", "--flip-average", "off"]
        cmd += ["--fixed-presets", presets, "--davis-presets", "", "--json", str(out)]
        subprocess.run(cmd, check=True, timeout=600, capture_output=True)
        return {r["clip"]: r for r in json.loads(out.read_text())}

    alone, beside = rows("light"), rows("heavy-streaks,light")
    folders = []  # two models of one file name: each its own cached frames
    for run, name in (("a", "dcsfn-lite"), ("b", "dcsfn-lite-heavy"), ("c", "dcsfn-lite")):
        (tmp_path / run).mkdir()
        model = tmp_path / run / "step-002000.pt"
        model.write_bytes(resolve_source(name).read_bytes())
        folders.append(cache_folder(tmp_path / "cache", str(model), flip=False, int8=False))
    assert folders[0] != folders[1] and folders[0] == folders[2]
    assert set(alone) == {"street-light", "barn-light"}
    assert len(beside) == 4
    for clip, row in alone.items():
        assert row["rainy"] == beside[clip]["rainy"]
    for clip in ("street-heavy-streaks", "barn-heavy-streaks"):
        rainy, derained = beside[clip]["rainy"], beside[clip]["per-frame"]
        assert derained["psnr_y"] > rainy["psnr_y"] + 3, "the model derains heavy streaks"
