"""What live sources need: which sources are live, their clock, and URLs safe to print."""

from __future__ import annotations

import time
from urllib.parse import urlsplit, urlunsplit

# A live source's clock that jumps back further than this, or ahead of the wall clock by more,
# was reset (a looping restreamer, a camera reboot, MPEG-TS timestamps wrapping after 26.5 h):
# frame times then follow the wall clock from there, instead of piling up on one instant.
CLOCK_JUMP_BACK, CLOCK_JUMP_AHEAD = 0.5, 10.0
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "srt", "tcp")


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
