"""The temporal stage scored on video with known clean frames, against the per-frame model.

    python -m training.video_eval [--frames 40] [--davis-frames 30] [--json scores.json]

Clips, all under temporally coherent synthetic rain (:func:`training.rain.rain_video`):

- fixed camera: a clean still picture at 640x360 with four textured objects moving across it
  (fast, slow and nearly still ones), under ``jorder-heavy``, ``light`` and ``heavy-streaks``
  rain (the last is heavy rain without JORDER's veil of accumulated rain);
- moving camera: the DAVIS clips of ``clean/video`` at 640x360 (real camera and object motion).

Each rainy frame is derained by the shipped model, then the derained frames go through
:class:`streamderain.temporal.TemporalFilter` as a file would (frames held back) and as a live
source would (past frames only). Per clip and version (rainy input, per-frame model, temporal
for files, temporal live): the mean PSNR-Y per frame; the PSNR-Y over the pixels that move
(where the clean video changes within :data:`MOVING_SPAN` frames: a smeared object or a ghost
left behind shows there); and the flicker, the mean absolute Y difference between consecutive
frames where the clean video does not change.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path

import click
import cv2
import numpy as np
import torch

from training.data import DatasetError, data_root_option, read_rgb
from training.evaluate import derain_rgb
from training.metrics import luma, psnr
from training.rain import PRESETS, rain_video
from training.route import AUTO, VIDEO_CHECK_EVERY, Router, evaluation_forward, model_names
from training.weights import resolve_source

SIZE = (640, 360)
# Fixed-camera scenes: still backgrounds, and the pictures the moving objects are cut from.
SCENES = {
    "street": "clean/images/urban100/img_003.jpg",
    "barn": "clean/images/sun-hays80/barn_sun_btulbiaoilnxcseh.jpg",
}
OBJECTS = ("clean/images/kodak24", "clean/images/mcmaster18")
# Each object: (width, height), start (x, y) of its top-left corner, pixels per frame (dx, dy).
MOTIONS = (
    ((120, 70), (-120.0, 250.0), (7.0, 0.0)),
    ((56, 110), (560.0, 120.0), (-2.0, 0.0)),
    ((90, 90), (40.0, 20.0), (4.0, 1.5)),
    ((40, 40), (300.0, 180.0), (0.5, -0.5)),
)
FIXED_PRESETS = ("jorder-heavy", "light", "heavy-streaks")
DAVIS_PRESETS = ("jorder-heavy", "light")
# A pixel whose clean Y changes by at least this much between frames is moving.
STILL_Y = 2.0
# Frames either side within which a change of the clean video marks a pixel as moving.
MOVING_SPAN = 6
# The file mode's look ahead and the live mode's (none).
FILE_LOOKAHEAD, LIVE_LOOKAHEAD = 3, 0
VERSIONS = ("rainy", "per-frame", "temporal", "live")


def fit(image: np.ndarray, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Centre crop to the aspect ratio of ``size`` (w, h), then resize to it."""
    h, w = image.shape[:2]
    tw, th = size
    if w * th > h * tw:
        cw = h * tw // th
        image = image[:, (w - cw) // 2 : (w - cw) // 2 + cw]
    else:
        ch = w * th // tw
        image = image[(h - ch) // 2 : (h - ch) // 2 + ch]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def fixed_camera_clip(
    background: np.ndarray,
    objects: list[np.ndarray],
    frames: int,
    motions: tuple = MOTIONS,
) -> list[np.ndarray]:
    """``frames`` clean frames of a still ``background`` with ``objects`` moving across it.

    Each object is a textured patch with soft elliptic edges sliding at a constant, sub-pixel
    speed: ``motions`` gives each one's size, start and pixels per frame.
    """
    h, w = background.shape[:2]
    layers = []
    for patch, ((pw, ph), start, step) in zip(objects, motions):
        alpha = np.zeros((ph, pw), np.float32)
        cv2.ellipse(alpha, (pw // 2, ph // 2), (pw // 2 - 2, ph // 2 - 2), 0, 0, 360, 1.0, -1)
        texture = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA).astype(np.float32)
        layers.append((cv2.GaussianBlur(alpha, (0, 0), 1.0), texture, start, step))
    out = []
    for t in range(frames):
        frame = background.astype(np.float32)
        for alpha, texture, (x0, y0), (dx, dy) in layers:
            shift = np.float32([[1, 0, x0 + dx * t], [0, 1, y0 + dy * t]])
            a = cv2.warpAffine(alpha, shift, (w, h))[..., None]
            frame = frame * (1 - a) + cv2.warpAffine(texture, shift, (w, h)) * a
        out.append(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
    return out


def davis_clip(folder: Path, frames: int) -> list[np.ndarray]:
    """The first ``frames`` frames of a DAVIS clip, at :data:`SIZE`."""
    files = sorted(folder.glob("*.jpg"))[:frames]
    if not files:
        raise click.ClickException(f"no frames in {folder}")
    return [fit(read_rgb(f)) for f in files]


def temporal(
    images: list[np.ndarray], originals: list[np.ndarray | None], lookahead: int
) -> list[np.ndarray]:
    """Derained ``images`` (of the rainy ``originals``, or None for frames without them) as
    the frames of one stream through a :class:`~streamderain.temporal.TemporalFilter`, in order.

    Imported here: the runtime pulls in PyAV, which the rest of ``python -m training`` (its
    ``train`` above all, on a GPU machine that lacks it) does without."""
    from streamderain.frames import Frame
    from streamderain.temporal import TemporalFilter

    f = TemporalFilter(lookahead)
    frames = [
        Frame(i, i, Fraction(1, 25), image, original=original)
        for i, (image, original) in enumerate(zip(images, originals))
    ]
    out = [o for frame in frames for o in f.push(frame)] + f.flush()
    if [o.index for o in out] != [frame.index for frame in frames]:
        raise RuntimeError("the temporal filter lost or reordered frames")
    return [o.image for o in out]


def psnr_of(squared_error: float, count: int) -> float:
    """PSNR in dB of a summed squared error over ``count`` values (NaN when there are none)."""
    if count == 0:
        return float("nan")
    if squared_error == 0:
        return float("inf")
    return float(10 * np.log10(255.0**2 * count / squared_error))


@dataclass(frozen=True)
class Scores:
    """One version of a clip against its clean frames."""

    psnr_y: float
    moving_psnr_y: float
    flicker: float


def score(outputs: list[np.ndarray], clean: list[np.ndarray]) -> Scores:
    """PSNR-Y, PSNR-Y of the moving pixels and flicker of ``outputs`` against ``clean``."""
    ys = [luma(c) for c in clean]
    outs = [np.clip(luma(o), 0, 255) for o in outputs]
    err, count = 0.0, 0
    for t, (o, c) in enumerate(zip(outs, ys)):
        moving = np.zeros(c.shape, bool)
        for other in ys[max(0, t - MOVING_SPAN) : t + MOVING_SPAN + 1]:
            moving |= np.abs(other - c) >= STILL_Y
        err += float(np.sum((o - c)[moving] ** 2))
        count += int(moving.sum())
    flicker, still_count = 0.0, 0
    for t in range(1, len(ys)):
        still = np.abs(ys[t] - ys[t - 1]) < STILL_Y
        flicker += float(np.abs(outs[t] - outs[t - 1])[still].sum())
        still_count += int(still.sum())
    return Scores(
        psnr_y=float(np.mean([psnr(o, c) for o, c in zip(outs, ys)])),
        moving_psnr_y=psnr_of(err, count),
        flicker=flicker / max(still_count, 1),
    )


@dataclass(frozen=True)
class Clip:
    """One clip to score: its name, camera, rain preset and clean frames."""

    name: str
    camera: str
    preset: str
    clean: list[np.ndarray]


def still_scene(root: Path, scene: str, frames: int) -> list[np.ndarray]:
    """``frames`` clean frames of one of :data:`SCENES` seen by a fixed camera, with the
    :data:`OBJECTS` pictures moving across it."""
    objects = [read_rgb(p) for folder in OBJECTS for p in sorted((root / folder).glob("*"))[:2]]
    return fixed_camera_clip(fit(read_rgb(root / SCENES[scene])), objects, frames)


def clips(root: Path, frames: int, davis_frames: int, fixed: tuple, davis: tuple) -> list[Clip]:
    """The fixed-camera clips under each of the ``fixed`` presets, then DAVIS under ``davis``."""
    out = []
    for scene in SCENES if fixed else []:
        clean = still_scene(root, scene, frames)
        out += [Clip(f"{scene}-{preset}", "fixed", preset, clean) for preset in fixed]
    for folder in sorted((root / "clean" / "video").glob("davis-*")) if davis else []:
        clean = davis_clip(folder, davis_frames)
        out += [Clip(f"{folder.name}-{p}", "moving", p, clean) for p in davis]
    return out


def evaluate_clip(
    clip: Clip, derain: Callable[[np.ndarray], np.ndarray], seed: int, cache: Path | None
) -> dict[str, list[np.ndarray]]:
    """Every version of ``clip``: rainy, per-frame, temporal (file) and live.

    The rain is seeded by ``seed`` and the clip's name, so a clip gets the same rain whichever
    other clips are scored beside it."""
    rng = np.random.default_rng([seed, zlib.crc32(clip.name.encode())])
    rainy = rain_video(clip.clean, clip.preset, rng)
    path = cache / f"{clip.name}-{len(rainy)}-{seed}.npy" if cache else None
    if path is not None and path.exists():
        derained = list(np.load(path))
    else:
        derained = [derain(r) for r in rainy]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, np.stack(derained))
    return {
        "rainy": rainy,
        "per-frame": derained,
        "temporal": temporal(derained, rainy, FILE_LOOKAHEAD),
        "live": temporal(derained, rainy, LIVE_LOOKAHEAD),
    }


def table(rows: list[dict]) -> str:
    """The scores as a text table: PSNR-Y, PSNR-Y of the moving pixels, flicker."""
    cols = ("rainy", "model", "temporal", "live")
    head = (
        f"{'clip':37s} {'camera':6s} | PSNR-Y "
        + " ".join(f"{c:>8s}" for c in cols)
        + " | moving PSNR-Y "
        + " ".join(f"{c:>8s}" for c in cols[1:])
        + " | flicker "
        + " ".join(f"{c:>8s}" for c in cols)
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        base = r["per-frame"]["psnr_y"]
        psnrs = [f"{r[v]['psnr_y']:8.2f}" for v in VERSIONS[:2]]
        psnrs += [f"{r[v]['psnr_y'] - base:+8.2f}" for v in VERSIONS[2:]]
        moving = [f"{r[v]['moving_psnr_y']:8.2f}" for v in VERSIONS[1:]]
        flicker = [f"{r[v]['flicker']:8.2f}" for v in VERSIONS]
        lines.append(
            f"{r['clip']:37s} {r['camera']:6s} |        "
            + " ".join(psnrs)
            + " |               "
            + " ".join(moving)
            + " |         "
            + " ".join(flicker)
        )
    lines.append("(temporal, live: PSNR-Y gain over the model in dB; flicker: grey levels)")
    return "\n".join(lines)


def before_after(versions: dict[str, list[np.ndarray]], clip: Clip, path: Path) -> None:
    """A crop around the fastest object: rainy | per-frame | temporal | clean, as a JPEG."""
    (pw, ph), (x0, y0), (dx, dy) = MOTIONS[0]
    t = len(clip.clean) * 2 // 3
    cx, cy = int(x0 + dx * t + pw / 2), int(y0 + dy * t + ph / 2)
    h, w = clip.clean[0].shape[:2]
    x, y = min(max(cx - 120, 0), w - 240), min(max(cy - 80, 0), h - 160)
    panels = []
    for name, images in (
        ("rainy", versions["rainy"]),
        ("per-frame model", versions["per-frame"]),
        ("temporal stage", versions["temporal"]),
        ("clean", clip.clean),
    ):
        crop = images[t][y : y + 160, x : x + 240]
        crop = cv2.resize(crop, (360, 240), interpolation=cv2.INTER_CUBIC)
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)
        cv2.putText(crop, name, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3)
        cv2.putText(crop, name, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
        panels.append(crop)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(panels, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 88])


def cache_folder(cache: Path, model_name: str, flip: bool, int8: bool) -> Path:
    """Where a model's frames are cached: one model's never stand for another's, whatever its
    file is called (two runs' ``step-002000.pt``, a bundled model replaced)."""
    files = b"".join(resolve_source(n).read_bytes() for n in model_names(model_name))
    weights = hashlib.sha256(files).hexdigest()[:16]
    return cache / f"{Path(model_name).stem}-{weights}{'-flip' * flip}{'-int8' * int8}"


@click.command()
@data_root_option
@click.option(
    "--frames",
    type=click.IntRange(min=2),
    default=40,
    show_default=True,
    help="Frames per fixed-camera clip.",
)
@click.option(
    "--davis-frames",
    type=click.IntRange(min=2),
    default=30,
    show_default=True,
    help="Frames per DAVIS clip.",
)
@click.option(
    "--fixed-presets", default=",".join(FIXED_PRESETS), show_default=True, help="Rain presets."
)
@click.option(
    "--davis-presets", default=",".join(DAVIS_PRESETS), show_default=True, help="'' for none."
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="CPU threads for the model.",
)
@click.option(
    "--model",
    "model_name",
    default=AUTO,
    show_default=True,
    help="A bundled model's name, auto (the default of streamderain) or a model file.",
)
@click.option(
    "--flip-average",
    "flip_mode",
    type=click.Choice(("on", "off")),
    default="on",
    show_default=True,
    help="Average the model with its run on the mirror image (streamderain's default on files).",
)
@click.option("--int8", is_flag=True, help="Run the bundled models' 8-bit networks.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--picture",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a before/after crop of a moving object (the first fixed-camera clip) here.",
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the model's outputs here and reuse them on the next run.",
)
def main(
    data_root: Path,
    frames: int,
    davis_frames: int,
    fixed_presets: str,
    davis_presets: str,
    threads: int,
    model_name: str,
    flip_mode: str,
    int8: bool,
    seed: int,
    json_path: Path | None,
    picture: Path | None,
    cache: Path | None,
) -> None:
    """Score the temporal stage against the per-frame model on video with clean frames."""
    fixed = tuple(p for p in fixed_presets.split(",") if p)
    davis = tuple(p for p in davis_presets.split(",") if p)
    unknown = sorted(set(fixed + davis) - set(PRESETS))
    if unknown:
        raise click.ClickException(
            f"--fixed-presets/--davis-presets: unknown rain preset(s) {', '.join(unknown)}; "
            f"known: {', '.join(PRESETS)}"
        )
    if json_path is not None and not json_path.absolute().parent.is_dir():  # found after the work
        raise click.ClickException(f"--json: {json_path.parent} is no folder")
    try:
        todo = clips(data_root, frames, davis_frames, fixed, davis)
    except DatasetError as e:
        raise click.ClickException(str(e)) from None
    from streamderain.backends import openvino_available

    torch.set_num_threads(threads)
    openvino = openvino_available()
    net = evaluation_forward(model_name, flip_mode == "on", int8, openvino, VIDEO_CHECK_EVERY)
    if cache is not None:
        cache = cache_folder(cache, model_name, flip_mode == "on", int8)
    rows = []
    for i, clip in enumerate(todo):
        t0 = time.perf_counter()
        if isinstance(net, Router):
            net.reset()  # each clip is a stream of its own
        versions = evaluate_clip(clip, partial(derain_rgb, net), seed, cache)
        row = {"clip": clip.name, "camera": clip.camera, "preset": clip.preset}
        row.update({v: asdict(score(versions[v], clip.clean)) for v in VERSIONS})
        rows.append(row)
        click.echo(f"{clip.name}: {len(clip.clean)} frames, {time.perf_counter() - t0:.0f} s")
        if picture is not None and i == 0:
            before_after(versions, clip, picture)
    click.echo(table(rows))
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
