"""The GPU benchmark's code, run on the CPU at a small size, so that it still runs the day a GPU
is lent (its figures come from ``python -m benchmarks --device cuda`` there, not from here)."""

from __future__ import annotations

import torch

from benchmarks import gpu
from benchmarks.__main__ import make_clip
from training import load_model


def test_the_gpu_benchmark_rows_come_out_on_the_cpu(shared, tmp_path):
    torch.set_num_threads(2)
    rows = gpu.model_rows("cpu", ("dcsfn-lite",), {"64x96": (64, 96)}, ("fp32",), (1, 2), 2)
    assert [(r["batch"], r["fps"] > 0) for r in rows] == [(1, True), (2, True)]
    clip = tmp_path / "rainy.mp4"
    make_clip(clip, 6, (128, 96))
    row = gpu.pipeline_row(clip, tmp_path / "out.mp4", "dcsfn-lite", "cpu", "fp32", 2, True)
    assert row["fps"] > 0 and row["syncs_per_frame"] == 0
    assert {"decode", "model", "encode"} <= set(row["busy_share"])
    assert all(0 <= share <= 1.5 for share in row["busy_share"].values())


def test_the_paper_network_is_written_as_a_model_file_the_pipeline_loads(tmp_path):
    model = load_model(gpu.paper_checkpoint(tmp_path / "paper.pt"))
    assert sum(p.numel() for p in model.net.parameters()) == 6_453_147
