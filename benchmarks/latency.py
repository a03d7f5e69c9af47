"""Glass-to-glass latency of a live feed on loopback, with and without --live-drop.

    python -m benchmarks.latency [--seconds 20]

A real RTSP server (gst-rtsp-server, tests/live/rtsp_server.py under the system python)
serves a 640x360, 25 fps rainy clip in real time on 127.0.0.1. For every frame written, the
latency is the time it was written minus the time the source sent it (the first frame's
arrival plus its timestamp offset). Needs the Debian packages named in README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from benchmarks.__main__ import ROOT, make_clip
from streamderain.batcher import Batcher
from streamderain.decoder import Decoder
from streamderain.encoder import Encoder
from streamderain.options import DecodeOptions, ModelOptions
from streamderain.pipeline import Pipeline, Stage
from streamderain.runner import ModelRunner


class TimedEncoder(Stage):
    """The real encoder, noting when each frame was written relative to when it was sent."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.latencies: list[float] = []

    def process(self, batch):
        self.encoder.process(batch)
        now = time.monotonic()
        for f in batch.frames:
            self.latencies.append(now - self.decoder.clock.began - f.seconds)
        return []

    def finish(self):
        return self.encoder.finish()

    def abort(self, failed: bool) -> None:
        self.encoder.abort(failed)


def measure(url: str, seconds: float, drop: bool, out: Path) -> dict:
    with Decoder(url, DecodeOptions(duration=seconds)) as decoder:
        timed = TimedEncoder(Encoder(out, decoder.info), decoder)
        stages = [
            ("batch", Batcher(1)),
            ("model", ModelRunner(ModelOptions(device="cpu"))),
            ("encode", timed),
        ]
        pipeline = Pipeline(decoder, stages, queue_size=1 if drop else 4, drop_oldest=drop)
        stats = pipeline.run()
    lat = sorted(timed.latencies)
    return {
        "live_drop": drop,
        "frames_written": stats.frames,
        "dropped": stats.dropped,
        "fps": stats.fps,
        "p50_ms": 1000 * statistics.median(lat),
        "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
        "max_ms": 1000 * lat[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "rainy.mp4"
        make_clip(clip, 250, (640, 360))
        server = subprocess.Popen(
            [
                "/usr/bin/python3",
                str(ROOT / "tests" / "live" / "rtsp_server.py"),
                str(clip),
                "--loop",
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            url = server.stdout.readline().split()[-1]
            for drop in (True, False):
                row = measure(url, args.seconds, drop, Path(tmp) / f"out-{drop}.mp4")
                results.append(row)
                print(
                    f"live-drop {'on ' if drop else 'off'}: p50 {row['p50_ms']:.0f} ms, "
                    f"p95 {row['p95_ms']:.0f} ms, max {row['max_ms']:.0f} ms; "
                    f"{row['frames_written']} frames written, {row['dropped']} dropped"
                )
        finally:
            server.terminate()
            server.wait(10)
    out = ROOT / "benchmarks" / "results" / f"latency-{datetime.now():%Y%m%d-%H%M}.json"
    out.write_text(
        json.dumps({"seconds": args.seconds, "size": "640x360", "rows": results}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
