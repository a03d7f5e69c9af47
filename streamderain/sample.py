"""A short rainy clip to try the tool on: a shipped clean street clip with rain that falls."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamderain.decoder import Decoder
from streamderain.encoder import Encoder
from streamderain.errors import OutputError
from streamderain.targets import is_picture_target
from training.rain import PRESETS, RainField

CLEAN_CLIP = Path(__file__).with_name("assets") / "clean-street.mp4"


def write_sample(path: str | Path, rain: str = "light", seed: int = 0) -> int:
    """Write the rainy sample clip to ``path``; returns its frame count.

    The clean clip is a DAVIS 2016 sequence (car-roundabout) shipped in the package; the rain
    is drawn by ``training.rain`` and falls coherently from frame to frame.
    """
    if is_picture_target(path):  # its message would name an option sample does not have
        raise OutputError(f"{path}: the sample is a clip; name a video (.mp4) or a folder")
    rng = np.random.default_rng(seed)
    with Decoder(CLEAN_CLIP) as decoder:
        field = RainField(decoder.info.height, decoder.info.width, PRESETS[rain], rng)
        encoder = Encoder(path, decoder.info)
        try:
            for frame in decoder:
                encoder.write(frame.with_image(field.apply(frame.image)))
                field.advance()
        except BaseException:
            encoder.abort()
            raise
        encoder.finish()
        return encoder.frames_written
