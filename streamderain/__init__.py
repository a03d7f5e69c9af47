"""streamderain: remove rain from video files and live feeds with DCSFN."""

from streamderain.api import Derainer, derain_video
from streamderain.errors import InputError, OutputError, StreamDerainError
from streamderain.pipeline import Stats

__all__ = ["Derainer", "InputError", "OutputError", "Stats", "StreamDerainError", "derain_video"]
__version__ = "0.1.0"
