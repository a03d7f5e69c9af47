"""Readers for every shared layout, synthetic rain, a short training run, exact resume, eval."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import DATA, FIXTURES
from training import DCSFNConfig, build_network, load_model
from training.batches import PatchSampler
from training.config import ConfigError
from training.data import (
    DatasetError,
    draw_fence,
    draw_thin_structures,
    find_clean_images,
    find_pairs,
    list_images,
    pixel_digest,
    read_pair,
    read_rgb,
)
from training.evaluate import (
    REAL_RAIN_FRAME,
    bars_kept,
    derain_rgb,
    evaluate,
    streaks_left,
)
from training.grow import deepen
from training.metrics import ssim
from training.rain import (
    PRESETS,
    RainField,
    RainLayers,
    add_rain,
    rain_layer,
    rain_video,
    transplant,
)
from training.recipe import TrainConfig
from training.train import Trainer, dry_colour_error, native_bf16
from training.validation import validation_sets


@pytest.mark.parametrize(
    "folder, count",
    [
        ("train-pairs/RainTrainL", 9),
        ("train-pairs/RainTrainH_min", 12),
        ("train-pairs/jorder-small", 18),
        ("train-pairs/pcnet", 38),
        ("rain100L-test", 100),
    ],
)
def test_every_shared_pair_layout_reads(shared, folder, count):
    pairs = find_pairs(DATA / folder)
    assert len(pairs) == count
    for p in pairs:
        assert p.rainy.exists() and p.clean.exists()
        assert p.rainy != p.clean


def test_clean_images_and_video_folders_read(shared):
    assert len(find_clean_images(DATA / "clean" / "images" / "kodak24")) == 24
    assert len({p.parent for p in find_clean_images(DATA / "clean" / "video")}) == 6


def test_a_pair_without_its_twin_is_an_error(tmp_path):
    (tmp_path / "rain-1.png").write_bytes(b"")
    (tmp_path / "norain-1.png").write_bytes(b"")
    (tmp_path / "rain-2.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no clean image for 2"):
        find_pairs(tmp_path)
    with pytest.raises(DatasetError, match="no known pair layout"):
        find_pairs(tmp_path / "..")
    (tmp_path / "rain-1.jpg").write_bytes(b"")  # one pair, two rainy images: not one dropped
    with pytest.raises(DatasetError, match="rain-1.jpg and rain-1.png: one pair, two images"):
        find_pairs(tmp_path)


def test_a_rainy_jpeg_pairs_with_its_clean_png(tmp_path):
    for folder, name in (("rain", "a.jpg"), ("norain", "a.png")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"")
    [pair] = find_pairs(tmp_path)
    assert (pair.rainy.name, pair.clean.name) == ("a.jpg", "a.png")


def test_synthetic_rain_is_seeded_and_brightens_like_rain():
    clean = np.full((120, 160, 3), 60, np.uint8)
    a = add_rain(clean, "light", np.random.default_rng(3))
    b = add_rain(clean, "light", np.random.default_rng(3))
    c = add_rain(clean, "light", np.random.default_rng(4))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a.astype(int) >= clean).all()  # streaks only add light
    heavy = add_rain(clean, "heavy", np.random.default_rng(3))
    assert heavy.mean() > a.mean()
    long = add_rain(clean, "light-long", np.random.default_rng(3))
    assert (long.astype(int) >= clean).all() and long.mean() > clean.mean()


def test_a_real_rain_layer_transplants_exactly(shared):
    """rainy = clean + layer, clipped: the aligned pair gives back its own rainy picture."""
    rainy, clean = read_pair(find_pairs(DATA / "train-pairs" / "jorder-small")[0])
    layer = rain_layer(rainy, clean)
    assert np.array_equal(transplant(clean, layer), rainy)
    other = np.full_like(clean, 200)
    expected = np.minimum(other.astype(int) + layer, 255)
    assert np.array_equal(transplant(other, layer), expected)
    assert transplant(other, layer).max() == 255, "the clip is exercised"
    light_rainy, light_clean = read_pair(find_pairs(DATA / "train-pairs" / "RainTrainL")[0])
    with pytest.raises(ValueError, match="not an aligned pair"):
        rain_layer(light_rainy, light_clean)


def test_rain_layer_patches_are_seeded_and_keep_rain_additive(shared):
    pairs = find_pairs(DATA / "train-pairs" / "jorder-small")[:3]
    bank = RainLayers([rain_layer(*read_pair(p)) for p in pairs], strength=(0.5, 1.0))
    a = bank.sample(np.random.default_rng(1), 70, 90)
    assert a.shape == (70, 90, 3) and a.dtype == np.uint8
    assert np.array_equal(a, bank.sample(np.random.default_rng(1), 70, 90))
    assert not np.array_equal(a, bank.sample(np.random.default_rng(2), 70, 90))
    assert a.mean() > 1, "a heavy layer is not empty"


def test_heavy_preset_adds_a_veil_and_streaks():
    clean = np.full((160, 240, 3), 40, np.uint8)
    rainy = add_rain(clean, "jorder-heavy", np.random.default_rng(0))
    layer = rainy.astype(int) - clean
    assert layer.min() >= 0
    assert np.percentile(layer, 5) > 5, "a veil lifts even the pixels between streaks"
    assert np.percentile(layer, 99) > np.percentile(layer, 50) + 20, "streaks stand out"


def _median_lift(style, grey: int) -> float:
    """The median rise a style's rain gives a flat picture of ``grey``."""
    clean = np.full((200, 300, 3), grey, np.uint8)
    layer = add_rain(clean, style, np.random.default_rng(0)).astype(int) - clean
    assert layer.min() >= 0
    return float(np.median(layer))


def test_a_floor_of_rain_is_added_on_not_mixed_in_like_haze():
    """Under a floor, dark and bright pictures are lifted alike; under haze, dark ones more."""
    floor = replace(PRESETS["jorder-additive"], layers=(2, 2), floor=(0.1, 0.1))
    dark, bright = _median_lift(floor, 30), _median_lift(floor, 150)
    assert 20 < dark < 32, "the floor's level is the one asked for (0.1: 25 grey levels)"
    assert abs(dark - bright) < 1
    hazy = replace(PRESETS["jorder-heavy"], haze=(0.2, 0.2), atmosphere=(0.9, 0.9))
    assert _median_lift(hazy, 30) > _median_lift(hazy, 150) + 15


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_video_rain_falls_coherently_between_frames():
    """Frame t+1's rain is frame t's moved along the fall; redrawn rain would not correlate."""
    style = replace(PRESETS["light"], layers=(1, 1), density=(0.003, 0.003))
    field = RainField(200, 200, style, np.random.default_rng(0))
    dx, dy = field.layers[0].step
    first = field.streaks()
    field.advance()
    second = field.streaks()
    moved = np.roll(first, (round(dy), round(dx)), axis=(0, 1))
    m = 40  # away from the wrap-around border
    coherent = _ncc(moved[m:-m, m:-m], second[m:-m, m:-m])
    redrawn = RainField(200, 200, style, np.random.default_rng(1)).streaks()
    unrelated = _ncc(redrawn[m:-m, m:-m], second[m:-m, m:-m])
    assert coherent > 0.8, coherent
    assert unrelated < 0.2, unrelated
    frames = rain_video([np.zeros((64, 64, 3), np.uint8)] * 3, "light", np.random.default_rng(0))
    assert len(frames) == 3 and not np.array_equal(frames[0], frames[1])


TINY = DCSFNConfig(channels=4, num_blocks=1, scale_num=2, conv_num=1)


def _tiny_train(**kw) -> TrainConfig:
    base = TrainConfig(
        steps=10,
        batch=4,
        patch=32,
        lr=2e-3,
        real_dirs=("train-pairs/RainTrainL",),
        clean_dirs=("clean/images/kodak24",),
        val_dir="",
        checkpoint_minutes=60,
    )
    return replace(base, **kw)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_short_training_lowers_the_loss(shared, tmp_path, precision):
    torch.set_num_threads(2)
    cfg = _tiny_train(steps=80)
    trainer = Trainer(TINY, cfg, DATA, tmp_path / "run", precision)
    held_out = PatchSampler(replace(cfg, batch=32), DATA).batch(np.random.default_rng(99))

    def loss() -> float:
        with torch.no_grad():
            return float(-ssim(trainer.net(held_out[0]), held_out[1]))

    before = loss()
    trainer.run(progress=False)
    assert loss() < before - 0.01
    assert (tmp_path / "run" / "last.pt").exists()
    assert (
        json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["precision"]
        == precision
    )


@pytest.mark.parametrize(
    ("option", "term", "name"),
    [
        ("l1_weight", lambda out, clean, rainy: (out - clean).abs().mean(), "L1"),
        (
            "mean_weight",
            lambda out, clean, rainy: (out - clean).mean(dim=(2, 3)).abs().mean(),
            "|mean colour error|",
        ),
        (
            "lowpass_weight",
            lambda out, clean, rainy: (F.avg_pool2d(out, 8) - F.avg_pool2d(clean, 8)).abs().mean(),
            "L1 of 8x8 block means",
        ),
        (
            "psnr_weight",
            lambda out, clean, rainy: (
                10 * torch.log10((out - clean).pow(2).mean(dim=(1, 2, 3))).mean()
            ),
            "PSNR (dB per patch)",
        ),
        (
            "left_weight",
            lambda out, clean, rainy: (out - clean).clamp(min=0).mean(),
            "mean excess over clean",
        ),
        (
            "dry_mean_weight",
            lambda out, clean, rainy: torch.stack(
                [
                    (o - c)[:, ((r - c).abs() <= 2 / 255).all(dim=0)].mean(dim=1).abs()
                    for o, c, r in zip(out, clean, rainy)
                ]
            ).mean(),
            "|mean colour error where dry|",
        ),
    ],
)
def test_a_loss_term_joins_the_loss_when_asked(shared, tmp_path, option, term, name):
    torch.set_num_threads(2)
    cfg = _tiny_train(**{option: 0.5})
    rainy, clean = PatchSampler(cfg, DATA).batch(np.random.default_rng(5))
    trainer = Trainer(TINY, cfg, DATA, tmp_path / "run")
    with torch.no_grad():
        out = trainer.net(rainy)
        expected = float(-ssim(out, clean) + 0.5 * term(out, clean, rainy))
    assert trainer.train_step(rainy, clean) == pytest.approx(expected, abs=1e-5)
    sign = "-" if option == "psnr_weight" else "+"
    assert trainer.metadata({})["recipe"]["loss"] == f"-SSIM {sign} 0.5 {name}"


def test_a_validation_between_log_steps_is_logged_with_its_step(shared, tmp_path):
    """A run validated at a step the loss is not logged at still names the step, so that going
    on from a checkpoint can read its log."""
    torch.set_num_threads(2)
    cfg = _tiny_train(steps=4, val_dir="clean/images/kodak24", val_images=1, val_every=2)
    trainer = Trainer(TINY, cfg, DATA, tmp_path / "run")
    trainer.run(until=3, progress=False)
    trainer.run(progress=False)  # goes on, rereading the log
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], "val_psnr_y" in r, "loss" in r) for r in log] == [
        (2, True, False),
        (3, False, True),
        (4, True, True),
    ]


def test_the_dry_brightness_term_ignores_the_rain():
    clean = torch.full((1, 3, 8, 8), 0.5)
    rainy = clean.clone()
    rainy[..., :, :2] += 0.3  # a streak down two columns
    out = clean.clone()
    out[..., :, :2] += 0.1  # a tenth of it left: the dry pixels are right
    assert float(dry_colour_error(out, rainy, clean)) == pytest.approx(0.0, abs=1e-7)
    out -= 0.02  # the scene behind darkened
    assert float(dry_colour_error(out, rainy, clean)) == pytest.approx(0.02, abs=1e-6)


def test_the_loss_can_leave_ssim_out(shared, tmp_path):
    torch.set_num_threads(2)
    cfg = _tiny_train(ssim_weight=0.0, psnr_weight=0.01)
    rainy, clean = PatchSampler(cfg, DATA).batch(np.random.default_rng(5))
    trainer = Trainer(TINY, cfg, DATA, tmp_path / "run")
    with torch.no_grad():
        mse = (trainer.net(rainy) - clean).pow(2).mean(dim=(1, 2, 3))
        expected = float(0.1 * torch.log10(mse).mean())
    assert trainer.train_step(rainy, clean) == pytest.approx(expected, abs=1e-5)
    assert trainer.metadata({})["recipe"]["loss"] == "-0.01 PSNR (dB per patch)"


def test_the_loss_can_judge_what_the_product_gives(shared, tmp_path):
    torch.set_num_threads(2)
    cfg = _tiny_train(as_product=True)
    rainy, clean = PatchSampler(cfg, DATA).batch(np.random.default_rng(5))
    trainer = Trainer(TINY, cfg, DATA, tmp_path / "run")
    with torch.no_grad():
        bare = trainer.net(rainy)
        mirrored = trainer.net(rainy.flip(-1)).flip(-1)
        product = torch.minimum(((bare + mirrored) / 2).clamp(0, 1), rainy)
        expected = float(-ssim(product, clean))
    assert float(-ssim(bare, clean)) != pytest.approx(expected, abs=1e-4)
    assert trainer.train_step(rainy, clean) == pytest.approx(expected, abs=1e-5)
    assert trainer.metadata({})["recipe"]["loss"] == (
        "-SSIM, on the mirror average kept below the input"
    )


def test_snapshots_hold_the_moving_average_of_the_weights_when_asked(shared, tmp_path):
    torch.set_num_threads(2)
    trainer = Trainer(TINY, _tiny_train(steps=3, ema_decay=0.9), DATA, tmp_path / "run")
    sampler, rng = PatchSampler(trainer.cfg, DATA), np.random.default_rng(1)
    seen = []
    for _ in range(3):
        trainer.train_step(*sampler.batch(rng))
        seen.append({k: v.clone() for k, v in trainer.net.state_dict().items()})
    shipped = load_model(trainer.snapshot({})).net.state_dict()
    for key, value in shipped.items():
        expected = 0.9 * (0.9 * seen[0][key] + 0.1 * seen[1][key]) + 0.1 * seen[2][key]
        assert torch.allclose(value, expected, atol=1e-6), key
    assert not torch.allclose(shipped[key], seen[2][key])
    assert trainer.metadata({})["recipe"]["weight_average"] == "EMA, decay 0.9"


def test_a_runs_checkpoint_of_any_age_loads_and_exports(shared, tmp_path):
    """Runs from before 2026-12-03 kept no weight average in last.pt and their snapshots beside
    it: both still load, as a model and through export."""
    trainer = Trainer(TINY, _tiny_train(steps=2), DATA, tmp_path / "old")
    trainer.run(progress=False)
    state = trainer.state()
    del state["ema"], state["steps"], state["earlier_stage"], state["grown_from"]
    torch.save(state, trainer.checkpoint_path)
    model = load_model(trainer.checkpoint_path)
    for name, value in trainer.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], value), name
    snapshot = trainer.snapshot({})
    beside = snapshot.rename(tmp_path / "old" / snapshot.name)
    again = Trainer(TINY, _tiny_train(steps=2), DATA, tmp_path / "old", resume=True)
    assert again.snapshot_path(2) == beside and again.cfg.steps == 2


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_continues_exactly(shared, tmp_path, ema_decay):
    torch.set_num_threads(2)
    cfg = _tiny_train(steps=10, ema_decay=ema_decay)
    straight = Trainer(TINY, cfg, DATA, tmp_path / "a")
    straight.run(progress=False)
    first = Trainer(TINY, cfg, DATA, tmp_path / "b")
    first.run(until=6, progress=False)
    at_six = first.checkpoint_path.read_bytes()
    first.run(until=8, progress=False)
    first.checkpoint_path.write_bytes(at_six)  # killed at step 8, last checkpoint at 6
    with open(first.log_path, "a") as log:
        log.write('{"step": 9, "val_psn')  # and while writing a record
    resumed = Trainer(TINY, cfg, DATA, tmp_path / "b")
    resumed.resume()
    assert resumed.step == 6
    resumed.run(progress=False)
    logged = [json.loads(line)["step"] for line in resumed.log_path.read_text().splitlines()]
    assert logged == [6, 10], "the steps after the checkpoint are logged once, as redone"
    for trained in ("net", "kept"):  # the weights, and their average where one is kept
        theirs, ours = getattr(straight, trained), getattr(resumed, trained)
        for (name, a), (_, b) in zip(
            theirs.state_dict().items(), ours.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), f"{trained}: {name}"
    assert resumed.sched.get_last_lr() == straight.sched.get_last_lr()


def test_a_second_stage_starts_from_the_first_stages_weights(shared, tmp_path):
    torch.set_num_threads(2)
    first = Trainer(TINY, _tiny_train(steps=3), DATA, tmp_path / "a")
    first.run(progress=False)
    weights = first.snapshot({})
    second = Trainer(TINY, _tiny_train(steps=3, init_from=str(weights)), DATA, tmp_path / "b")
    for (name, a), (_, b) in zip(
        first.net.state_dict().items(), second.net.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    meta = second.metadata({})
    assert meta["training_data"]["started_from"] == str(weights)
    assert meta["earlier_stage"]["steps"] == 3, "the first stage's own record travels along"
    other = replace(TINY, channels=8)
    said = r"another model config than this run's \(channels 8 in this run's config, 4 there\)"
    with pytest.raises(ValueError, match=said):
        Trainer(other, _tiny_train(init_from=str(weights)), DATA, tmp_path / "c")


def test_a_run_resumes_with_its_own_recipe_only(shared, tmp_path):
    """Resuming with another seed or rain mix drew other batches than the run planned, and its
    record said nothing of it; how often it is scored and saved may change."""
    torch.set_num_threads(2)
    Trainer(TINY, _tiny_train(steps=4), DATA, tmp_path / "run").run(until=2, progress=False)
    with pytest.raises(ConfigError, match="begun with another recipe \\(seed 0 -> 4\\)"):
        Trainer(TINY, _tiny_train(steps=4, seed=4), DATA, tmp_path / "run", resume=True)
    again = _tiny_train(steps=4, val_every=1000, checkpoint_minutes=5)
    assert Trainer(TINY, again, DATA, tmp_path / "run", resume=True).step == 2


def test_a_stage_started_from_the_authors_bgr_weights_starts_as_the_same_function(shared, tmp_path):
    """A run trains in RGB; the authors' checkpoints are BGR. Their weights were copied as they
    were, so the run began with red and blue swapped (and its snapshots said RGB)."""
    authors = FIXTURES / "gru_c8_n2_dp.pth"
    start = load_model(authors)
    assert start.channel_order == "BGR"
    run = Trainer(start.config, _tiny_train(init_from=str(authors)), DATA, tmp_path / "run")
    x = torch.rand(1, 3, 40, 56) * torch.tensor([1.0, 0.5, 0.1]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert (run.net.eval()(x) - start(x)).abs().max() < 1e-5


def test_a_resumed_run_keeps_its_plan_and_its_record_of_the_stage_before(shared, tmp_path):
    """The run's own checkpoint holds both: the file it started from may be replaced or gone
    by then (configs start from bundled names, whose files change), and ``--steps`` given once
    must not be forgotten on resume."""
    torch.set_num_threads(2)
    first = Trainer(TINY, _tiny_train(steps=3), DATA, tmp_path / "a")
    first.run(progress=False)
    weights = first.snapshot({})
    second = Trainer(TINY, _tiny_train(steps=4, init_from=str(weights)), DATA, tmp_path / "b")
    second.run(until=2, progress=False)
    weights.unlink()
    resumed = Trainer(TINY, _tiny_train(init_from=str(weights)), DATA, tmp_path / "b", resume=True)
    assert (resumed.step, resumed.cfg.steps) == (2, 4)
    assert resumed.metadata({})["earlier_stage"]["steps"] == 3


@pytest.mark.parametrize("single", [False, True])
def test_a_grown_network_computes_what_the_shallower_one_did(single):
    config = replace(TINY, single=single, num_blocks=1)
    torch.manual_seed(0)
    shallow = build_network(config).eval()
    deep = build_network(replace(config, num_blocks=3)).eval()
    deep.load_state_dict(deepen(shallow.state_dict(), config, 3))
    x = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(deep(x), shallow(x))
    with pytest.raises(ValueError, match="into fewer"):
        deepen(deep.state_dict(), replace(config, num_blocks=3), 2)


def test_a_stage_may_start_from_a_shallower_model_of_its_config(shared, tmp_path):
    torch.set_num_threads(2)
    first = Trainer(TINY, _tiny_train(steps=2), DATA, tmp_path / "a")
    weights = first.snapshot({})
    deeper = replace(TINY, num_blocks=TINY.num_blocks + 1)
    second = Trainer(deeper, _tiny_train(steps=2, init_from=str(weights)), DATA, tmp_path / "b")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(second.net.eval()(x), first.net.eval()(x), atol=1e-6)
    assert second.metadata({})["training_data"]["grown_from_blocks"] == TINY.num_blocks


@pytest.mark.parametrize(
    "draw, option, most",
    [(draw_thin_structures, "structure_fraction", 0.25), (draw_fence, "fence_fraction", 0.8)],
)
def test_thin_bars_are_long_and_in_the_clean_picture_too(shared, draw, option, most):
    rng = np.random.default_rng(0)
    cfg = _tiny_train(**{option: 1.0}, rain_presets={"light": 1.0}, real_fraction=0.0)
    image = np.full((128, 128, 3), 128, np.uint8)
    for _ in range(5):
        drawn = draw(rng, image)
        changed = np.any(drawn != image, axis=2)
        assert 0.01 < changed.mean() < most, "thin bars, not a new picture"
        assert changed.any(axis=1).mean() > 0.4, "bars run across much of the height"
    for fraction in (0.0, 1.0):
        sampler = PatchSampler(replace(cfg, **{option: fraction}), DATA)
        sampler.clean = [np.zeros_like(image)]  # black, as the rotation's borders are
        _, clean = sampler._one(np.random.default_rng(1))
        assert clean.any() == bool(fraction), "the clean patch carries the bars, if asked"


def test_dry_patches_come_back_unchanged_and_are_scored_apart(shared):
    cfg = _tiny_train(rain_presets={"heavy-streaks": 1.0}, real_fraction=0.0, batch=64)

    def dry(config: TrainConfig) -> list[bool]:
        rainy, clean = PatchSampler(config, DATA).batch(np.random.default_rng(2))
        return [bool(torch.equal(r, c)) for r, c in zip(rainy, clean)]

    assert np.mean(dry(cfg)) < 0.05, "heavy streaks reach nearly every patch"
    share = np.mean(dry(replace(cfg, dry_fraction=0.25)))
    assert 0.15 < share < 0.45, "about a quarter of the patches is left dry"
    sets = validation_sets(replace(cfg, val_dir="clean/images/kodak24", val_images=2), DATA)
    assert [np.array_equal(r, c) for r, c in sets["val_dry"]] == [True, True]
    assert not any(np.array_equal(r, c) for r, c in sets["val"])


def test_a_fence_is_evenly_spaced_bars():
    rng = np.random.default_rng(3)
    image = np.full((96, 160, 3), 100, np.uint8)
    even = []
    for _ in range(20):
        drawn = draw_fence(rng, image).astype(np.int16) - image
        profile = np.abs(drawn).sum(axis=(0, 2))  # per column: a fence is mostly columns
        peaks = np.flatnonzero((profile[1:-1] > profile[:-2]) & (profile[1:-1] >= profile[2:]))
        gaps = np.diff(peaks[profile[peaks + 1] > 0.3 * profile.max()])
        even.append(len(gaps) >= 4 and np.median(np.abs(gaps - np.median(gaps))) <= 1)
    assert np.mean(even) > 0.75


def test_no_picture_scored_on_reaches_training_from_a_clean_folder(shared):
    """Held-out pairs and validation pictures named among the clean folders (``clean_dirs =
    ["clean/images"]`` holds the Kodak validation pictures) are left out by their pixels, and
    the evaluation set named as training data is refused by name."""
    cfg = _tiny_train(
        clean_dirs=("clean/images/kodak24", "train-pairs/jorder-small/norain"),
        val_dir="clean/images/kodak24",
        val_images=3,
        heavy_val_dir="train-pairs/jorder-small",
        heavy_val_names=("norain-15.png", "norain-16.png"),
    )
    sampler = PatchSampler(cfg, DATA)
    assert len(sampler.clean) == (24 - 3) + (18 - 2)
    scored = [read_rgb(f) for f in list_images(DATA / "clean" / "images" / "kodak24")[:3]]
    scored += [
        read_rgb(DATA / "train-pairs" / "jorder-small" / "norain" / n) for n in cfg.heavy_val_names
    ]
    assert not any(
        np.array_equal(c, s) for c in sampler.clean for s in scored if c.shape == s.shape
    )
    with pytest.raises(ConfigError, match="for evaluation only"):
        PatchSampler(replace(cfg, eval_dir="rain100L-test", real_dirs=("rain100L-test",)), DATA)


def test_no_held_out_pair_or_its_rain_reaches_training(shared):
    """Held-out pairs are removed by their pixels, also where another set holds a copy."""
    cfg = _tiny_train(
        real_fraction=0.2,
        real_dirs=("train-pairs/RainTrainH_min", "train-pairs/jorder-small"),
        layer_dirs=("train-pairs/jorder-small", "train-pairs/RainTrainH_min"),
        rain_presets={"real-layers": 1.0},
        heavy_val_dir="train-pairs/jorder-small",
        heavy_val_names=(
            "norain-2.png",
            "norain-3.png",
            "norain-15.png",
            "norain-16.png",
            "norain-17.png",
        ),
    )
    sampler = PatchSampler(cfg, DATA)
    held = [
        p
        for p in find_pairs(DATA / "train-pairs" / "jorder-small")
        if p.rainy.name in cfg.heavy_val_names
    ]
    banned = {pixel_digest(p.clean) for p in held} | {pixel_digest(p.rainy) for p in held}
    for pair in sampler.real_pairs + sampler.layer_pairs:
        assert pixel_digest(pair.clean) not in banned and pixel_digest(pair.rainy) not in banned
    # 12 + 18 pairs, less 5 held out and the 2 copies of them in RainTrainH_min
    assert len(sampler.real_pairs) == len(sampler.layer_pairs) == 30 - 5 - 2
    held_layers = [rain_layer(*read_pair(p)) for p in held]
    for layer in sampler.layers.layers:
        assert not any(np.array_equal(layer, h) for h in held_layers)
    rainy, clean = sampler.batch(np.random.default_rng(0))
    assert (rainy >= clean - 1e-6).all(), "transplanted rain only adds light"
    sets = validation_sets(cfg, DATA)
    assert len(sets["val_heavy"]) == 5


def test_held_out_published_pairs_are_scored_apart_and_never_trained_on(shared):
    """PCNet's 5.jpg and 11.jpg share one clean picture: holding out one keeps out both."""
    cfg = _tiny_train(
        real_fraction=1.0,
        real_dirs=("train-pairs/pcnet",),
        pairs_val_dir="train-pairs/pcnet",
        pairs_val_names=("5.jpg", "20.jpg"),
    )
    sampler = PatchSampler(cfg, DATA)
    trained = {p.rainy.name for p in sampler.real_pairs}
    assert not trained & {"5.jpg", "11.jpg", "20.jpg"}
    assert len(trained) == 38 - 3
    sets = validation_sets(cfg, DATA)
    assert len(sets["val_pairs"]) == 2 and "val_heavy" not in sets


def test_eval_scores_a_handful_of_pairs_and_writes_csv_and_sheet(shared, tmp_path):
    model = load_model()
    pairs = find_pairs(DATA / "rain100L-test")[:3]
    result = evaluate(model, pairs, tmp_path)
    assert len(result.rows) == 3
    assert 20 < result.rainy["psnr_y"] < 40
    assert 0 < result.derained["ssim_y"] <= 1
    assert (tmp_path / "scores.csv").read_text().count("\n") == 4
    assert (tmp_path / "sheet.png").stat().st_size > 1000


def test_eval_can_scale_the_rain_of_aligned_pairs_only(shared):
    model = load_model()
    pairs = find_pairs(DATA / "train-pairs/jorder-small")[:2]
    full, half = evaluate(model, pairs), evaluate(model, pairs, rain_scale=0.5)
    assert half.rainy["psnr_y"] > full.rainy["psnr_y"] + 3
    assert evaluate(model, pairs, rain_scale=0.0).rainy["psnr_y"] == float("inf")
    with pytest.raises(ValueError, match="not an aligned pair"):
        evaluate(model, find_pairs(DATA / "train-pairs/RainTrainL")[:1], rain_scale=0.5)


def test_real_rain_scores_see_bars_go_and_streaks_stay(shared):
    rainy = read_rgb(DATA / REAL_RAIN_FRAME)
    assert bars_kept(rainy, rainy) == pytest.approx((1.0, 1.0))
    assert streaks_left(rainy, rainy) == pytest.approx(1.0)
    down = cv2.GaussianBlur(rainy, (1, 9), 0, sigmaY=3)  # along the bars: they stay
    across = cv2.GaussianBlur(rainy, (9, 1), 3)  # across them: they go, and so do the streaks
    assert bars_kept(down, rainy)[0] > 0.8
    assert bars_kept(across, rainy)[0] < 0.3
    assert streaks_left(across, rainy) < 0.5
    derained = derain_rgb(load_model(), rainy)
    kept, correlation = bars_kept(derained, rainy)
    assert kept > 0.7 and correlation > 0.9, "the default model keeps the fence behind the plants"
    assert streaks_left(derained, rainy) < 1.0


def test_train_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown train option"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="unknown rain preset"):
        TrainConfig.from_dict({"rain_presets": {"drizzle": 1.0}})
    with pytest.raises(ValueError, match="val_preset must be one of"):
        TrainConfig.from_dict({"val_preset": "drizzle"})
    with pytest.raises(ValueError, match="val_preset must be one of"):  # a KeyError later
        TrainConfig.from_dict({"val_preset": "real-layers"})


@pytest.mark.parametrize(
    "values, message",
    [
        ({"val_every": 0}, "val_every must be 1 or more"),
        ({"steps": "6"}, "steps must be a whole number"),
        ({"milestones": 0.5}, "milestones must be a list of numbers"),
        ({"real_dirs": "pairs"}, "real_dirs must be a list of strings"),  # not p, a, i, r, s
        ({"batch": 0}, "batch must be 1 or more"),
        ({"rain_presets": {"light": 0}}, "no weight above 0"),
        ({"lr": True}, "lr must be a number"),
        ({"fence_fraction": 1.5}, "fence_fraction must be in 0..1"),
        ({"seed": -1}, "seed must be from 0 to 2"),  # a traceback from NumPy, then PyTorch
        ({"layer_strength": [1.0, 0.3]}, "layer_strength: low first"),  # taken as it was
    ],
)
def test_train_config_refuses_values_of_the_wrong_kind(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(values)


def test_a_patch_smaller_than_the_network_takes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="patch must be 8 or more"):
        Trainer(TINY, _tiny_train(patch=4), DATA, tmp_path / "run")
    with pytest.raises(ConfigError, match="channels must be a positive integer"):
        DCSFNConfig(channels=True)


def test_shipped_configs_parse():
    from training.recipe import load_train_config

    for path in Path(__file__).resolve().parents[1].glob("configs/*.toml"):
        model_cfg, _ = load_train_config(path)
        assert isinstance(model_cfg, DCSFNConfig)


def test_a_run_stopped_by_ctrl_c_keeps_its_state_and_goes_on(shared, tmp_path):
    """Ctrl-C saved nothing: a run lost everything since its last timed checkpoint (5 minutes
    by default), or all of it, with no last.pt to resume or export."""
    import signal
    import subprocess
    import sys

    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nchannels = 4\nnum_blocks = 1\nscale_num = 2\nconv_num = 1\n"
        '[train]\nsteps = 100000\nbatch = 1\npatch = 32\nreal_dirs = ["train-pairs/RainTrainL"]\n'
        'clean_dirs = ["clean/images/kodak24"]\nval_dir = ""\neval_dir = ""\n'
    )
    train = [sys.executable, "-m", "training", "train", "--config", str(config), "--threads", "1"]
    train += ["--out", str(tmp_path / "run"), "--data-root", str(DATA), "--no-progress"]
    proc = subprocess.Popen(train, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the data read: training begins
        if "training data" in line:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, err
    step = int(re.search(r"stopped at step (\d+); --resume goes on from there", err).group(1))
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert step > 0 and state["step"] == step
    went_on = subprocess.run([*train, "--resume", "--until", str(step + 2)], capture_output=True)
    assert went_on.returncode == 0, went_on.stderr
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == step + 2


def test_a_bf16_run_resumes_and_exports_in_its_own_precision(shared, tmp_path):
    """``--resume`` keeps the run's precision unless told; export records it and a purpose, and
    ships the average of the weights where the run keeps one."""
    import subprocess
    import sys

    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nchannels = 4\nnum_blocks = 1\nscale_num = 2\nconv_num = 1\n"
        '[train]\nsteps = 6\nbatch = 2\npatch = 32\nreal_dirs = ["train-pairs/RainTrainL"]\n'
        'clean_dirs = ["clean/images/kodak24"]\nval_dir = "clean/images/kodak24"\n'
        "val_images = 1\nval_every = 3\nema_decay = 0.5\n"
    )
    train = [sys.executable, "-m", "training", "train", "--config", str(config)]
    train += ["--out", str(tmp_path / "run"), "--data-root", str(DATA), "--no-progress"]
    first = subprocess.run(
        [*train, "--until", "3", "--precision", "bf16"], capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr
    # a CPU without bfloat16 instructions emulates it, 9 times slower: the user is told
    assert ("emulated" in first.stderr) == (not native_bf16()), first.stderr
    subprocess.run([*train, "--resume"], check=True, timeout=300)
    other_plan = subprocess.run(
        [*train, "--resume", "--steps", "9"], capture_output=True, text=True
    )
    assert other_plan.returncode == 1 and "planned for 6 steps" in other_plan.stderr
    # the plan changed in the config was taken without a word, and nothing trained
    replanned = tmp_path / "replanned.toml"
    replanned.write_text(config.read_text().replace("steps = 6", "steps = 9"))
    again = subprocess.run(
        [*train, "--resume", "--config", str(replanned)], capture_output=True, text=True
    )
    assert again.returncode == 1 and "steps = 9" in again.stderr, again.stderr
    assert "planned for 6 steps" in again.stderr
    behind = subprocess.run([*train, "--resume", "--until", "2"], capture_output=True, text=True)
    assert behind.stderr.strip().splitlines()[-1].endswith("this run is at step 6 already")
    assert behind.returncode == 1 and "Traceback" not in behind.stderr, behind.stderr
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["precision"]) for r in log] == [(3, "bf16"), (6, "bf16")]
    out = tmp_path / "tiny.pt"
    subprocess.run(
        [sys.executable, "-m", "training", "export", "--config", str(config), "--run",
         str(tmp_path / "run"), "--out", str(out), "--purpose", "a test"],
        check=True,
        timeout=300,
    )  # fmt: skip
    model = load_model(out)
    meta = model.info.metadata
    assert (meta["steps"], meta["recipe"]["precision"], meta["purpose"]) == (6, "bf16", "a test")
    assert "val_synthetic_light" in meta["metrics"], "the scores of step 6 (were {})"
    average = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["ema"]
    for name, value in model.net.state_dict().items():
        assert torch.equal(value, average[f"module.{name}"]), "export ships the weight average"
    from_run = load_model(tmp_path / "run" / "last.pt")  # a run in progress, tried as a model
    assert (from_run.channel_order, from_run.config) == ("RGB", model.config)
    for name, value in model.net.state_dict().items():
        assert torch.equal(value, from_run.net.state_dict()[name]), "the weights export ships"
    (tmp_path / "run" / "last.pt").unlink()  # a run stopped before its first checkpoint
    subprocess.run(
        [sys.executable, "-m", "training", "export", "--config", str(config), "--run",
         str(tmp_path / "run"), "--out", str(tmp_path / "early.pt"), "--step", "3"],
        check=True,
        timeout=300,
    )  # fmt: skip
    assert load_model(tmp_path / "early.pt").info.metadata["steps"] == 3


def test_the_training_command_answers_bad_input_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``streamderain`` does: one line naming what is wrong, no traceback, nothing replaced."""
    from click.testing import CliRunner

    from training.__main__ import main

    cases = {
        "unknown model": (["eval", "--model", "nosuch", "--data", "empty"], "unknown model name"),
        "no pairs": (["eval", "--model", "dcsfn-lite", "--data", "empty"], "empty"),
        "bad TOML": (["validate", "dcsfn-lite", "--config", "bad.toml"], "bad.toml: "),
        "a table misspelled": (["validate", "dcsfn-lite", "--config", "typo.toml"], "modle"),
        "no validation set": (
            ["validate", "dcsfn-lite", "--config", "empty.toml"],
            "no validation",
        ),
        "two configs": (
            ["average", "dcsfn-lite", "dcsfn-deep", "--out", "a.pt"],
            "one config can be averaged (num_blocks 1 in the first, 2 in dcsfn-deep)",
        ),
        # the first model was scored, then the run failed on the second name
        "a model unknown after one known": (
            ["validate", "dcsfn-lite", "nosuch", "--config", "val.toml"],
            "nosuch: unknown model name",
        ),
        "no folder": (
            ["average", "dcsfn-lite", "dcsfn-lite", "--out", "no/a.pt"],
            "no such folder",
        ),
        "a file there": (["average", "dcsfn-lite", "dcsfn-lite", "--out", "kept.pt"], "pass -y"),
    }
    train = ["train", "--config", "tiny.toml", "--out", "run"]
    cases["a damaged run"] = ([*train, "--resume"], "run/last.pt: not a PyTorch checkpoint")
    cases["a model in place of a run's checkpoint"] = (
        ["export", "--config", "tiny.toml", "--run", "snapshot-run", "--out", "x.pt"],
        "not a training run's checkpoint",
    )
    cases["gaps on a packed data root"] = (["gaps", "--data-root", "kroot"], "past the validation")
    cases["rain that is not an aligned layer"] = (
        ["rain-stats", "--config", "layers.toml", "--data-root", "."],
        "a.png: not an aligned pair",
    )
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    Path("empty").mkdir()
    for kind, level in (("rain", 10), ("norain", 20)):  # the "rainy" picture darker than clean
        Path("train-pairs", "dark", kind).mkdir(parents=True)
        cv2.imwrite(f"train-pairs/dark/{kind}/a.png", np.full((8, 8, 3), level, np.uint8))
    Path("layers.toml").write_text('[train]\nlayer_dirs = ["train-pairs/dark"]\n')
    Path("kroot/clean/images/kodak24").mkdir(parents=True)  # the validation's 12, as packed
    for i in range(12):
        cv2.imwrite(f"kroot/clean/images/kodak24/{i:02d}.png", np.zeros((8, 8, 3), np.uint8))
    Path("tiny.toml").write_text("[model]\nchannels = 4\nscale_num = 2\nconv_num = 1\n")
    Path("run").mkdir()
    Path("run", "last.pt").write_bytes(b"PK\x03\x04 cut short")
    Path("snapshot-run").mkdir()
    torch.save({"state_dict": {}}, "snapshot-run/last.pt")
    Path("bad.toml").write_text("x = [")
    Path("typo.toml").write_text("[modle]\nchannels = 16\n")
    Path("empty.toml").write_text("")
    Path("val.toml").write_text('[train]\nval_dir = "clean/images/kodak24"\nval_images = 1\n')
    kept = tmp_path / "kept.pt"
    kept.write_bytes(b"the user's file")
    for case, (args, message) in cases.items():
        result = runner.invoke(main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), case
        assert len(lines) == 1 and lines[0].startswith("Error:"), (case, result.output)
        assert message in lines[0], (case, result.output)
    assert kept.read_bytes() == b"the user's file"
    result = runner.invoke(main, ["average", "dcsfn-lite", "dcsfn-lite", "-y", "--out", "kept.pt"])
    assert result.exit_code == 0, result.output
    assert load_model(kept).config == load_model("dcsfn-lite").config
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_bug_in_a_training_command_keeps_its_traceback() -> None:
    """Only the user's mistakes become one line: a ValueError from our own code is a bug, and
    a one-line message would hide where it is."""
    from click.testing import CliRunner

    from training.__main__ import OneLineErrors
    from training.config import ConfigError

    @click.group(cls=OneLineErrors)
    def group() -> None:
        pass

    @group.command()
    def bug() -> None:
        raise ValueError("an index went wrong")

    @group.command()
    def mistake() -> None:
        raise ConfigError("steps must be a positive integer")

    runner = CliRunner()
    result = runner.invoke(group, ["bug"])
    assert isinstance(result.exception, ValueError), result.output
    result = runner.invoke(group, ["mistake"])
    assert result.exit_code == 1 and "Error: steps must be" in result.output


@pytest.mark.parametrize(
    "args, said",
    [
        (["eval-video", "--fixed-presets", "bogus"], "unknown rain preset(s) bogus"),
        (["eval-video", "--frames", "0"], "0 is not in the range x>=2"),
        (["eval-video", "--threads", "0"], "0 is not in the range x>=1"),
        (["eval-video", "--json", "no/such/folder/x.json"], "no/such/folder is no folder"),
        (["validate", "dcsfn-lite", "--config", "clip.mp4"], "clip.mp4: not a TOML file"),
    ],
)
def test_training_commands_say_what_is_wrong_with_their_options(tmp_path, monkeypatch, args, said):
    """They were tracebacks (KeyError, IndexError, UnicodeDecodeError), or the JSON's folder
    was found missing after the whole evaluation."""
    from click.testing import CliRunner

    from training.__main__ import main

    monkeypatch.chdir(tmp_path)
    Path("clip.mp4").write_bytes(bytes([0, 0, 0, 0x18, 0x66, 0x74, 0xFF, 0xFE]))
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (1, 2) and said in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_ssim_is_scored_as_the_published_tables_score_it(shared):
    """Rain100L's rainy inputs score 0.838 SSIM-Y in the published tables (Wang's ssim_index,
    the window inside the picture); zero padding at the border gave 0.843."""
    from training.metrics import luma, ssim_image

    pairs = [read_pair(p) for p in find_pairs(DATA / "rain100L-test")]
    score = np.mean([ssim_image(luma(rainy), luma(clean)) for rainy, clean in pairs])
    assert abs(score - 0.838) < 0.001, score
