#!/usr/bin/env bash
# The GPU speed measurements, one command of at most 9 minutes: `ssal bench` rows, most
# informative first, each only while the time left allows it:
#   1. WRN-28-10 + SSAL (and the bare backbone, a plain PyTorch loop, a kernel profile)
#   2. ResNet-50 + SSAL, 3. DenseNet-190-40 + SSAL (CIFAR; the same, with profiles)
#   4.-8. WRN-28-10 variants: inception blocks aligned to 752 channels, inception blocks whose
#      three 1x1 convolutions on the input run as one, CUDA graphs (reduce-overhead), batch
#      256, max-autotune
#   9.-10. ImageNet ResNet-50 + SSAL on a folder of JPEGs written here: decoding on 16 CPU
#      workers, then on the GPU (nvJPEG)
# Rows already in $PREV for this GPU are skipped, so the same command in the next session
# goes on where this one stopped.
#
# Device command (carry [".whl"]; prepare .whl here first: bash benchmarks/prepare_device.sh):
#   OUT=$OUT bash benchmarks/gpu_bench.sh
# Options: ITEMS="wrn28-10 resnet50 ..." (the tags below) picks rows; BUDGET_S (510) is the
# wall time the script may use; PREV (benchmarks/results/gpu_bench.jsonl) holds earlier rows.
# Try it on a CPU first: DEVICE=cpu OUT=/tmp/gpu_bench PYTHON=ENV/bin/python bash benchmarks/gpu_bench.sh
# with ENV a virtual environment holding only torch and torchvision, as the device's image does
# (tiny models, 2 steps; same queue, same files).
#
# Writes 4 small files into $OUT: env.txt (GPU, versions, what setup installed), bench.jsonl
# (one `ssal bench --json` row per line, with "tag", "command", "seconds"), kernels.txt (the
# profile summary of each profiled row), log.txt (what ran, what was skipped, errors).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_bench}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-510}
PREV=${PREV:-benchmarks/results/gpu_bench.jsonl}
WORK=${WORK:-/tmp/ssal-bench}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
PY=${PYTHON:-python3}
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }

# ---- set-up: ssal's dependencies from .whl (only what the image lacks), ssal from src/
{
  [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "cpu cores: $(nproc)"
  "$PY" benchmarks/device_setup.py "$WORK/site"
} > "$OUT/env.txt" 2>&1 || { log "set-up failed: $(tail -1 "$OUT/env.txt")"; exit 1; }
export PYTHONPATH="$WORK/site:$PWD/src"
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" >> "$OUT/env.txt" 2>&1 \
  || { log "set-up failed: $(tail -1 "$OUT/env.txt") (PYTHON=$PY)"; exit 1; }
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" 2>/dev/null)
log "set-up done on $GPU"

# ---- the queue: tag | time limit (s) | ssal bench options
if [ "$DEVICE" = cuda ]; then
  FAST="--device cuda --precision bf16-mixed --compile --channels-last --steps 20 --warmup 8"
  WRN="--model wrn28-10 --ssal --batch-size 128"
  RESNET="--model resnet50 --ssal --batch-size 128"
  DENSE="--model densenet190-40 --ssal --batch-size 128"
  BIG="--model wrn28-10 --ssal --batch-size 256"
  IMNET="--model resnet50-imagenet --ssal --batch-size 128 --image-folder $WORK/jpeg --workers 16"
  JPEGS="1000 10 1"
  # the paper's WRN layouts, made with the authors' Keras layers as wrn28-10's own, with
  # another inception block (INC is replaced below)
  WIDE=("keras: cbr(128,5,2) cbr(128,3) cbr cbr INC INC gap"
        "keras: cbr(128,5) cbr(128,3) cbr cbr gap dense(768)"
        "keras: cbr(128,3) cbr(128,3) INC INC gap")
else  # DEVICE=cpu: the same queue with tiny models and 2 steps, to catch mistakes here
  FAST="--device cpu --precision 32 --steps 2 --warmup 1"
  WRN="--model tiny-wrn --ssal --batch-size 8"
  RESNET="--model tiny-resnet --ssal --batch-size 8"
  DENSE="--model tiny-densenet --ssal --batch-size 8"
  BIG="--model tiny-wrn --ssal --batch-size 16"
  IMNET="--model tiny-resnet --ssal --batch-size 4 --image-folder $WORK/jpeg --workers 2"
  JPEGS="10 2 1"
  WIDE=("cbr(8,3) INC gap" "cbr(8,3) gap dense(16)" "INC gap")
fi
QUEUE=(
  "wrn28-10|240|$WRN --profile $WORK/prof"
  "resnet50|200|$RESNET --profile $WORK/prof"
  "densenet190-40|240|$DENSE --profile $WORK/prof"
  "wrn28-10_inception752|150|$WRN --no-reference --layouts"
  "wrn28-10_one-stem|150|$WRN --no-reference --layouts"
  "wrn28-10_cudagraphs|150|$WRN --no-reference --compile --compile-mode reduce-overhead"
  "wrn28-10_b256|150|$BIG --no-reference"
  "wrn28-10_max-autotune|300|$WRN --no-reference --compile --compile-mode max-autotune-no-cudagraphs"
  "imagenet_cpu-decode|300|$IMNET"
  "imagenet_gpu-decode|240|$IMNET --decode-on-device --no-reference"
)
ITEMS=${ITEMS:-"wrn28-10 resnet50 densenet190-40 wrn28-10_inception752 wrn28-10_one-stem wrn28-10_cudagraphs wrn28-10_b256 wrn28-10_max-autotune imagenet_cpu-decode imagenet_gpu-decode"}

done_before() {  # a row of this tag measured on this GPU already
  [ -f "$PREV" ] && "$PY" - "$PREV" "$1" "$GPU" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
sys.exit(0 if any(r.get("tag") == sys.argv[2] and r.get("device") == sys.argv[3] for r in rows) else 1)
PY
}

for tag in $ITEMS; do
  item=""
  for q in "${QUEUE[@]}"; do [ "${q%%|*}" = "$tag" ] && item=$q; done
  [ -n "$item" ] || { log "$tag: no such row"; continue; }
  limit=${item#*|}; opts=${limit#*|}; limit=${limit%%|*}
  if done_before "$tag"; then log "$tag: in $PREV already, skipped"; continue; fi
  left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -lt $(( limit * 2 / 3 )) ]; then log "$tag: ${left}s left of the budget, wants ${limit}s: left for the next session"; continue; fi
  [ "$left" -lt "$limit" ] && limit=$left
  if [[ $tag == imagenet_* ]] && [ ! -d "$WORK/jpeg/train" ]; then
    # shellcheck disable=SC2086
    "$PY" benchmarks/jpeg_folder.py "$WORK/jpeg" $JPEGS >> "$OUT/log.txt" 2>&1
  fi
  args=(bench $FAST $opts)
  [[ $tag == *_inception752 ]] && args+=("${WIDE[@]//INC/inception(1,8)}")
  [[ $tag == *_one-stem ]] && args+=("${WIDE[@]//INC/inception(1,1,1)}")
  rm -rf "$WORK/prof"
  log "$tag: ssal ${args[*]} (limit ${limit}s)"
  t0=$(date +%s)
  timeout "$limit" "$PY" -m ssal.cli "${args[@]}" --json "$WORK/$tag.json" > "$WORK/$tag.log" 2>&1
  rc=$?
  log "$tag: rc=$rc in $(( $(date +%s) - t0 ))s"
  if [ $rc -ne 0 ]; then grep -vE "Warning|warn\(" "$WORK/$tag.log" | tail -4 >> "$OUT/log.txt"; continue; fi
  "$PY" - "$WORK/$tag.json" "$tag" "ssal ${args[*]}" $(( $(date +%s) - t0 )) >> "$OUT/bench.jsonl" <<'PY'
import json, sys
row = json.load(open(sys.argv[1]))
row.update(tag=sys.argv[2], command=sys.argv[3], seconds=int(sys.argv[4]))
row.get("profile_summary", {}).pop("events", None)
print(json.dumps(row))
keys = ("train_images_per_s", "baseline_train_images_per_s", "eval_images_per_s", "mfu", "speedup", "ssal_overhead")
print(sys.argv[2], {k: round(row[k], 3) if isinstance(row.get(k), float) else row.get(k) for k in keys}, file=sys.stderr)
PY
  if [ -f "$WORK/prof/kernels.txt" ]; then
    { echo "== $tag"; cat "$WORK/prof/kernels.txt"; echo; } >> "$OUT/kernels.txt"
  fi
done 2>> "$OUT/log.txt"
log "done: $(cat "$OUT/bench.jsonl" 2>/dev/null | wc -l) rows in $OUT/bench.jsonl"
