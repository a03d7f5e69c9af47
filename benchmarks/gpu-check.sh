#!/usr/bin/env bash
# The GPU checks in one call of a lent GPU machine (README, "Performance"): the CUDA tests, the
# training step's speed there, whether FFmpeg's NVIDIA codecs open, and `python -m benchmarks
# --device cuda`. Run from the repository root with PyAV's wheels in .whl/ and a copy of the
# shared data the tests read in .gpu-shared/ (both made by benchmarks/gpu-pack.sh and
# carried); logs and results go to $OUT.
# Each part has its own time limit, so one that hangs leaves the others' figures.
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -e ../shared ] || ln -s "$PWD/.gpu-shared" ../shared

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
  --format=csv | tee "$OUT/machine.log"
python3 -c "import torch, av; print('torch', torch.__version__, torch.cuda.get_device_name(),
'cudnn', torch.backends.cudnn.version(), 'av', av.__version__, 'cores', __import__('os').cpu_count())" \
  | tee -a "$OUT/machine.log"

echo "== CUDA tests"
timeout 200 python3 -m pytest -m cuda -v -p no:cacheprovider tests/test_pipeline.py \
  tests/test_training_gpu.py 2>&1 | tee "$OUT/pytest.log" | grep -E "PASS|FAIL|SKIP|ERROR|passed|failed|Error"

echo "== training step"
timeout 90 python3 -m benchmarks.train_step --config configs/dcsfn-paper-stage4.toml \
  --device cuda --steps 6 --runs 1 2>&1 | tee "$OUT/train-step.log"

echo "== NVIDIA codecs in PyAV"
timeout 30 python3 - <<'EOF' 2>&1 | tee "$OUT/nvcodec.log"
import av, numpy as np
for name in ("h264_nvenc", "h264_cuvid"):
    try:
        if name.endswith("nvenc"):
            with av.open("/tmp/nv.mp4", "w") as out:
                s = out.add_stream(name, rate=25)
                s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
                for i in range(30):
                    img = np.full((720, 1280, 3), i * 8, np.uint8)
                    out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
                out.mux(s.encode(None))
        else:
            with av.open("/tmp/nv.mp4") as c:
                ctx = av.CodecContext.create(name, "r")
                ctx.extradata = c.streams.video[0].codec_context.extradata
                n = sum(len(ctx.decode(p)) for p in c.demux(video=0))
            print(name, "decoded", n)
        print(name, "ok")
    except Exception as e:
        print(name, "failed:", type(e).__name__, e)
EOF

echo "== benchmark"
timeout 420 python3 -m benchmarks --device cuda --frames 90 --repeats 3 --out "$OUT/gpu.json" 2>&1 \
  | tee "$OUT/bench.log" | grep -v "^  model"
