"""A live source's sound on the picture's clock (``streamderain.sound``), with the clock's wall
time set by the test: each sound frame must land where the picture of its moment landed, however
the stream arrives (late, early, in a burst), whatever the source's clock does (jumps, loops),
and whether the sound is continuous or sent only while there is noise."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
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


def play(
    monkeypatch,
    seconds: float,
    source_time,
    arrives=lambda s: s,
    sound_behind: float = 0.0,
    picture_late: float = 0.0,
    sounding=lambda s: True,
    fps: int = 25,
):
    """A source of ``seconds``: picture at ``fps``, sound in AAC frames (where ``sounding``),
    each reaching the reader at wall time ``arrives(moment)`` (sound ``sound_behind`` later
    in the stream, the picture ``picture_late`` of stream later out of its decoder's threads,
    which give a frame out a few frames on), with the source time
    ``source_time(moment)``. Returns each sound frame's moment and where it landed (None: lost),
    where each picture landed, and the most seconds of sound that waited at once."""
    now = [100.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: now[0])
    items = [(arrives(i / fps + picture_late), 0, i / fps) for i in range(round(seconds * fps))]
    items += [
        (arrives(j * FRAME + sound_behind), 1, j * FRAME)
        for j in range(int(seconds / FRAME))
        if sounding(j * FRAME)
    ]
    clock, sound = live.LiveClock(), LiveSound("camera")
    sound.connected(Stream)
    moments, pictures, taken, most_waiting = {}, {}, [], 0.0
    alive = []  # every frame kept, so that no id is used twice (a dropped one was reused)
    for wall, is_sound, moment in sorted(items):
        now[0] = 100.0 + wall
        if is_sound:
            frame = silent_frame(source_time(moment))
            alive.append(frame)
            moments[id(frame)] = moment
            sound.hear(Packet(frame), clock)
            most_waiting = max(most_waiting, sound._waited)
        else:
            pictures[moment] = clock.seconds(source_time(moment))
            taken += sound.until(pictures[moment])  # as the writer takes it, frame by frame
    landed = {id(f): float(f.pts * f.time_base) for f in taken + sound.until(float("inf"))}
    heard = [(m, landed.get(key)) for key, m in moments.items()]
    return heard, pictures, most_waiting


def misplaced(heard, pictures) -> list[tuple[float, float | None]]:
    """Sound frames lost, or landed more than 10 ms from where their moment's picture did."""
    moments = np.array(sorted(pictures))
    wrong = []
    for moment, at in heard:
        shown = moments[np.searchsorted(moments, moment, side="right") - 1]
        if at is None or abs(at - (pictures[shown] + moment - shown)) > 0.01:
            wrong.append((moment, at))
    return wrong


burst = lambda s: s / 15 if s < 15 else s - 14  # noqa: E731 (15 s at once, as HLS live starts)


@pytest.mark.parametrize(
    "case",
    [
        {"source_time": lambda s: 1.4 + s, "sound_behind": 2.5},  # all of it was lost
        {"source_time": lambda s: 1.4 + s, "arrives": burst},  # lost from 10 s on
        {"source_time": lambda s: 1.4 + s % 8, "arrives": burst, "picture_late": 0.12},
        {"source_time": lambda s: 1.4 + s + 3 * (s >= 10) + 60 * (s >= 20), "picture_late": 0.12},
        {"source_time": lambda s: 1.4 + s + 3 * (s >= 10) - 30 * (s >= 20), "sound_behind": 0.4},
        {"source_time": lambda s: 1.4 + s + 60 * (s >= 20), "sounding": lambda s: s % 6 < 1},
        {"source_time": lambda s: 1.4 + s - 3 * (s >= 20), "picture_late": 0.2},
        {"source_time": lambda s: 1.4 + s % 5, "picture_late": 0.6},
        {"source_time": lambda s: 1.4 + s - 30 * (s >= 20), "sound_behind": 4.5, "fps": 60},
        {"source_time": lambda s: 1.4 + s + 60 * (s >= 20), "sound_behind": 5.0, "fps": 60},
    ],
    ids=[
        "sound 2.5 s behind in the stream",
        "a 15 s burst on connecting",
        "an 8 s loop after a burst, the picture decoded late",
        "3 s ahead, then 60 s ahead",
        "3 s ahead, then 30 s back, the sound behind",
        "sound only now and then, then 60 s ahead",
        "3 s back, the picture late",
        "a 5 s loop, the picture 0.6 s late",
        "30 s back at 60 frames/s, the sound 4.5 s behind",
        "60 s ahead at 60 frames/s, the sound 5 s behind",
    ],
)
def test_each_sound_frame_lands_where_its_picture_did(monkeypatch, case):
    heard, pictures, most_waiting = play(monkeypatch, 40.0, **case)
    assert not misplaced(heard, pictures)
    assert most_waiting <= 2.1  # waiting grew without end after a loop
