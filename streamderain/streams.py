"""The streams beside the picture: which video of a source is read, and a source file's audio
and subtitles, brought into the output in time with the video.

Packets are copied as they are where the output container takes their codec; audio it cannot
take is re-encoded to the container's usual codec at a transparent bit rate, and subtitles it
cannot take are left out, with a warning.
"""

from __future__ import annotations

import functools
import io
import logging
import shutil
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av

from streamderain.errors import OutputError, reason
from streamderain.live import CLOCK_JUMP_BACK
from streamderain.sound import audio_stream
from streamderain.targets import LIVE_OUTPUTS

MAX_RATE = 1000  # frames a second: a slow-motion camera's most (phones save 960 as 30)

log = logging.getLogger(__name__)

# Audio/subtitle codecs each container takes as they are, where players play them (None: all
# its FFmpeg muxer takes; Matroska's are most, but not a camera's G.711 sound or MP4's text).
COPYABLE: dict[str, set[str] | None] = {
    "mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac", "mov_text"},
    # QuickTime's PCM both ways round: cameras write big-endian (it became AAC)
    "mov": {"aac", "mp3", "ac3", "alac", "mov_text"}
    | {f"pcm_{kind}{end}" for kind in ("s16", "s24", "s32", "f32", "f64") for end in ("le", "be")},
    "matroska": None,
    "webm": {"opus", "vorbis", "webvtt"},
    "flv": {"aac", "mp3"},  # live publishing: RTMP
    "mpegts": {"aac", "mp3", "mp2", "ac3", "eac3", "opus"},  # UDP, SRT
    "rtsp": {"aac", "opus"},
}
# what the muxer writes anew (or mkvmerge's counts, which would be stale): not carried over
_UNLABELS = {"encoder", "major_brand", "minor_version", "compatible_brands", "duration", "bps",
             "number_of_frames", "number_of_bytes"}  # fmt: skip


def labels(metadata: dict[str, str]) -> dict[str, str]:
    """A container's or a stream's tags that say what it is (title, language, date, place)."""
    return {
        k: v
        for k, v in metadata.items()
        if k.lower() not in _UNLABELS and not k.upper().startswith("_STATISTICS")
    }


def copies_as_is(fmt: str, codec: str) -> bool:
    allowed = COPYABLE.get(fmt, set())
    return codec in (_muxer_codecs(fmt) if allowed is None else allowed)


@functools.cache
def _muxer_codecs(fmt: str) -> frozenset[str]:
    """The codecs FFmpeg's muxer for ``fmt`` takes."""
    with av.open(io.BytesIO(), "w", format=fmt) as probe:
        return frozenset(probe.supported_codecs)


def shown_video(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The video stream a player shows: FFmpeg's best (the default track, the most frames),
    never a cover picture (a song's artwork, an ``attached_pic``); None where there is none."""
    moving = [
        s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    best = container.streams.best("video")
    return best if best in moving else next(iter(moving), None)


def frame_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The video's frames a second: its average, unless that is past any camera's (FFmpeg 8
    reads a DV tape's as 60,000, its clock's ticks, and MP4 then refused the file at its end);
    then FFmpeg's guess from the stream, as its own command line takes."""
    average = stream.average_rate
    return average if average and average <= MAX_RATE else stream.guessed_rate


def heard_audio(container: av.container.InputContainer) -> av.audio.stream.AudioStream | None:
    """The sound read beside a live picture: FFmpeg's best, else the first (whose rate the
    probe, 0.1 s of a live source, may not have found: ``best`` leaves those out); None where
    there is none, or none FFmpeg decodes."""
    audio = container.streams.best("audio") or next(iter(container.streams.audio), None)
    return audio if audio is not None and audio.codec_context is not None else None


def has_sound(path: str) -> bool:
    """Whether a file has sound: a writer that leaves it out says so only then."""
    with av.open(path, metadata_errors="replace") as container:
        return bool(container.streams.audio)


def file_origin(container: av.container.InputContainer) -> float:
    """Seconds a file's timeline starts at. ``--start`` and ``--duration`` count from here, as
    ffmpeg's ``-ss`` does: an MPEG-TS file usually starts at 1.4 s, a camera's recording hours in."""
    return (container.start_time or 0) / av.time_base


class Continuity:
    """The times of one stream of a file, made to go on where they jump back (MPEG-TS files
    joined end to end, a recorder's restart): what follows the jump moves on by it, as ffmpeg
    moves it, so that a second part is not crowded onto the first's last instant."""

    def __init__(self) -> None:
        self.offset = 0.0  # seconds every time from here on is moved on by
        self._last: float | None = None

    def late(self, t: float, step: float) -> float:
        """How far to move the time ``t`` (seconds) on; ``step``: how long one item lasts."""
        t += self.offset
        if self._last is not None and t < self._last - CLOCK_JUMP_BACK:
            self.offset += self._last + step - t
            t = self._last + step
        self._last = t if self._last is None else max(self._last, t)
        return self.offset


def continuous(packets: Iterator[av.Packet]) -> Iterator[av.Packet]:
    """``packets``, each stream's times made to go on where they jump back (:class:`Continuity`)."""
    lines: dict[int, Continuity] = {}
    for packet in packets:
        if packet.dts is not None and packet.pts is not None:
            tb = packet.time_base
            step = float(packet.duration * tb) if packet.duration else 0.0
            late = lines.setdefault(packet.stream.index, Continuity()).late(
                float(packet.dts * tb), step
            )
            if late:
                packet.pts += round(late / tb)
                packet.dts += round(late / tb)
        yield packet


class Beside(Protocol):
    """What brings streams other than the picture into an output, as the picture is written."""

    def copy_until(self, seconds: float) -> None:
        """Mux what starts before ``seconds`` of output time."""

    def finish(self, seconds: float) -> None:
        """The output ends at ``seconds``: the rest of what starts before, then the end."""

    def close(self) -> None: ...


class AudioReencoder:
    """Decodes one source audio stream and encodes it again for a container that cannot take it."""

    def __init__(
        self, source: av.audio.stream.AudioStream, output: av.container.OutputContainer, fmt: str
    ) -> None:
        self.stream = audio_stream(output, fmt, source.rate, source.layout)
        self.decoder = source.codec_context
        # channel N plays on speaker N: without this, FFmpeg guesses speakers and remixes
        self.decoder.layout = self.stream.layout

    def packets(self, packet: av.Packet | None, shift: float) -> list[av.Packet]:
        """Encoded packets for one source packet (None: flush), ``shift`` seconds earlier."""
        out = []
        for frame in self.decoder.decode(packet):
            if frame.pts is not None:
                frame.pts -= round(shift / frame.time_base)
            out += self.stream.encode(frame)
        if packet is None:
            out += self.stream.encode(None)
        return out


class StreamCopier:
    """Brings a source file's audio and subtitles into the output, in time with the video.

    Packets are copied as they are where the container takes their codec; audio it cannot take
    is re-encoded (``AUDIO_FALLBACK``), subtitles it cannot take are left out with a warning.
    """

    def __init__(
        self,
        source: str,
        output: av.container.OutputContainer,
        fmt: str,
        start: float,
        end: float | None,
        offset: float,
        origin: float,
    ) -> None:
        self.input = av.open(source, metadata_errors="replace")
        try:
            self.start, self.end, self.offset, self.origin = start, end, offset, origin
            self.map: dict[int, av.stream.Stream] = {}
            self.reencoders: dict[int, AudioReencoder] = {}
            chosen = [*self.input.streams.audio, *self.input.streams.subtitles]
            if fmt in LIVE_OUTPUTS.values():  # a live stream: one sound (its best), no subtitles
                chosen = [a] if (a := heard_audio(self.input)) else []
            else:  # a recording's title, date, place and chapters, as FFmpeg keeps them
                output.metadata.update(labels(self.input.metadata))
                output.set_chapters(self._chapters())
                for video in output.streams.video:  # Matroska marks none once a sound is marked
                    video.disposition |= av.stream.Disposition.default
            for s in chosen:
                name = s.codec_context.name if s.codec_context else "unknown"
                if s.type == "audio" and not (s.codec_context and s.codec_context.sample_rate):
                    # A file cut short before the audio's first frame: FFmpeg knows no rate or
                    # layout for it, and no container takes such a stream.
                    log.warning(
                        "audio stream %d (%s) has no parameters (cut short?): left out",
                        s.index,
                        name,
                    )
                    continue
                if copies_as_is(fmt, name):
                    self.map[s.index] = output.add_stream_from_template(s)
                elif s.type == "audio":
                    self.reencoders[s.index] = AudioReencoder(s, output, fmt)
                    log.info("audio stream %d (%s) re-encoded for %s", s.index, name, fmt)
                else:
                    log.warning(
                        "%s stream %d (%s) does not fit %s: left out", s.type, s.index, name, fmt
                    )
                    continue
                copy = self.map.get(s.index) or self.reencoders[s.index].stream
                copy.metadata.update(labels(s.metadata))  # its language, its title
                copy.disposition = s.disposition  # the track a player picks first
            wanted = [self.input.streams[i] for i in [*self.map, *self.reencoders]]
            if wanted and start > 0:  # a second early, for packets that begin before the start
                self.input.seek(int((self.origin + start - 1) * av.time_base), backward=True)
            self._packets = continuous(self.input.demux(*wanted)) if wanted else iter(())
        except BaseException:
            self.input.close()
            raise
        self._held: av.Packet | None = None
        self.output = output

    def _chapters(self) -> list[dict]:
        """The source's chapters within the part derained, on the output's timeline (which
        starts at the first picture: a chapter cannot start before it)."""
        first = self.origin + self.start
        last = None if self.end is None else self.origin + self.end
        kept = []
        for chapter in self.input.chapters():
            tb = chapter["time_base"]
            begin, end = float(chapter["start"] * tb), float(chapter["end"] * tb)
            if end <= first or (last is not None and begin >= last):
                continue
            end = end if last is None else min(end, last)
            begin, end = (max(round((t - self.offset) / tb), 0) for t in (max(begin, first), end))
            kept.append({**chapter, "start": begin, "end": max(end, begin)})
        return kept

    def copy_until(self, seconds: float) -> None:
        """Mux every packet that starts before ``seconds`` of output time."""
        while True:
            packet = self._held or next(self._packets, None)
            self._held = None
            if packet is None:
                break
            if packet.dts is None or packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            since_start = t - self.origin
            if self.end is not None and since_start >= self.end + 1:
                self._packets = iter(())  # in time order, give or take a second: the rest is later
                break
            if (self.start > 0 and since_start < self.start - 1e-9) or (
                self.end is not None and since_start >= self.end
            ):
                continue
            if t - self.offset > seconds:
                self._held = packet
                return
            reencoder = self.reencoders.get(packet.stream.index)
            if reencoder is not None:
                self.output.mux(reencoder.packets(packet, self.offset))
                continue
            shift = round(self.offset / packet.time_base)
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = self.map[packet.stream.index]
            self.output.mux(packet)

    def finish(self, seconds: float) -> None:
        """The output ends at ``seconds``: what starts before goes in, the rest is left out (a run
        cut short, by ``--max-frames``, Ctrl-C or a damaged source, has no picture past it)."""
        self.copy_until(seconds)
        for reencoder in self.reencoders.values():
            self.output.mux(reencoder.packets(None, self.offset))

    def close(self) -> None:
        self.input.close()


def remux(
    path: Path,
    fmt: str,
    rotation: int,
    copier: Callable[[av.container.OutputContainer], Beside | None],
    frame_seconds: float,
    video_start: float = 0.0,
) -> None:
    """Give a finished video file a display rotation and, through ``copier``, its source's
    sound and subtitles, up to its last picture, by remuxing it (packets copied), then copying
    it back into ``path`` itself: the file stays the one its run holds locked, where a rename
    would leave a moment in which another run could take it for a killed run's.

    The video starts at ``video_start`` seconds (a Matroska file of B-frames alone begins a
    little later, its decoding times kept above zero), and packets without a decoding time
    (Matroska's B-frames) are kept."""
    remuxed = path.with_name(path.name.replace(".partial", ".remuxed", 1))  # no longer a name
    streams = None
    try:
        with av.open(str(path)) as src, av.open(str(remuxed), "w", format=fmt) as dst:
            made = src.streams.video[0]
            video = dst.add_stream_from_template(made)
            # what a template leaves out: MP4's pixel shape (VP9 holds none), the rate (Matroska
            # then says 30,000 frames/s, which OpenCV believes) and the tag (HEVC's hvc1)
            if sar := made.sample_aspect_ratio:
                video.codec_context.sample_aspect_ratio = sar
            video.codec_context.framerate = made.average_rate
            if made.codec_tag.strip("\0"):
                video.codec_tag = made.codec_tag
            if rotation:
                video.set_display_rotation(rotation)
            streams = copier(dst)
            end, late = 0.0, None
            for packet in src.demux(made):
                if packet.pts is None:
                    continue  # the demuxer's last, empty packet
                if late is None:  # the first packet in decoding order is the first picture
                    late = round(video_start / packet.time_base) - packet.pts
                packet.pts += late
                if packet.dts is not None:
                    packet.dts += late
                t = float(packet.pts * packet.time_base)
                end = max(end, t + frame_seconds)
                packet.stream = video
                dst.mux(packet)
                if streams is not None:
                    streams.copy_until(t)
            if streams is not None:
                streams.finish(end)
    except (av.error.FFmpegError, OSError) as exc:
        remuxed.unlink(missing_ok=True)
        raise OutputError(f"cannot add the sound and rotation ({reason(exc)})") from None
    finally:
        if streams is not None:
            streams.close()
    try:
        shutil.copyfile(remuxed, path)
    finally:
        remuxed.unlink()
