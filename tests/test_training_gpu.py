"""Training where a GPU is lent for minutes: a set time, batches drawn by worker processes,
the recipe's data packed to travel, and the network on the GPU (that test needs one)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.conftest import DATA
from tests.test_training import TINY, _tiny_train
from training import load_model
from training.batches import PatchSampler
from training.data import find_clean_images, find_pairs, pixel_digest, read_rgb
from training.metrics import psnr
from training.pack import PackTooLarge, pack, recipe_files
from training.recipe import CLEAN_MAX_SIDE, TrainConfig, load_train_config
from training.train import Trainer

HELD_OUT = ("norain-15.png", "norain-16.png")


def _recipe(**kw) -> TrainConfig:
    """The tiny recipe of ``test_training`` with real pairs, rain layers, both validations."""
    return _tiny_train(
        **{
            "steps": 6,
            "batch": 2,
            "real_dirs": ("train-pairs/RainTrainH_min",),
            "layer_dirs": ("train-pairs/jorder-small",),
            "rain_presets": {"real-layers": 0.5, "light": 0.5},
            "clean_dirs": ("clean/images/urban100",),
            "val_dir": "clean/images/kodak24",
            "val_images": 2,
            "heavy_val_dir": "train-pairs/jorder-small",
            "heavy_val_names": HELD_OUT,
            "val_every": 1000,
            **kw,
        }
    )


def test_a_timed_run_stops_on_time_with_the_weights_of_then_scored_and_saved(shared, tmp_path):
    torch.set_num_threads(2)
    trainer = Trainer(TINY, _recipe(steps=100_000), DATA, tmp_path / "run")
    trainer.run(progress=False, minutes=0.05)
    assert 0 < trainer.step < 100_000
    last = json.loads(trainer.log_path.read_text().splitlines()[-1])
    assert last["step"] == trainer.step and "val_heavy_psnr_y" in last
    snapshot = trainer.snapshot_path(trainer.step)
    assert load_model(snapshot).info.metadata["steps"] == trainer.step
    assert torch.load(trainer.checkpoint_path, weights_only=True)["step"] == trainer.step


def test_worker_processes_draw_the_very_batches_of_a_plain_run(shared, tmp_path):
    """Through the command line, in a process of its own with a time limit, so that a hang
    fails (workers that reset OpenCV's thread pool hung once in a longer run, not here)."""
    torch.set_num_threads(1)
    config = tmp_path / "tiny.toml"
    config.write_text(
        "[model]\nchannels = 4\nnum_blocks = 1\nscale_num = 2\nconv_num = 1\n"
        "[train]\nsteps = 6\nbatch = 2\npatch = 32\nlr = 2e-3\nreal_fraction = 0.3\n"
        'real_dirs = ["train-pairs/RainTrainL"]\nclean_dirs = ["clean/images/urban100"]\n'
        'val_dir = ""\n'
    )
    plain = Trainer(*load_train_config(config), DATA, tmp_path / "plain")
    plain.run(progress=False)
    train = [sys.executable, "-m", "training", "train", "--config", str(config), "--out",
             str(tmp_path / "workers"), "--data-root", str(DATA), "--device", "cpu",
             "--workers", "2", "--threads", "1", "--no-progress"]  # fmt: skip
    subprocess.run([*train, "--until", "3"], check=True, timeout=120)
    subprocess.run([*train, "--resume"], check=True, timeout=120)
    theirs = torch.load(tmp_path / "workers" / "last.pt", weights_only=True)["net"]
    for name, value in plain.net.state_dict().items():
        assert torch.equal(value, theirs[name]), name


def test_a_packed_recipe_holds_its_pairs_exactly_and_its_pictures_as_trained_on(shared, tmp_path):
    cfg = _recipe()
    packed = pack(cfg, DATA, tmp_path / "data", max_bytes=40 * 2**20)
    assert packed.size_bytes <= 40 * 2**20
    assert sum(f.stat().st_size for f in (tmp_path / "data").rglob("*") if f.is_file()) == (
        packed.size_bytes
    )
    exact, pictures = recipe_files(cfg, DATA)
    for source in exact:
        assert (tmp_path / "data" / source.relative_to(DATA)).read_bytes() == source.read_bytes()
    for source in pictures:  # urban100's pictures are about 1024 px: stored as trained on
        stored = read_rgb((tmp_path / "data" / source.relative_to(DATA)).with_suffix(".jpg"))
        original = read_rgb(source, CLEAN_MAX_SIDE)
        assert stored.shape == original.shape
        assert psnr(stored, original) > 30.0, source.name
    there, here = PatchSampler(cfg, tmp_path / "data"), PatchSampler(cfg, DATA)
    for kind in ("real_pairs", "layer_pairs"):
        names = [p.rainy.name for p in getattr(there, kind)]
        assert names == [p.rainy.name for p in getattr(here, kind)], kind
    assert len(there.layer_pairs) == 18 - len(HELD_OUT)
    held = {pixel_digest(p.clean) for p in find_pairs(tmp_path / "data" / cfg.heavy_val_dir)
            if p.rainy.name in HELD_OUT}  # fmt: skip
    trained = {pixel_digest(p.clean) for p in [*there.real_pairs, *there.layer_pairs]}
    assert len(held) == len(HELD_OUT) and not held & trained


def test_a_pack_holds_every_held_out_set_even_one_not_trained_on(shared):
    cfg = _recipe(pairs_val_dir="train-pairs/pcnet", pairs_val_names=("3.jpg",))
    assert "train-pairs/pcnet" not in cfg.real_dirs
    exact, _ = recipe_files(cfg, DATA)
    assert {DATA / "train-pairs/pcnet/input/3.jpg", DATA / "train-pairs/pcnet/target/3.jpg"} <= set(
        exact
    )


def test_a_pack_keeps_pictures_that_differ_only_in_their_format(tmp_path):
    import cv2
    import numpy as np

    folder = tmp_path / "root" / "clean" / "x"
    folder.mkdir(parents=True)
    for i, suffix in enumerate((".png", ".jpg")):
        cv2.imwrite(str(folder / f"big{suffix}"), np.full((16, 16, 3), 60 * i, np.uint8))
    pack(TrainConfig(clean_dirs=("clean/x",)), tmp_path / "root", tmp_path / "out")
    stored = find_clean_images(tmp_path / "out" / "clean" / "x")
    assert sorted(int(read_rgb(p).mean()) for p in stored) == [0, 60]


def test_a_pack_that_cannot_fit_is_refused_and_writes_nothing(shared, tmp_path):
    with pytest.raises(PackTooLarge, match="over 1.0 MiB"):
        pack(_recipe(), DATA, tmp_path / "data", max_bytes=2**20)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize(
    "device, message",
    [("tpu", "use auto, cpu, cuda or cuda:N"), ("cuda", "no CUDA GPU is available")],
)
def test_a_device_it_cannot_train_on_is_a_one_line_error(shared, tmp_path, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = tmp_path / "c.toml"
    config.write_text("[model]\nchannels = 4\n[train]\nsteps = 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "training", "train", "--config", str(config), "--out",
         str(tmp_path / "run"), "--device", device],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr


def test_the_training_command_line_does_without_pyav():
    """A GPU machine is lent bare of PyAV: ``python -m training train`` must not need it."""
    code = "import sys, training.__main__; print('av' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_run_trains_on_the_gpu_and_resumes_on_the_cpu(shared, tmp_path):
    cfg = _recipe(steps=4, val_every=2)
    gpu = Trainer(TINY, cfg, DATA, tmp_path / "run", "bf16", "cuda")
    gpu.run(until=2, progress=False, workers=2)
    assert next(gpu.net.parameters()).is_cuda
    cpu = Trainer(TINY, cfg, DATA, tmp_path / "run", device="cpu")
    cpu.resume()
    cpu.run(progress=False)
    scores = [json.loads(line) for line in cpu.log_path.read_text().splitlines()]
    assert [s["step"] for s in scores] == [2, 4] and all(s["precision"] == "bf16" for s in scores)
