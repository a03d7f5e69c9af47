"""What live sources need: which sources are live, connecting with backoff, their clock, and
URLs safe to print."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import av

from streamderain.errors import CannotOpen, InputError

log = logging.getLogger(__name__)
T = TypeVar("T")

# A live source's clock that jumps back further than this, or ahead of the wall clock by more,
# was reset (a looping restreamer, a camera reboot, MPEG-TS timestamps wrapping after 26.5 h):
# frame times then follow the wall clock from there, instead of piling up on one instant.
CLOCK_JUMP_BACK, CLOCK_JUMP_AHEAD = 0.5, 10.0
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "srt", "tcp")
#: web addresses that may name a recording rather than a live stream
RECORDING_SCHEMES = ("http://", "https://")
#: errors that another try cannot mend: fail at once instead of reconnecting
PERMANENT_ERRORS = (
    av.error.HTTPNotFoundError,
    av.error.HTTPUnauthorizedError,
    av.error.HTTPForbiddenError,
    av.error.DecoderNotFoundError,
    av.error.ProtocolNotFoundError,
    PermissionError,
)


def is_live(source: str) -> bool:
    """Network streams and cameras: sources that can drop, stall and come back."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    return scheme in LIVE_SCHEMES or source.startswith("/dev/video")


def mask_url(url: str) -> str:
    """The URL with its password replaced, for logs and messages.

    Everything between the user name and the last ``@`` of the authority is the password (it
    may itself hold ``@`` or ``:``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, host = parts.netloc.rsplit("@", 1)
    if ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class LiveClock:
    """Seconds since a live run's first frame, following the source's own clock where it can.

    Each connection is anchored at its first frame's arrival; when the source's clock jumps, the
    anchor moves to the wall clock, so times only ever grow and never pile up on one instant.
    """

    def __init__(self) -> None:
        self.began: float | None = None  # monotonic time of the first frame
        self._anchor: tuple[float, float] | None = None  # (run seconds, source seconds)
        self._last = 0.0
        self._step = 0.0  # the source's last frame interval, kept across a jump

    def new_session(self) -> None:
        """A reconnect: the source's clock starts again from anything."""
        self._anchor = None

    def seconds(self, source_time: float | None) -> float:
        now = time.monotonic()
        if self.began is None:
            self.began = now
        wall = now - self.began
        seconds = wall  # the arrival time, where the source has none (RTSP's first frame)
        if source_time is not None and self._anchor is not None:
            seconds = self._anchor[0] + source_time - self._anchor[1]
            if not self._last - CLOCK_JUMP_BACK <= seconds <= wall + CLOCK_JUMP_AHEAD:
                self._anchor = None
            elif seconds > self._last:
                self._step = seconds - self._last
        if source_time is not None and self._anchor is None:
            # a source that ran ahead of the wall clock (a burst on connecting) goes on one frame
            # interval after its last frame, not on top of it
            seconds = max(wall, self._last + self._step)
            self._anchor = (seconds, source_time)
        self._last = seconds
        return seconds


def connect_until_deadline(
    connect: Callable[[float | None], T],
    name: str,
    reconnect_timeout: float,
    open_timeout: float,
    stop: threading.Event,
) -> T | None:
    """Connect, retrying with capped backoff until ``reconnect_timeout`` (0: forever); None if
    ``stop`` is set first. ``connect(timeout)`` opens the source once or raises CannotOpen.

    No attempt runs more than a second past the deadline (each gets at least one second to
    connect), so the time in the final message is about the time waited."""
    began = time.monotonic()
    deadline = began + reconnect_timeout if reconnect_timeout else None
    delay, failures = 0.5, 0
    while True:
        left = None if deadline is None else max(deadline - time.monotonic(), 1.0)
        try:
            return connect(None if left is None else min(left, open_timeout))
        except CannotOpen as exc:
            if isinstance(exc.__cause__, PERMANENT_ERRORS):
                raise
            failures += 1
            why = exc.why
            waited = time.monotonic() - began
            if deadline is not None and time.monotonic() >= deadline - 0.05:
                raise InputError(
                    f"{name}: source lost; no connection for {waited:.1f} s "
                    f"(--reconnect-timeout {reconnect_timeout:g}; last try: {why})"
                ) from None
            # Waiting with no end (feeds), the user hears of it at once and every ~50 s;
            # with a deadline, the final error says it all.
            loud = not reconnect_timeout and failures % 10 == 1
            log.log(
                logging.WARNING if loud else logging.DEBUG,
                "%s: cannot connect (%s) for %.0f s; retrying",
                name,
                why,
                waited,
            )
            wait = delay if deadline is None else min(delay, deadline - time.monotonic())
            if stop.wait(max(wait, 0.0)):
                return None
            delay = min(delay * 2, 5.0)
