"""Sound in an output: a live source's, recorded and published beside its derained picture,
and the codec any output's sound is encoded to where its container cannot take the source's.

A file's sound is copied after the run (:mod:`streamderain.streams`); a live source's cannot be
read again, so the reader decodes it as it comes, stamps it with the run's clock (the picture's:
sound and picture stay as much in step as the source had them) and holds it for the writer,
which encodes what is due each time it writes a frame. A gap in the source (a reconnect) is
silence in the sound where the picture has its gap (past ``FILL_SECONDS``, a gap in both).
"""

from __future__ import annotations

import collections
import logging
import threading
from fractions import Fraction

import av

from streamderain.live import LiveClock

log = logging.getLogger(__name__)

#: sound times this close to where the last frame ended join it (rounding, a source's jitter);
#: further is a gap, or an overlap after the source's clock jumped (what overlaps is left out)
JOIN_SECONDS = 0.005
#: sound held for a writer that takes none (``--encoder ffmpeg``, a folder of pictures)
HELD_SECONDS = 30.0
#: the sound's own times moving on by more than this between frames: a jump, or a pause
JUMP_SECONDS = 0.5
#: sound that waits for the picture's clock (see :meth:`LiveSound.hear`) waits this long at most
WAITING_SECONDS = 2.0
#: a gap in the sound up to this long is filled with silence (longer: see SoundTrack._fill)
FILL_SECONDS = 60.0
#: the output's sound where the source's had not begun when the output was set up (resampled)
UNHEARD_SHAPE = (48_000, "stereo")

# Audio a container cannot take is re-encoded to its usual codec at a transparent bit rate
# (lossless FLAC in Matroska; AAC where none is named); subtitles it cannot take are left out,
# with a warning.
AUDIO_FALLBACK: dict[str, tuple[str, int]] = {
    "mp4": ("aac", 256_000),
    "mov": ("aac", 256_000),
    "matroska": ("flac", 0),
    "webm": ("libopus", 192_000),
}


# speakers for a count of channels where a source names none (FFmpeg's "4 channels"): a codec
# opens only with named speakers; these are layouts AAC, Opus and FLAC all take
NAMED_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad",
                 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}  # fmt: skip


def speakers(layout: av.AudioLayout | str) -> str:
    """``layout``, or for channels without named speakers the usual ones for their count."""
    layout = av.AudioLayout(layout)
    if any(channel.name != "NONE" for channel in layout.channels):
        return layout.name
    return NAMED_LAYOUTS.get(layout.nb_channels, layout.name)


def audio_stream(
    output: av.container.OutputContainer, fmt: str, rate: int, layout: av.AudioLayout | str
) -> av.audio.stream.AudioStream:
    """A new audio stream of ``fmt``'s usual codec (``AUDIO_FALLBACK``; AAC for live formats)
    for sound of ``rate`` Hz, at that rate where the codec takes it."""
    codec, bit_rate = AUDIO_FALLBACK.get(fmt, ("aac", 256_000))
    rates = av.Codec(codec, "w").audio_rates
    stream = output.add_stream(codec, rate=rate if not rates or rate in rates else max(rates))
    stream.layout = speakers(layout)
    if bit_rate:  # none for lossless codecs
        stream.bit_rate = bit_rate
    return stream


class LiveSound:
    """The sound of one live source, from the reader thread to the writer thread.

    Frames keep the rate and channel layout (``shape``) of the first sound heard; a later
    connection's sound in another shape is left out, with a warning.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.shape: tuple[int, str] | None = None  # (rate, layout), set once, read by the writer
        self._next: int | None = None  # the sample where the last frame held ends
        self._held: collections.deque[av.AudioFrame] = collections.deque()
        self._lock = threading.Lock()  # ``_held``: filled by the reader, emptied by the writer
        # the reader's own: frames waiting for their picture, the seconds of sound they hold,
        # where the last frame placed ended (source time, run time), and how many pictures
        # had come then (older ones are no place for a later frame: they are behind it)
        self._waiting: collections.deque[av.AudioFrame] = collections.deque()
        self._waited = 0.0
        self._ended: tuple[float, float] | None = None
        self._pictures = 0
        self.heard = self._warned = False  # heard: a connection had a sound stream

    def connected(self, stream: av.audio.stream.AudioStream) -> None:
        """A new connection's sound stream; the first one with parameters sets the sound's
        shape. What an earlier connection left waiting has no place on the new one's clock."""
        self._waiting.clear()
        self._waited, self._ended = 0.0, None
        self.heard = True
        if self.shape is None and stream.codec_context.sample_rate:
            self.shape = (stream.codec_context.sample_rate, stream.layout.name)

    def hear(self, packet: av.Packet, clock: LiveClock) -> None:
        """Decode one packet and hold its frames at their run time.

        Sound whose times run on from the last frame's runs on from where that was placed, as
        the source's clock runs on for both its streams. The first frame of a connection, and
        one whose times jumped (the source's clock set or restarted, a pause in the sound),
        goes beside the picture of its moment (:meth:`LiveClock.beside`), among those that
        came after the last frame was placed (an older one of the same time is from before a
        restart); it waits for that picture, ``WAITING_SECONDS`` at most, then goes beside the
        latest."""
        try:
            frames = [f for f in packet.decode() if f.time is not None]
        except (av.error.FFmpegError, ValueError):
            return  # damaged sound is dropped, as the decoder conceals damaged pictures
        for frame in frames:
            if self.shape is None:  # a sound that began after FFmpeg's 0.1 s probe
                self.shape = (frame.sample_rate, frame.layout.name)
            self._waiting.append(frame)
            self._waited += frame.samples / frame.sample_rate
        while self._waiting:
            frame = self._waiting[0]
            length = frame.samples / frame.sample_rate
            if self._ended is not None and abs(frame.time - self._ended[0]) <= JUMP_SECONDS:
                seconds: float | None = self._ended[1] + frame.time - self._ended[0]
            else:
                seconds = clock.beside(frame.time, self._pictures)
                if seconds is None and self._waited <= WAITING_SECONDS:
                    return
                seconds = clock.latest(frame.time) if seconds is None else seconds
            self._waiting.popleft()
            self._waited -= length
            if seconds is None:  # no picture at all yet, for 2 s of sound
                continue
            self._ended, self._pictures = (frame.time + length, seconds + length), clock.pictures
            if seconds >= 0:
                self._hold(frame, seconds)

    def _hold(self, frame: av.AudioFrame, seconds: float) -> None:
        if (frame.sample_rate, frame.layout.name) != self.shape:
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s: its sound changed to %d Hz %s (was %s): left out",
                    *(self.name, frame.sample_rate, frame.layout.name, self.shape),
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
        with self._lock:
            self._held.append(frame)
            while self._next - self._held[0].pts > HELD_SECONDS * frame.sample_rate:
                self._held.popleft()

    def until(self, seconds: float) -> list[av.AudioFrame]:
        """The frames held that start before ``seconds`` of run time, taken out."""
        due = []
        with self._lock:
            while self._held and self._held[0].pts * self._held[0].time_base < seconds:
                due.append(self._held.popleft())
        return due

    def track(self, output: av.container.OutputContainer, fmt: str) -> SoundTrack | None:
        """The sound's stream in ``output``; None where the source has none. A sound that had
        not begun when the output was set up (at its first picture) is resampled to
        ``UNHEARD_SHAPE``: a stream cannot be added to an output once it is being written."""
        if not self.heard:
            return None
        rate, layout = self.shape or UNHEARD_SHAPE
        return SoundTrack(self, output, fmt, rate, layout)


class SoundTrack:
    """The live sound in one output, encoded as the picture is written (the same calls as
    :class:`streamderain.streams.StreamCopier`: the writer does not tell them apart)."""

    def __init__(
        self,
        sound: LiveSound,
        output: av.container.OutputContainer,
        fmt: str,
        rate: int,
        layout: str,
    ) -> None:
        self.sound, self.output = sound, output
        self.stream = audio_stream(output, fmt, rate, layout)
        self._end: int | None = None  # where the last frame encoded ends (samples)
        self._partial = 0.0  # samples (at the codec's rate) it holds towards its next packet

    def copy_until(self, seconds: float) -> None:
        for frame in self.sound.until(seconds):
            if self._end is not None and frame.pts > self._end:
                self._fill(frame, frame.pts - self._end)
            self._encode(frame)

    def _fill(self, like: av.AudioFrame, gap: int) -> None:
        """Silence over a gap in the sound (an outage), as an encoder counts samples: Opus's
        ignores the times of its input, and the others cut it into packets by counting, so the
        sound after a gap played too early (by up to a packet, 96 ms of FLAC; by the whole gap
        in Opus). A gap longer than ``FILL_SECONDS`` is filled only to the end of the packet
        the encoder is filling: the sound after it keeps its time, except in Opus."""
        size = self.stream.codec_context.frame_size
        if gap <= FILL_SECONDS * like.sample_rate:
            fill = gap
        elif size:  # to the packet's end, in the frames' samples (the codec may resample)
            fill = min(round(-self._partial % size * like.sample_rate / self.stream.rate), gap)
        else:  # a codec of no fixed packet size (PCM) keeps every time as it is
            fill = 0
        while fill > 0:
            n = min(fill, like.sample_rate)
            silence = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=n)
            for plane in silence.planes:
                plane.update(bytes(plane.buffer_size))
            silence.sample_rate, silence.time_base = like.sample_rate, like.time_base
            silence.pts = self._end
            self._encode(silence)
            fill -= n

    def _encode(self, frame: av.AudioFrame) -> None:
        self.output.mux(self.stream.encode(frame))
        self._end = frame.pts + frame.samples
        if size := self.stream.codec_context.frame_size:  # resampled: counted at its rate
            self._partial = (
                self._partial + frame.samples * self.stream.rate / frame.sample_rate
            ) % size

    def finish(self, seconds: float) -> None:
        self.copy_until(seconds)
        self.output.mux(self.stream.encode(None))

    def close(self) -> None:
        """Nothing of its own to close: the output is the writer's."""
