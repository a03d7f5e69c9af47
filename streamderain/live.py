"""What live sources need: which sources are live, connecting with backoff, their clock, and
URLs safe to print."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
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
#: FFmpeg's flag (AVFMT_NOTIMESTAMPS) on a demuxer whose stream holds no times: it makes them up
#: at a nominal rate (MJPEG over HTTP at 25 frames/s, whatever the camera sends)
NO_TIMESTAMPS = 0x80
#: seconds an HLS read may wait beyond the read timeout: the reader waits at the live edge for
#: the next whole segment (2 to 10 s), and a playlist of 6 s segments was taken for a lost stream
HLS_WAIT = 10.0
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
    may itself hold ``@`` or ``:``). One that holds ``/``, ``?`` or ``#`` ends the authority
    early for a URL parser (and FFmpeg), so there the last ``@`` of the whole URL ends it: a
    path with an ``@`` is masked too far rather than a password shown."""
    parts = urlsplit(url)
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        if ":" not in userinfo:
            return url
        user = userinfo.split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    scheme, sep, rest = url.partition("://")
    userinfo, at, after = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{after}"


def check_escaped(url: str) -> None:
    """A user name or password holding ``#`` ends the address there for FFmpeg ("Port missing
    in uri"), so that no try could connect: refused at once, with the way to write it."""
    _, sep, rest = url.partition("://")
    if sep and "#" in rest.rpartition("@")[0]:
        raise InputError(f"{mask_url(url)}: write the '#' of its user name or password as %23")


def is_hls(source: str) -> bool:
    """Whether ``source`` names an HLS playlist (``.m3u8``), which comes a segment at a time."""
    return "://" in source and urlsplit(source).path.lower().endswith(".m3u8")


def source_times(container: av.container.InputContainer) -> bool:
    """Whether a live source's frame times are its own: a 10 frames/s MJPEG camera over HTTP,
    timed at FFmpeg's made-up 25, was recorded 2.5 times too fast and ``--duration 6`` took 15 s.
    Frames of a source without times are placed as they arrive."""
    return not container.format.flags & NO_TIMESTAMPS


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
        # (source seconds, run seconds, number) of the latest pictures, beside which other
        # streams are placed; pictures are numbered in the order they come
        self._recent: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=256)
        self._count = 0

    def new_session(self) -> None:
        """A reconnect: the source's clock starts again from anything."""
        self._anchor = None
        self._recent.clear()

    @property
    def pictures(self) -> int:
        """How many timed pictures have come: the number of the latest."""
        return self._count

    def beside(self, source_time: float, after: int = 0) -> float | None:
        """The run time of another stream's ``source_time`` (the sound's), beside the latest
        picture numbered above ``after`` whose source time is within ``CLOCK_JUMP_BACK`` of it,
        as that picture was placed. None where there is none yet (the picture of that moment,
        decoded a few frames late, has not come)."""
        for source, run, number in reversed(self._recent):
            if number <= after:
                break
            if abs(source_time - source) <= CLOCK_JUMP_BACK:
                return run + source_time - source
        return None

    def latest(self, source_time: float) -> float | None:
        """``source_time`` beside the latest picture, whatever its time (None before this
        connection's first): for sound whose picture never came."""
        if not self._recent:
            return None
        source, run, _ = self._recent[-1]
        return run + source_time - source

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
        if source_time is not None:
            self._count += 1
            self._recent.append((source_time, seconds, self._count))
        return seconds


class StopSignal:
    """A reader's stop: set by the reader itself (:meth:`set`, on a failure anywhere in its
    run) or by the caller's event, which it only watches: a run that fails must not stop the
    caller's next run with the same event."""

    def __init__(self, theirs: threading.Event | None = None) -> None:
        self._own, self._theirs = threading.Event(), theirs

    def set(self) -> None:
        self._own.set()

    def is_set(self) -> bool:
        return self._own.is_set() or (self._theirs is not None and self._theirs.is_set())

    def wait(self, timeout: float) -> bool:
        """Whether it was set within ``timeout`` seconds (told within 50 ms of the caller's)."""
        end = time.monotonic() + timeout
        while not self.is_set() and (left := end - time.monotonic()) > 0:
            self._own.wait(min(left, 0.05) if self._theirs is not None else left)
        return self.is_set()


def _answered(connect: Callable[[], T], stop: StopSignal) -> T | None:
    """``connect()`` in a thread of its own: its result, or its error raised here; None if
    ``stop`` is set first. FFmpeg, waiting for a source to answer, takes no signal, and Python
    runs signal handlers only between calls: in the caller's thread a Ctrl-C waited out the try
    (up to 10 s). A try given up on closes what it opens, if it ever does."""
    lock, box = threading.Lock(), {}

    def run() -> None:
        try:
            result = connect()
        except BaseException as exc:  # raised again in the caller's thread
            result = exc
        with lock:
            if "given up" in box and not isinstance(result, BaseException):
                result.close()
            box["result"] = result

    thread = threading.Thread(target=run, name="connect", daemon=True)
    thread.start()
    while thread.is_alive() and not stop.is_set():
        thread.join(0.05)
    with lock:
        if "result" not in box:
            box["given up"] = True
            return None
    if isinstance(result := box["result"], BaseException):
        raise result
    return result


class Outage:
    """One spell without a live source's picture: one deadline (``--reconnect-timeout``, 0 for
    none) and one backoff (0.5 s doubling to 5 s) for every try in it, whether the source
    refused to connect or connected and sent nothing."""

    def __init__(
        self,
        name: str,
        reconnect_timeout: float,
        stop: StopSignal,
        *,
        after_picture: bool = False,
    ) -> None:
        self.name, self.reconnect_timeout, self.stop = name, reconnect_timeout, stop
        self.after_picture = after_picture
        self.began = time.monotonic()
        self.deadline = self.began + reconnect_timeout if reconnect_timeout else None
        self.delay, self.failures = 0.5, 0

    def connect(self, connect: Callable[[float | None], T], open_timeout: float) -> T | None:
        """``connect(timeout)`` (which opens the source once or raises CannotOpen), retried
        until it answers; None if ``stop`` is set first.

        No try runs more than a second past the deadline (each gets at least one second to
        connect), so the time in the final message is about the time waited."""
        while True:
            left = None if self.deadline is None else max(self.deadline - time.monotonic(), 1.0)
            timeout = None if left is None else min(left, open_timeout)
            try:
                return _answered(partial(connect, timeout), self.stop)
            except CannotOpen as exc:
                if self._permanent(exc.__cause__):
                    raise
                if not self.retry(f"cannot connect ({exc.why})"):
                    return None

    def _permanent(self, error: BaseException | None) -> bool:
        """What another try cannot mend. "Not found" once the source has given a picture is
        a relay (MediaMTX, go2rtc) whose camera is away: it answers 404 until it is back."""
        if self.after_picture and isinstance(error, av.error.HTTPNotFoundError):
            return False
        return isinstance(error, PERMANENT_ERRORS)

    def retry(self, why: str) -> bool:
        """After a try that gave no picture: fail at the deadline, else wait the backoff.
        False if ``stop`` was set while waiting."""
        if self.stop.is_set():  # during the try, which FFmpeg let run to its end
            return False
        self.failures += 1
        now = time.monotonic()
        waited = now - self.began
        if self.deadline is not None and now >= self.deadline - 0.05:
            what = "source lost; no picture" if self.after_picture else "no picture from it"
            raise InputError(
                f"{self.name}: {what} for {waited:.1f} s "
                f"(--reconnect-timeout {self.reconnect_timeout:g}; last try: {why})"
            ) from None
        # The user hears of it at once (a wrong port, a camera away: the tries were silent until
        # the deadline), and every ~50 s after where there is none (feeds).
        first = self.failures == 1 and not self.after_picture  # a loss mid-run is said apart
        loud = first or (not self.reconnect_timeout and self.failures % 10 == 1)
        log.log(
            logging.WARNING if loud else logging.DEBUG,
            "%s: %s for %.0f s; retrying",
            self.name,
            why,
            waited,
        )
        wait = self.delay if self.deadline is None else min(self.delay, self.deadline - now)
        if self.stop.wait(max(wait, 0.0)):
            return False
        self.delay = min(self.delay * 2, 5.0)
        return True
