"""A live source's sound, recorded and published beside its derained picture.

A file's sound is copied after the run (:mod:`streamderain.streams`); a live source's cannot be
read again, so the reader decodes it as it comes, stamps it with the run's clock (the picture's:
sound and picture stay as much in step as the source had them) and holds it for the writer,
which encodes what is due each time it writes a frame. A gap in the source (a reconnect) stays
a gap, as it does in the picture.
"""

from __future__ import annotations

import collections
import logging
from fractions import Fraction

import av

from streamderain.live import LiveClock
from streamderain.streams import audio_stream

log = logging.getLogger(__name__)

#: sound times this close to where the last frame ended join it (the source's jitter)
JOIN_SECONDS = 0.1
#: sound held for a writer that takes none (``--encoder ffmpeg``, a folder of pictures)
HELD_SECONDS = 30.0
#: sound held until its connection's first picture gives the clock (frame threads delay it)
WAITING_SECONDS = 2.0


class LiveSound:
    """The sound of one live source, from the reader thread to the writer thread.

    Frames keep the rate and channel layout of the first connection's sound stream; a later
    connection's sound in another shape is left out, with a warning.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.rate: int | None = None
        self.layout: str | None = None
        self._next: int | None = None  # the sample where the last frame held ends
        self._held: collections.deque[av.AudioFrame] = collections.deque()
        self._waiting: collections.deque[av.AudioFrame] = collections.deque()
        self._warned = False

    def connected(self, stream: av.audio.stream.AudioStream) -> None:
        """A new connection's sound stream; the first one with parameters sets the sound's
        shape. What an earlier connection left waiting has no place on the new one's clock."""
        self._waiting.clear()
        ctx = stream.codec_context
        if self.rate is None and ctx is not None and ctx.sample_rate:
            self.rate, self.layout = ctx.sample_rate, ctx.layout.name

    def hear(self, packet: av.Packet, clock: LiveClock) -> None:
        """Decode one packet and hold its frames, at the run time the picture's clock gives;
        sound that comes before the connection's first picture waits for it."""
        try:
            self._waiting.extend(f for f in packet.decode() if f.time is not None)
        except (av.error.FFmpegError, ValueError):
            return  # damaged sound is dropped, as the decoder conceals damaged pictures
        while self._waiting:
            seconds = clock.at(self._waiting[0].time)
            if seconds is None:
                while self._waiting[-1].time - self._waiting[0].time > WAITING_SECONDS:
                    self._waiting.popleft()
                return
            frame = self._waiting.popleft()
            if seconds >= 0:
                self._hold(frame, seconds)

    def _hold(self, frame: av.AudioFrame, seconds: float) -> None:
        if (frame.sample_rate, frame.layout.name) != (self.rate, self.layout):
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s: its sound changed to %d Hz %s (was %s Hz %s): left out",
                    *(self.name, frame.sample_rate, frame.layout.name, self.rate, self.layout),
                )
            return
        start = round(seconds * frame.sample_rate)
        if self._next is not None:
            if abs(start - self._next) <= JOIN_SECONDS * frame.sample_rate:
                start = self._next
            elif start < self._next:
                return  # the source's clock went back: sound already held covers this time
        frame.pts, frame.time_base = start, Fraction(1, frame.sample_rate)
        self._next = start + frame.samples
        self._held.append(frame)
        while self._held and self._next - self._held[0].pts > HELD_SECONDS * frame.sample_rate:
            self._held.popleft()

    def until(self, seconds: float) -> list[av.AudioFrame]:
        """The frames held that start before ``seconds`` of run time, taken out."""
        due = []
        while self._held and self._held[0].pts * self._held[0].time_base < seconds:
            due.append(self._held.popleft())
        return due

    def track(self, output: av.container.OutputContainer, fmt: str) -> SoundTrack | None:
        """The sound's stream in ``output`` (None where the source has no sound)."""
        return None if self.rate is None else SoundTrack(self, output, fmt)


class SoundTrack:
    """The live sound in one output, encoded as the picture is written (the same calls as
    :class:`streamderain.streams.StreamCopier`: the writer does not tell them apart)."""

    def __init__(self, sound: LiveSound, output: av.container.OutputContainer, fmt: str) -> None:
        assert sound.rate is not None and sound.layout is not None
        self.sound, self.output = sound, output
        self.stream = audio_stream(output, fmt, sound.rate, sound.layout)

    def copy_until(self, seconds: float) -> None:
        for frame in self.sound.until(seconds):
            self.output.mux(self.stream.encode(frame))

    def finish(self, seconds: float) -> None:
        self.copy_until(seconds)
        self.output.mux(self.stream.encode(None))

    def close(self) -> None:
        """Nothing of its own to close: the output is the writer's."""
