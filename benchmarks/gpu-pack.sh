#!/usr/bin/env bash
# What benchmarks/gpu-check.sh needs on a lent GPU machine, made here (README, "On a GPU"):
# PyAV's wheel in .whl/ (the machine has PyTorch but no PyAV) and, in .gpu-shared/, the few
# files of ../shared/data that the CUDA tests and the benchmark read (9 MB; the whole shared
# data would not travel). Both folders are ignored by git through .git/info/exclude.
set -eu
cd "$(dirname "$0")/.."
D=../shared/data
G=.gpu-shared
for f in /.whl/ /.gpu-shared/; do
  grep -qxF "$f" .git/info/exclude 2>/dev/null || echo "$f" >>.git/info/exclude
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 -d .whl av==18.1.0
rm -rf "$G"
mkdir -p "$G/data/real-rain/nturain-rb2" "$G/data/clean/video/davis-car-roundabout" \
  "$G/data/train-pairs/RainTrainH_min" "$G/data/train-pairs/jorder-small/norain" \
  "$G/data/train-pairs/jorder-small/rain" "$G/data/clean/images/urban100" \
  "$G/data/clean/images/kodak24"
first() { find "$1" -maxdepth 1 -type f | sort | head -"$2"; }
first "$D/real-rain/nturain-rb2" 6 | xargs -I{} cp {} "$G/data/real-rain/nturain-rb2/"
first "$D/clean/video/davis-car-roundabout" 30 | xargs -I{} cp {} "$G/data/clean/video/davis-car-roundabout/"
first "$D/clean/images/urban100" 6 | xargs -I{} cp {} "$G/data/clean/images/urban100/"
first "$D/clean/images/kodak24" 2 | xargs -I{} cp {} "$G/data/clean/images/kodak24/"
for n in 2 3 4 5; do cp "$D"/train-pairs/RainTrainH_min/{norain,rain}-$n.png "$G/data/train-pairs/RainTrainH_min/"; done
for n in 2 3 15 16; do
  for side in norain rain; do
    cp "$D/train-pairs/jorder-small/$side/norain-$n.png" "$G/data/train-pairs/jorder-small/$side/"
  done
done
du -sh .whl "$G"
