"""The training package's command line: ``python -m training
train|pack-data|eval|validate|gaps|real-rain|export|average|quantize|rain-samples|rain-stats|
eval-video``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from training import video_eval
from training.config import DCSFNConfig
from training.data import DEFAULT_DATA_ROOT, data_root_option
from training.recipe import PRECISIONS
from training.route import evaluation_forward


class OneLineErrors(click.Group):
    """Bad input (a model that does not load, a folder without pairs, a bad config, a file that
    cannot be read or written) is one line and exit status 1, as with ``streamderain``; ``-v``
    shows the traceback. Any other exception is a bug, and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from training.config import ConfigError
        from training.data import DatasetError
        from training.weights import ModelLoadError

        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # its reader has gone (``... | head``): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except (ModelLoadError, DatasetError, ConfigError, OSError) as exc:
            if ctx.params.get("verbose"):
                raise
            where = " (-v: where)" if isinstance(exc, OSError) else ""
            raise click.ClickException(f"{exc}{where}") from None


@click.group(cls=OneLineErrors)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """Train and evaluate DCSFN deraining models."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s"
    )


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False)
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@data_root_option
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option(
    "--until", type=click.IntRange(min=1), help="Stop at this step (default: the plan's end)."
)
@click.option("--steps", type=click.IntRange(min=1), help="Override the planned total of steps.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="bf16 autocast: about 1.5x faster on CPUs with AVX512-BF16 or AMX, and on GPUs; "
    "emulated on other CPUs, about 9x slower "
    "(default: a resumed run's own, else fp32).",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop after this long, the weights of then validated and snapshotted.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda or cuda:N; auto: a CUDA GPU where there is one.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Processes drawing the batches (default: none on a CPU; on a GPU all cores but two, "
    "at most 12).",
)
@click.option(
    "--no-eval",
    is_flag=True,
    help="Leave the evaluation-only set out of the snapshots' scores (data packed without it).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def train(
    config_path: str,
    out_dir: Path,
    data_root: Path,
    resume: bool,
    until: int | None,
    steps: int | None,
    threads: int | None,
    precision: str | None,
    minutes: float | None,
    device: str,
    workers: int | None,
    no_eval: bool,
    no_progress: bool,
) -> None:
    """Train a model from a config file (see configs/)."""
    import os
    from dataclasses import replace

    from training.recipe import load_train_config
    from training.train import Trainer
    from training.weights import pick_device

    try:
        device = str(pick_device(device))
    except ValueError as exc:
        raise click.ClickException(f"--device: {exc}") from None
    on_gpu = device != "cpu"
    if workers is None:
        workers = min(12, max(1, (os.cpu_count() or 1) - 2)) if on_gpu else 0
    if threads:
        torch.set_num_threads(threads)
    model_cfg, train_cfg = load_train_config(config_path)
    if steps:
        train_cfg = replace(train_cfg, steps=steps)
    if no_eval:
        train_cfg = replace(train_cfg, eval_dir="")
    checkpoint = out_dir / "last.pt"
    if resume and not checkpoint.exists():
        raise click.ClickException(f"{checkpoint}: nothing to resume")
    if not resume and checkpoint.exists():
        raise click.ClickException(f"{out_dir} holds a run already: pass --resume or another --out")
    trainer = Trainer(model_cfg, train_cfg, data_root, out_dir, precision, device, resume)
    asked = f"--steps {steps}" if steps else f"steps = {train_cfg.steps} ({config_path})"
    if trainer.step > trainer.cfg.steps:  # a checkpoint from before runs kept their plan
        raise click.ClickException(f"{asked}: this run is at step {trainer.step} already")
    if train_cfg.steps != trainer.cfg.steps:  # a run's plan, kept in it, was changed since
        raise click.ClickException(
            f"{asked}: this run is planned for {trainer.cfg.steps} steps (its learning "
            "rate falls on that plan); stop earlier with --until, or go on in a new stage"
        )
    if until is not None and until <= trainer.step:
        raise click.ClickException(f"--until {until}: this run is at step {trainer.step} already")
    if resume:
        click.echo(f"resumed at step {trainer.step} of {trainer.cfg.steps}", err=True)
    trainer.run(until=until, progress=not no_progress, minutes=minutes, workers=workers)
    if trainer.stopped:
        click.echo(f"stopped at step {trainer.step}; --resume goes on from there", err=True)
        sys.exit(130)


@main.command("pack-data")
@click.option(
    "--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False)
)
@click.option("--out", required=True, type=click.Path(exists=False, path_type=Path))
@data_root_option
@click.option("--with-eval", is_flag=True, help="Take the evaluation-only set along too.")
@click.option(
    "--max-mib",
    type=click.FloatRange(min=0, min_open=True),
    help="Size to keep within: the clean pictures' JPEG quality is lowered (95 down to 70) "
    "until the folder fits.",
)
def pack_data(
    config_path: str, out: Path, data_root: Path, with_eval: bool, max_mib: float | None
) -> None:
    """Copy the data a config trains on into OUT, to train elsewhere with --data-root OUT."""
    from training.pack import PackTooLarge, pack
    from training.recipe import load_train_config

    if out.exists():
        raise click.ClickException(f"{out} exists: give a new folder")
    max_bytes = int(max_mib * 2**20) if max_mib else None
    try:
        packed = pack(load_train_config(config_path)[1], data_root, out, with_eval, max_bytes)
    except PackTooLarge as e:
        raise click.ClickException(f"{out}: not written: {e}") from None
    click.echo(
        f"{out}: {packed.copied} files copied, {packed.encoded} clean pictures as JPEG at "
        f"quality {packed.quality}, {packed.size_bytes / 2**20:.1f} MiB"
    )


FLIP_OPTION = click.option(
    "--flip-average", is_flag=True, help="Average each model with its run on the mirror image."
)


INT8_OPTION = click.option(
    "--int8", is_flag=True, help="Run the bundled models' 8-bit networks (--precision int8)."
)


@main.command("eval")
@click.option("--model", "model_source", required=True, help="Bundled model name or checkpoint.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write scores.csv and sheet.png here.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N pairs.")
@click.option(
    "--sheet",
    "sheet_images",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Pairs shown in sheet.png (0: none).",
)
@click.option(
    "--rain-scale",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="Scale each aligned pair's rain (rainy - clean) by this first.",
)
@FLIP_OPTION
@INT8_OPTION
def evaluate_cmd(
    model_source: str,
    data_dir: str,
    out_dir: Path | None,
    limit: int | None,
    sheet_images: int,
    rain_scale: float,
    flip_average: bool,
    int8: bool,
) -> None:
    """PSNR/SSIM (RGB and Y) of a model on a folder of pairs, beside the rainy input's."""
    from training.data import find_pairs
    from training.evaluate import evaluate

    model = evaluation_forward(model_source, flip_average, int8)
    pairs = find_pairs(data_dir)[:limit]
    try:
        result = evaluate(model, pairs, out_dir, sheet_images, rain_scale)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{model_source} on {data_dir} ({len(pairs)} pairs):")
    click.echo(result.table())


@main.command()
@click.argument("models", nargs=-1, required=True)
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The run whose validation sets to score on.",
)
@FLIP_OPTION
@INT8_OPTION
@data_root_option
def validate(
    models: tuple[str, ...], config_path: str, flip_average: bool, int8: bool, data_root: Path
) -> None:
    """Score models (names, files or auto) on a run's validation sets, as its snapshots are
    scored: PSNR-Y and the mean output - clean per RGB channel."""
    from training.recipe import load_train_config
    from training.validation import validate, validation_sets

    sets = validation_sets(load_train_config(config_path)[1], data_root)
    if not sets:
        raise click.ClickException(f"{config_path} names no validation set ([train] val_dir, ...)")
    nets = {name: evaluation_forward(name, flip_average, int8) for name in models}  # all found
    for name, net in nets.items():
        scores = []
        for set_name, pairs in sets.items():
            r = validate(net, pairs)
            bias = " ".join(f"{b:+.2f}" for b in r["bias_rgb"])
            scores.append(f"{set_name} {r['psnr_y']:.2f} (bias {bias})")
        click.echo(f"{name}: " + "; ".join(scores))


@main.command()
@click.option("--light", "light_name", default="dcsfn-lite", show_default=True)
@click.option("--heavy", "heavy_name", default="dcsfn-lite-heavy", show_default=True)
@data_root_option
def gaps(light_name: str, heavy_name: str, data_root: Path) -> None:
    """What auto's threshold is set on: the veil gap between two models, and the heavy one's
    lead in dB, on synthetic rain over training-side pictures."""
    from training.route import VEIL_GAP, best_thresholds, calibration_gaps
    from training.weights import load_model

    found = calibration_gaps(load_model(light_name), load_model(heavy_name), data_root)
    for rain, rows in found.items():
        g = [gap for gap, _ in rows]
        ahead = sum(a > 0 for _, a in rows)
        click.echo(
            f"{rain}: gaps {min(g):.1f} to {max(g):.1f} grey levels; heavy ahead on {ahead} of "
            f"{len(rows)} pictures (mean {sum(a for _, a in rows) / len(rows):+.2f} dB); "
            f"over {VEIL_GAP}: {sum(x > VEIL_GAP for x in g)}"
        )
    rows = [row for found_rows in found.values() for row in found_rows]
    low, high, gain = best_thresholds(rows)
    at = sum(lead for gap, lead in rows if gap > VEIL_GAP) / len(rows)
    click.echo(
        f"best thresholds on these {len(rows)} pictures: {low:.1f} to {high:.1f} grey levels "
        f"({gain:+.2f} dB a picture over the light model alone); at {VEIL_GAP}: {at:+.2f} dB"
    )


@main.command("real-rain")
@click.argument("models", nargs=-1, required=True)
@FLIP_OPTION
@INT8_OPTION
@data_root_option
def real_rain(models: tuple[str, ...], flip_average: bool, int8: bool, data_root: Path) -> None:
    """Real rain has no clean picture: how much of the fence bars behind the plants each model
    keeps, and how much of the streaks over the dark planters it leaves (NTURain ra1 frame 30)."""
    from training.data import read_rgb
    from training.evaluate import REAL_RAIN_FRAME, bars_kept, derain_rgb, streaks_left

    rainy = read_rgb(data_root / REAL_RAIN_FRAME)
    for name in models:
        derained = derain_rgb(evaluation_forward(name, flip_average, int8), rainy)
        kept, correlation = bars_kept(derained, rainy)
        click.echo(
            f"{name}: fence bars kept {kept:.2f} (correlation {correlation:.2f}), "
            f"streaks left over the planters {streaks_left(derained, rainy):.2f}"
        )


def _new_out(ctx: click.Context, param: click.Parameter, path: Path) -> Path:
    """Refused before any work: a missing folder, or a file there without ``-y``."""
    if not path.parent.is_dir():
        raise click.ClickException(f"--out {path}: {path.parent}: no such folder")
    if path.exists() and not ctx.meta.get("overwrite"):
        raise click.ClickException(f"--out {path}: exists (pass -y to overwrite)")
    return path


def shipping_options(command: Callable) -> Callable:
    """--out (-y), --eval-data and --purpose: where a command that writes a model puts it, and
    what goes into its metadata."""
    for option in reversed(
        (
            click.option(
                "-y",
                "--overwrite",
                is_flag=True,
                is_eager=True,
                expose_value=False,
                callback=lambda ctx, _, value: ctx.meta.update(overwrite=value),
                help="Replace --out if it exists.",
            ),
            click.option(
                "--out",
                "out_path",
                required=True,
                type=click.Path(dir_okay=False, path_type=Path),
                callback=_new_out,
            ),
            click.option(
                "--eval-data",
                type=click.Path(exists=True, file_okay=False),
                help="Pairs to score the weights on; the scores go into the metadata.",
            ),
            click.option(
                "--purpose",
                help="What the model is for, in a line (`streamderain models` shows it).",
            ),
        )
    ):
        command = option(command)
    return command


def ship(
    out_path: Path,
    net: torch.nn.Module,
    config: DCSFNConfig,
    channel_order: str,
    meta: dict[str, Any],
    eval_data: str | None,
    purpose: str | None,
) -> None:
    """Save ``net`` with ``meta``, scored on ``eval_data`` first when given."""
    from training.data import find_pairs
    from training.evaluate import evaluate
    from training.weights import DerainModel, ModelInfo, save_model

    if eval_data:
        model = DerainModel(net, ModelInfo(config, channel_order, str(out_path))).eval()
        result = evaluate(model, find_pairs(eval_data))
        meta["metrics"] = {
            **meta.get("metrics", {}),
            Path(eval_data).name: {"derained": result.derained, "rainy": result.rainy},
        }
        click.echo(result.table())
    if purpose:
        meta["purpose"] = purpose
    save_model(out_path, net, config, channel_order, meta)


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False)
)
@click.option(
    "--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--step",
    type=click.IntRange(min=1),
    help="Export the snapshot of this step (the best on validation) instead of the latest.",
)
@shipping_options
def export(
    config_path: str,
    run_dir: Path,
    out_path: Path,
    eval_data: str | None,
    step: int | None,
    purpose: str | None,
) -> None:
    """Write a run's weights in the shipping format, with their metadata."""
    from training.recipe import load_train_config
    from training.train import Trainer
    from training.weights import load_model

    model_cfg, train_cfg = load_train_config(config_path)
    resumable = (run_dir / "last.pt").exists()  # else a snapshot alone (a run stopped early)
    if not resumable and not step:
        raise click.ClickException(f"{run_dir}: no last.pt; give the --step of a snapshot")
    trainer = Trainer(model_cfg, train_cfg, DEFAULT_DATA_ROOT, run_dir, resume=resumable)
    meta = trainer.metadata({})
    if not step and trainer.snapshot_path(trainer.step).exists():  # its scores, as validated
        step = trainer.step
    if step:
        snapshot = load_model(trainer.snapshot_path(step))
        trainer.kept.load_state_dict(snapshot.net.state_dict())
        meta.update(
            {k: snapshot.info.metadata[k] for k in ("steps", "train_hours", "metrics", "recipe")}
        )
    ship(out_path, trainer.kept, model_cfg, "RGB", meta, eval_data, purpose)
    click.echo(f"wrote {out_path} (step {meta['steps']})")


@main.command()
@click.argument("base")
@click.argument("other")
@click.option(
    "--share",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="The share of each parameter taken from OTHER.",
)
@shipping_options
def average(
    base: str,
    other: str,
    share: float,
    out_path: Path,
    eval_data: str | None,
    purpose: str | None,
) -> None:
    """Average two models of one config, parameter by parameter (bundled names or files)."""
    from training.weights import average_models, load_model

    first = load_model(base)
    net, meta = average_models(first, load_model(other), share, other)
    meta["metrics"] = {}  # BASE's scores do not describe the average
    ship(out_path, net, first.config, first.channel_order, meta, eval_data, purpose)
    click.echo(f"wrote {out_path}: {1 - share:.0%} {base}, {share:.0%} {other}")


@main.command()
@click.argument("model")
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .int8.xml to write (its .bin beside it) [default: beside the bundled weights].",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(0.0),
    default=0.03,
    show_default=True,
    help="PSNR-Y in dB the 8 bits may cost on light rain; layers over it stay fp32.",
)
@data_root_option
def quantize(model: str, out_path: Path | None, max_drop: float, data_root: Path) -> None:
    """Write the 8-bit OpenVINO network of a model (``--precision int8``); needs nncf."""
    import openvino as ov

    from training.quantize import INT8_SUFFIX, quantize
    from training.weights import WEIGHTS_DIR, bundled_models, load_model

    bundled = model in bundled_models()
    if out_path is None and not bundled:
        raise click.ClickException(f"{model} is not a bundled model: give --out")
    out_path = out_path or WEIGHTS_DIR / f"{model}{INT8_SUFFIX}"
    if not bundled and out_path.resolve().parent == WEIGHTS_DIR.resolve():
        raise click.ClickException(f"{model} is not a bundled model: write it outside the package")
    if not out_path.parent.is_dir():  # refused now, not after half an hour of quantizing
        raise click.ClickException(f"{out_path.parent}: no such folder")
    try:
        import nncf  # noqa: F401
    except ImportError:
        raise click.ClickException("quantizing needs: pip install nncf") from None
    network = quantize(load_model(model), data_root, max_drop)
    ov.save_model(network, out_path, compress_to_fp16=False)
    click.echo(f"wrote {out_path}")


@main.command("rain-samples")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
@data_root_option
@click.option("--rows", default=4, show_default=True, help="Pictures in the grid.")
@click.option("--seed", default=0, show_default=True)
def rain_samples(out_path: Path, data_root: Path, rows: int, seed: int) -> None:
    """A PNG grid to compare synthetic rain with real pairs.

    Each row: a real light rainy picture (RainTrainL), a real heavy one (jorder-small), then
    one clean picture with a real heavy rain layer transplanted and with each preset.
    """
    import cv2
    import numpy as np

    from training.data import find_clean_images, find_pairs, read_layer, read_pair, read_rgb
    from training.evaluate import write_sheet
    from training.rain import PRESETS, RainLayers, add_rain, transplant

    rng = np.random.default_rng(seed)
    light = find_pairs(data_root / "train-pairs" / "RainTrainL")
    heavy = find_pairs(data_root / "train-pairs" / "RainTrainH_min")
    layers = RainLayers([read_layer(p) for p in heavy], strength=(1.0, 1.0))
    clean = find_clean_images(data_root / "clean" / "images" / "urban100")
    size = (320, 240)

    def fit(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    sheet = []
    for i in range(rows):
        picture = fit(read_rgb(clean[i * 7 % len(clean)]))
        real = [fit(read_pair(pairs[i % len(pairs)])[0]) for pairs in (light, heavy)]
        moved = transplant(picture, layers.sample(rng, size[1], size[0]))
        synthetic = [add_rain(picture, p, rng) for p in PRESETS]
        sheet.append(np.concatenate([*real, moved, *synthetic], 1))
    write_sheet(out_path, sheet, width=size[0] * (3 + len(PRESETS)))
    columns = ["real light", "real heavy", "real heavy layer moved", *PRESETS]
    click.echo(f"wrote {out_path}: {' | '.join(columns)}")


@main.command("rain-stats")
@data_root_option
@click.option(
    "--config", "config_path", default="configs/dcsfn-lite-stage4.toml", show_default=True
)
@click.option("--draws", default=24, show_default=True, help="Synthetic layers per preset.")
def rain_stats(data_root: Path, config_path: str, draws: int) -> None:
    """Synthetic rain beside the real heavy layers of the training pairs, in numbers.

    Real: ``rainy - clean`` of the aligned pairs the config trains on (held-out pairs left
    out). Each preset: drawn on clean pictures of the same size, its layer measured the same
    way."""
    import cv2
    import numpy as np

    from training.batches import kept_apart, training_pairs
    from training.data import find_clean_images, read_layer, read_rgb
    from training.rain import PRESETS, add_rain, layer_stats
    from training.recipe import load_train_config

    _, cfg = load_train_config(config_path)
    apart = kept_apart(cfg, data_root)
    real = [read_layer(p) for p in training_pairs(cfg.layer_dirs, data_root, apart)]
    clean = find_clean_images(data_root / "clean" / "images" / "urban100")
    rng = np.random.default_rng(0)
    rows = {"real heavy layers": [layer_stats(layer) for layer in real]}
    for name in PRESETS:
        stats = []
        for i in range(draws):
            picture = cv2.resize(read_rgb(clean[i % len(clean)]), (481, 321))
            rainy = add_rain(picture, name, rng)
            stats.append(layer_stats(np.clip(rainy.astype(int) - picture, 0, 255).astype(np.uint8)))
        rows[name] = stats
    keys = list(rows["real heavy layers"][0])
    click.echo(f"{'':20s}" + "".join(f"{k:>9s}" for k in keys))
    for name, stats in rows.items():
        means = [float(np.mean([s[k] for s in stats])) for k in keys]
        click.echo(f"{name:20s}" + "".join(f"{m:9.1f}" for m in means))


# Video evaluation (per-frame model against the temporal stage): python -m training eval-video
main.add_command(video_eval.main, "eval-video")

if __name__ == "__main__":
    main()
