"""The errors streamderain reports to its users: each one is a one-line message."""

from __future__ import annotations


class StreamDerainError(Exception):
    """Base of every error the command line reports as one line (no traceback)."""


class InputError(StreamDerainError):
    """The input cannot be opened or read as video."""


class OutputError(StreamDerainError):
    """The output cannot be created or written."""


class Interrupted(StreamDerainError):
    """The run was stopped by the user; the partial output was kept."""


def reason(exc: BaseException) -> str:
    """The first line of what a library said went wrong (an OS error's text, if it has one)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
