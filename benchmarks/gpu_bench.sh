#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md: each paper model with SSAL branches through
# `ssal bench` (bf16, torch.compile, channels_last, batch 128; the same run measures the bare
# backbone for the branch overhead and a plain PyTorch fp32 loop for the speedup).
# Usage: OUT=benchmarks/results bash benchmarks/gpu_bench.sh   (DEVICE=cpu MODELS=tiny-wrn to try it)
# PROFILE=1 adds operator tables of the SSAL model and the bare backbone (OUT/profile_MODEL/);
# COMPILE_MODE=max-autotune (or reduce-overhead, ...) picks torch.compile's mode.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
OUT=${OUT:-benchmarks/results}
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-"wrn28-10:240 resnet50:150 densenet190-40:160"}
STEPS=${STEPS:-30}
PROFILE=${PROFILE:-}
COMPILE_MODE=${COMPILE_MODE:-}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"
for item in $MODELS; do
  model=${item%%:*}; limit=${item##*:}
  start=$(date +%s)
  extra=()
  [ -n "$PROFILE" ] && extra+=(--profile "$OUT/profile_${model}")
  [ -n "$COMPILE_MODE" ] && extra+=(--compile-mode "$COMPILE_MODE")
  tag=${COMPILE_MODE:+_$COMPILE_MODE}
  timeout "$limit" python3 -m ssal.cli bench --model "$model" --ssal --device "$DEVICE" \
    --precision bf16-mixed --compile --channels-last --batch-size 128 --steps "$STEPS" --warmup 8 \
    "${extra[@]}" --json "$OUT/${model}_ssal_bf16_compile${tag}.json" > "$OUT/${model}.log" 2>&1
  echo "$model rc=$? in $(( $(date +%s) - start )) s"
  grep -E "Error|error" "$OUT/${model}.log" | tail -3
  for table in "$OUT/profile_${model}"/*/fit-profile.txt; do
    [ -f "$table" ] && { echo "== $table"; sed -n 1,24p "$table" | cut -c1-150; }
  done
  python3 - "$OUT/${model}_ssal_bf16_compile${tag}.json" <<'PY' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["device", "train_images_per_s", "baseline_train_images_per_s", "eval_images_per_s", "mfu",
        "speedup", "ssal_overhead", "reference_train_images_per_s", "peak_memory_bytes",
        "flops_per_image_train", "projected_run_hours"]
print({k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)) for k in keys})
PY
done
