"""The errors streamderain reports to its users: each one is a one-line message."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class StreamDerainError(Exception):
    """Base of every error the command line reports as one line (no traceback)."""


class UsageError(StreamDerainError):
    """An option's value, or a combination of options, that cannot work."""


class InputError(StreamDerainError):
    """The input cannot be opened or read as video."""


class NoVideoStream(InputError):
    """The input opened, but holds no video: retrying a live source cannot mend it."""


class CannotOpen(InputError):
    """The input could not be opened; ``why`` says what happened, for messages that add to it."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"{name}: cannot open as video ({why})")
        self.why = why


class ModelError(StreamDerainError):
    """The model cannot be loaded: a name that is not bundled, a file that is no checkpoint."""


class OutputError(StreamDerainError):
    """The output cannot be created or written."""


def reason(exc: BaseException) -> str:
    """The first line of what a library said went wrong (an OS error's text, if it has one)."""
    text = (getattr(exc, "strerror", None) or str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """A write the output refuses (a full disk, a live receiver gone: a broken pipe), said as
    the output's error, not as Python's."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"cannot write ({exc.strerror or exc})") from None
