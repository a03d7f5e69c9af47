"""``--model auto``: the heavy-rain model where the rain leaves a veil, the light one elsewhere."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import torch

from streamderain import derain_video
from tests.conftest import DATA
from tests.media import decode_all, make_clip
from training.data import find_pairs, list_images, read_pair, read_rgb
from training.evaluate import derain_rgb
from training.metrics import luma, psnr
from training.rain import add_rain
from training.route import (
    HEAVY_MODEL,
    LIGHT_MODEL,
    FlipAverage,
    Router,
    best_thresholds,
    evaluation_forward,
    load_forward,
    mirror_scale,
)
from training.weights import load_model

SIZE = (240, 160)


def veiled(size: tuple[int, int] | None = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A training pair of JORDER's veiled heavy rain (rainy, clean), at ``size`` (None: 481 x
    321, as published)."""
    pair = next(
        p for p in find_pairs(DATA / "train-pairs" / "jorder-small") if p.rainy.stem == "norain-7"
    )
    rainy, clean = read_pair(pair)
    if size is None:
        return rainy, clean
    return tuple(cv2.resize(a, size, interpolation=cv2.INTER_AREA) for a in (rainy, clean))


def light() -> np.ndarray:
    clean = cv2.resize(read_rgb(list_images(DATA / "clean" / "images" / "kodak24")[20]), SIZE)
    return add_rain(clean, "light", np.random.default_rng(5))


def test_auto_takes_the_heavy_model_where_the_rain_leaves_a_veil_and_the_light_one_elsewhere(
    shared,
):
    auto, lite, heavy = load_forward("auto"), load_model(LIGHT_MODEL), load_model(HEAVY_MODEL)
    rainy, clean = veiled()
    by_heavy, by_lite = derain_rgb(heavy, rainy), derain_rgb(lite, rainy)
    assert psnr(luma(by_heavy), luma(clean)) > psnr(luma(by_lite), luma(clean)) + 3
    assert np.array_equal(derain_rgb(auto, rainy), by_heavy)
    drizzle = light()
    assert np.array_equal(derain_rgb(auto, drizzle), derain_rgb(lite, drizzle))
    assert not np.array_equal(derain_rgb(heavy, drizzle), derain_rgb(lite, drizzle))


def test_a_stream_checks_on_its_first_frames_and_then_every_so_often(shared):
    calls = {"light": 0, "heavy": 0}

    def counted(name: str, model: torch.nn.Module):
        def forward(x: torch.Tensor) -> torch.Tensor:
            calls[name] += 1
            return model(x)

        return forward

    router = Router(
        counted("light", load_model(LIGHT_MODEL)), counted("heavy", load_model(HEAVY_MODEL)), 3
    )
    as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    heavy_x, light_x = as_tensor(veiled()[0]), as_tensor(light())
    with torch.inference_mode():
        router(heavy_x)  # a check: both run, the heavy model is chosen
        assert calls == {"light": 1, "heavy": 1} and router.heavy_chosen
        router(light_x), router(light_x)  # until the next check, the choice stands
        assert calls == {"light": 1, "heavy": 3} and router.heavy_chosen
        router(light_x)  # three frames since the check: a check asks for the light model...
        assert calls == {"light": 2, "heavy": 4} and router.heavy_chosen
        router(light_x), router(light_x), router(light_x)  # ...and the next one switches
        assert calls == {"light": 3, "heavy": 7} and not router.heavy_chosen
        router(heavy_x), router(heavy_x), router(heavy_x)  # one check alone does not switch
        assert calls == {"light": 6, "heavy": 8} and not router.heavy_chosen
        router.reset()  # a new stream: its first check chooses at once
        router(heavy_x)
        assert calls == {"light": 7, "heavy": 9} and router.heavy_chosen


def test_the_command_line_runs_auto_as_the_heavy_model_on_veiled_rain(tmp_path, shared):
    rainy, _ = veiled()
    clip = tmp_path / "veiled.mp4"
    make_clip(clip, [rainy] * 4)
    outs = {}
    for model in ("auto", HEAVY_MODEL, LIGHT_MODEL):
        out = tmp_path / f"{model}.mkv"
        cmd = [sys.executable, "-m", "streamderain", clip, out, "--model", model]
        result = subprocess.run(
            [*map(str, cmd), "--temporal", "off", "--crf", "0", "-q"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        outs[model] = np.stack(decode_all(out)[0])
    assert len(outs["auto"]) == 4
    assert np.abs(outs["auto"].astype(int) - outs[HEAVY_MODEL]).max() <= 1
    assert np.abs(outs["auto"].astype(int) - outs[LIGHT_MODEL]).mean() > 5


def test_a_folder_of_pictures_chooses_for_each_picture(tmp_path, shared):
    src, out = tmp_path / "pictures", tmp_path / "derained"
    src.mkdir()
    out.mkdir()
    pictures = [veiled()[0], light(), veiled()[0]]
    for i, picture in enumerate(pictures):
        cv2.imwrite(str(src / f"{i + 1}.png"), picture[..., ::-1])
    heavy, lite = (evaluation_forward(name, flip=True) for name in (HEAVY_MODEL, LIGHT_MODEL))
    cmd = [sys.executable, "-m", "streamderain", src, out / "1", "--model", "auto"]
    result = subprocess.run([*map(str, cmd), "--precision", "fp32"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    derain_video(src, out / "3", model="auto", precision="fp32", batch=3)  # batched together
    for batch in ("1", "3"):  # each picture chooses its own
        written = [cv2.imread(str(p))[..., ::-1] for p in sorted((out / batch).iterdir())]
        for image, picture, model in zip(written, pictures, (heavy, lite, heavy), strict=True):
            assert np.abs(image.astype(int) - derain_rgb(model, picture)).max() <= 1, batch


def test_in_tiles_a_whole_frame_chooses_its_model(shared):
    from streamderain.api import Derainer
    from streamderain.runner import min_tile

    rainy = veiled(None)[0]  # 481 wide: wider than the smallest tile
    tile = min_tile(load_model(LIGHT_MODEL).net.min_size)
    assert rainy.shape[1] > tile
    out = {
        model: Derainer(model=model, tile=tile, device="cpu", backend="torch")(rainy)
        for model in ("auto", HEAVY_MODEL, LIGHT_MODEL)
    }
    assert np.array_equal(out["auto"], out[HEAVY_MODEL])
    assert np.abs(out["auto"].astype(int) - out[LIGHT_MODEL]).mean() > 5


def test_flip_averaging_is_mirror_symmetric(shared):
    heavy = load_model(HEAVY_MODEL)
    rainy = veiled()[0]
    mirrored = np.ascontiguousarray(rainy[:, ::-1])
    assert not np.array_equal(derain_rgb(heavy, mirrored), derain_rgb(heavy, rainy)[:, ::-1])
    both = FlipAverage(heavy)
    out = derain_rgb(both, rainy)
    assert np.array_equal(derain_rgb(both, mirrored), out[:, ::-1])
    assert np.abs(out.astype(int) - derain_rgb(heavy, rainy)).mean() > 0.1


def test_the_heavy_model_averages_with_a_smaller_mirror_image(shared):
    """Its weights name the size of its mirror run; the light model's mirror keeps the size."""
    heavy, lite = load_model(HEAVY_MODEL), load_model(LIGHT_MODEL)
    assert mirror_scale(heavy) == 0.95 and mirror_scale(lite) == 1.0
    shapes = []

    def seen(x: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape[-2:]))
        return heavy(x)

    rainy = veiled()[0]
    both = FlipAverage(seen, 0.95)
    with torch.inference_mode():
        out = derain_rgb(both, rainy)
    assert shapes == [(160, 240), both.mirror_size(160, 240)] == [(160, 240), (152, 228)]
    by_mirror = derain_rgb(FlipAverage(heavy), rainy)
    assert np.abs(out.astype(int) - by_mirror).mean() > 0.1


def test_the_smaller_mirror_runs_in_the_frames_precision():
    """bf16 frames (``--precision bf16`` on a CPU) resize too, and come back in bf16."""
    x = torch.linspace(0, 1, 64).expand(1, 3, 40, 64).to(torch.bfloat16)  # smooth: resizes back
    out = FlipAverage(lambda t: t * 0.5, 0.95)(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.allclose(out.float(), x.float() * 0.5, atol=0.1)


def test_a_check_judges_each_model_on_its_own_run_and_adds_one_mirror_run(shared):
    """The choice is the bare models' (the threshold's), and only the chosen model's mirror
    image runs."""
    calls: list[str] = []

    def counted(name: str):
        model = load_model(name)

        def forward(x: torch.Tensor) -> torch.Tensor:
            calls.append(name)
            return model(x)

        return FlipAverage(forward, mirror_scale(model))

    router = Router(counted(LIGHT_MODEL), counted(HEAVY_MODEL))
    rainy = veiled()[0]
    with torch.inference_mode():
        out = derain_rgb(router, rainy)
    assert calls == [LIGHT_MODEL, HEAVY_MODEL, HEAVY_MODEL] and router.heavy_chosen
    assert np.array_equal(out, derain_rgb(evaluation_forward(HEAVY_MODEL, flip=True), rainy))


def test_the_command_line_averages_with_the_mirror_image(tmp_path, shared):
    """``--flip-average`` (on for files by default) through the whole command (OpenVINO, auto,
    here the light model, whose mirror keeps the size): a picture and its mirror come out as
    mirrors of each other, which the model alone does not do."""
    src = tmp_path / "pictures"
    src.mkdir()
    picture = light()
    for name, image in (("1.png", picture), ("2.png", picture[:, ::-1])):
        cv2.imwrite(str(src / name), np.ascontiguousarray(image[..., ::-1]))
    written = {}
    for mode in ("default", "off"):
        out = tmp_path / mode
        flags = ["--flip-average", mode] if mode != "default" else []
        cmd = [sys.executable, "-m", "streamderain", src, out, "-q", *flags]
        result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        written[mode] = [cv2.imread(str(out / name)) for name in ("1.png", "2.png")]
    first, second = written["default"]
    assert np.array_equal(first, second[:, ::-1])
    first, second = written["off"]
    assert not np.array_equal(first, second[:, ::-1])


def test_flip_average_auto_is_on_for_files_and_off_for_live_sources(shared):
    from streamderain.options import ModelOptions
    from streamderain.runner import ModelRunner

    frame = torch.from_numpy(veiled()[0][None])
    out = {}
    for mode in ("auto", "on", "off"):
        runner = ModelRunner(ModelOptions(flip_average=mode, device="cpu", backend="torch"))
        for live in (False, True):
            runner.prepare(*frame.shape[1:3], live=live)
            out[mode, live] = runner.infer(frame)
    assert torch.equal(out["auto", False], out["on", False])
    assert torch.equal(out["auto", True], out["off", True])
    assert torch.equal(out["on", True], out["on", False])
    assert not torch.equal(out["on", False], out["off", False])


def test_the_threshold_is_where_the_heavy_model_gains_most():
    # (gap, heavy model's lead in dB) per picture: it loses below a gap of 5, wins above 9
    rows = [(0.5, -1.0), (2.0, -0.5), (5.0, -2.0), (9.0, 1.5), (12.0, 3.0), (20.0, -0.5)]
    assert best_thresholds(rows) == (5.0, 9.0, 4.0 / 6)
    assert best_thresholds([(1.0, -1.0)]) == (1.0, float("inf"), 0.0)
    assert best_thresholds([(1.0, 2.0)]) == (float("-inf"), 1.0, 2.0)


def test_no_derained_pixel_is_brighter_than_the_rainy_one(shared):
    """Rain only adds light: the product takes the network's output down to the input where it
    brightens, which the bare network does on this picture, and that brings it nearer the clean."""
    from streamderain import Derainer

    rainy = light()
    clean = cv2.resize(read_rgb(list_images(DATA / "clean" / "images" / "kodak24")[20]), SIZE)
    x = torch.from_numpy(rainy).permute(2, 0, 1)[None].float() / 255
    lite = load_model(LIGHT_MODEL)
    with torch.inference_mode():
        bare = lite(x).clamp(0, 1)[0].permute(1, 2, 0).mul(255).round().byte().numpy()
    brightened = bare > rainy
    assert brightened.sum() > 100
    for image in (Derainer(model=LIGHT_MODEL, precision="fp32")(rainy), derain_rgb(lite, rainy)):
        assert (image <= rainy).all()
        # elsewhere the network's own output, to its rounding: OpenVINO (the Derainer's) sums in
        # another order than PyTorch, and on an AVX2 CPU one value of 106,620 came out 1 level off
        kept = image[~brightened].astype(int) - bare[~brightened]
        assert np.abs(kept).max() <= 1 and np.count_nonzero(kept) <= kept.size // 10_000
        error = lambda a: np.abs(a[brightened].astype(int) - clean[brightened]).mean()  # noqa: E731
        assert error(image) < error(bare)


def test_a_derainer_reset_for_a_new_stream_chooses_its_model_anew(shared):
    """One Derainer reused for a second stream ran a veiled stream on the light stream's model
    (``auto`` keeps its choice for 50 to 100 frames of a stream); ``reset`` starts over."""
    from streamderain.api import Derainer

    rainy = veiled()[0]
    fresh = Derainer(model="auto", device="cpu", backend="torch")(rainy)
    reused = Derainer(model="auto", device="cpu", backend="torch")
    reused(light())
    assert np.abs(reused(rainy).astype(int) - fresh).mean() > 5, "the light stream's model"
    reused.reset()
    assert np.array_equal(reused(rainy), fresh)
