"""A live source's sound on the picture's clock (``streamderain.sound``), with the clock's wall
time set by the test: where each frame lands when the stream arrives late, early or looped."""

from __future__ import annotations

from fractions import Fraction

import av
import pytest

from streamderain import live
from streamderain.sound import LiveSound

FRAME = 1024 / 48_000  # seconds of one AAC frame


class Packet:
    """Stands for a demuxed packet: what ``LiveSound.hear`` asks of one is its frames."""

    def __init__(self, frame: av.AudioFrame) -> None:
        self.frame = frame

    def decode(self) -> list[av.AudioFrame]:
        return [self.frame]


class Stream:
    """Stands for the source's sound stream, as ``LiveSound.connected`` reads it."""

    class codec_context:
        sample_rate = 48_000

    class layout:
        name = "mono"


def silent_frame(source_time: float) -> av.AudioFrame:
    frame = av.AudioFrame(format="fltp", layout="mono", samples=1024)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate, frame.time_base = 48_000, Fraction(1, 48_000)
    frame.pts = round(source_time * 48_000)
    return frame


def play(monkeypatch, seconds: float, arrives, source_time, sound_behind: float = 0.0):
    """A source of ``seconds``: picture at 25 frames/s, sound in AAC frames; each item reaches
    the reader at wall time ``arrives(position)`` (sound ``sound_behind`` later in the stream)
    with the source time ``source_time(position)``. The sound and clock at the end."""
    now = [100.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    items = [(arrives(i / 25), 0, i / 25) for i in range(round(seconds * 25))]
    items += [
        (arrives(j * FRAME + sound_behind), 1, j * FRAME) for j in range(int(seconds / FRAME))
    ]
    clock, sound = live.LiveClock(), LiveSound("camera")
    sound.connected(Stream)
    most_waiting = 0
    for wall, is_sound, position in sorted(items):
        now[0] = 100.0 + wall
        if is_sound:
            sound.hear(Packet(silent_frame(source_time(position))), clock)
            most_waiting = max(most_waiting, len(sound._waiting))
        else:
            clock.seconds(source_time(position))
    return sound, most_waiting


def held_span(sound: LiveSound) -> tuple[float, float, int]:
    frames = sound.until(float("inf"))
    return float(frames[0].time), float(frames[-1].time) + FRAME, len(frames)


@pytest.mark.parametrize(
    "arrives, behind",
    [
        (lambda s: s, 2.5),  # sound muxed 2.5 s after its picture: all of it was dropped
        (lambda s: s / 15 if s < 15 else s - 14, 0.0),  # 15 s at once, as HLS live starts
    ],
    ids=["sound 2.5 s behind in the stream", "a 15 s burst on connecting"],
)
def test_sound_that_comes_late_or_in_a_burst_is_all_kept(monkeypatch, arrives, behind):
    sound, _ = play(monkeypatch, 20.0, arrives, lambda p: 1.4 + p, sound_behind=behind)
    first, last, frames = held_span(sound)
    assert frames == int(20.0 / FRAME)  # every frame, none left waiting
    assert first == pytest.approx(0.0, abs=0.05) and last == pytest.approx(20.0, abs=0.05)


def test_sound_waiting_for_the_clock_stays_bounded(monkeypatch):
    """A 40 s loop (the clock back each pass) after a 15 s burst: the sound that waits for the
    picture to follow a jump is at most a couple of seconds (it grew without end: 0.7 GB an
    hour of mono)."""
    burst = lambda s: s / 15 if s < 15 else s - 14  # noqa: E731
    sound, most_waiting = play(monkeypatch, 120.0, burst, lambda p: 1.4 + p % 40)
    assert most_waiting * FRAME <= 2.1
    first, last, _ = held_span(sound)
    assert last == pytest.approx(120.0, abs=0.1)
