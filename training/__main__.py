"""``python -m training train|eval|rain-samples``: the training package's command line."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import torch

DEFAULT_DATA_ROOT = Path("../shared/data")


@click.group()
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
@click.option(
    "--data-root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=DEFAULT_DATA_ROOT,
    show_default=True,
)
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@click.option(
    "--until", type=click.IntRange(min=1), help="Stop at this step (default: the plan's end)."
)
@click.option("--steps", type=click.IntRange(min=1), help="Override the planned total of steps.")
@click.option("--threads", type=click.IntRange(min=1), help="Torch CPU threads.")
@click.option("--no-progress", is_flag=True, help="No progress bar (for logs).")
def train(
    config_path: str,
    out_dir: Path,
    data_root: Path,
    resume: bool,
    until: int | None,
    steps: int | None,
    threads: int | None,
    no_progress: bool,
) -> None:
    """Train a model from a config file (see configs/)."""
    from dataclasses import replace

    from training.train import Trainer, load_train_config

    if threads:
        torch.set_num_threads(threads)
    model_cfg, train_cfg = load_train_config(config_path)
    if steps:
        train_cfg = replace(train_cfg, steps=steps)
    trainer = Trainer(model_cfg, train_cfg, data_root, out_dir)
    if resume:
        if not trainer.checkpoint_path.exists():
            raise click.ClickException(f"{trainer.checkpoint_path}: nothing to resume")
        trainer.resume()
        click.echo(f"resumed at step {trainer.step}", err=True)
    elif trainer.checkpoint_path.exists():
        raise click.ClickException(f"{out_dir} holds a run already: pass --resume or another --out")
    trainer.run(until=until, progress=not no_progress)


if __name__ == "__main__":
    main()
