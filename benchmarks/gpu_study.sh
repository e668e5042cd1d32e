#!/usr/bin/env bash
# Issue 8's GPU study: WRN-16-4 on Fashion-MNIST, baseline vs SSAL (similar) vs SSAL (split),
# 3 seeds, 40 epochs, three runs at a time on one GPU. Needs Fashion-MNIST's four files in
# .device_data/fashion-mnist and jsonargparse's wheels in .whl (the GPU image lacks it):
#   mkdir -p .device_data && cp -r /usr/share/datasets/fashion-mnist .device_data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#     jsonargparse docstring-parser typeshed-client webdataset braceexpand
# then carry [".device_data", ".whl"] and run: OUT=$OUT bash benchmarks/gpu_study.sh
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
OUT=${OUT:-runs}
python3 -m ssal.cli study \
  --config configs/fashion-mnist/wrn-16-4_baseline.yaml configs/fashion-mnist/wrn-16-4_ssal.yaml \
           configs/fashion-mnist/wrn-16-4_ssal-split.yaml \
  --name baseline ssal-similar ssal-split --seeds 0 1 2 --devices 1 --parallel 3 \
  --out "$OUT/study" -- --data.init_args.data_dir .device_data/fashion-mnist \
  2>&1 | tail -40
cp "$OUT/study/study.json" "$OUT/study.json" 2>/dev/null
