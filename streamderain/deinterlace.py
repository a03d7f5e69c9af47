"""Whole pictures from interlaced video: FFmpeg's ``bwdif`` on the frames flagged interlaced.

An interlaced frame holds two moments, one in its even lines and one in its odd lines: the model
would take the comb a moving edge makes for structure, and the output, written progressive, would
keep it. Each such frame is rebuilt from its fields and its neighbours, one frame for one frame,
so the frame count, rate and timestamps stay those of the source. Progressive video never enters
the filter; a source that turns interlaced part way is filtered from there on (``bwdif`` passes
the frames not flagged interlaced as they are). The filter holds one frame back for the next
field, so a live interlaced source waits one frame longer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction

import av
import av.filter


class Deinterlacer:
    """One stream's deinterlacing: ``for vf in Deinterlacer().frames(decoded): ...``."""

    def __init__(self) -> None:
        self._graph: av.filter.Graph | None = None
        self._shape: tuple[int, int, str] | None = None
        self._time_base: Fraction | None = None

    def frames(self, decoded: Iterable[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        """The frames in order, each interlaced one made whole; the last comes at the end."""
        for vf in decoded:
            if self._graph is None and not vf.interlaced_frame:
                yield vf
                continue
            shape = (vf.width, vf.height, vf.format.name)
            if self._graph is not None and shape != self._shape:  # a new size mid-stream
                yield from self._drain(end=True)
            if self._graph is None:
                self._graph, self._shape, self._time_base = _graph(vf), shape, vf.time_base
            self._graph.push(vf)
            yield from self._drain()
        if self._graph is not None:
            yield from self._drain(end=True)

    def _drain(self, end: bool = False) -> Iterator[av.VideoFrame]:
        assert self._graph is not None
        if end:
            self._graph.push(None)
        while True:
            try:
                vf = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                break
            if vf.pts is not None and self._time_base:  # bwdif halves the time base
                vf.pts = round(vf.pts * vf.time_base / self._time_base)
                vf.time_base = self._time_base
            yield vf
        if end:
            self._graph = None


def _graph(first: av.VideoFrame) -> av.filter.Graph:
    graph = av.filter.Graph()
    source = graph.add_buffer(
        width=first.width,
        height=first.height,
        format=first.format,
        time_base=first.time_base,
    )
    bwdif = graph.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
    sink = graph.add("buffersink")
    source.link_to(bwdif)
    bwdif.link_to(sink)
    graph.configure()
    return graph
