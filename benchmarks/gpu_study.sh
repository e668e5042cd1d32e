#!/usr/bin/env bash
# The GPU study (does SSAL help a properly trained network?), spread over as many GPU
# sessions as it takes: WRN-16-8 on Fashion-MNIST, baseline vs SSAL (similar groupings) vs
# SSAL (split groupings), seeds 0-2, run in that order (seed 0 of all three first). Configs: configs/fashion-mnist/study-gpu/.
#
# Each session: installs what the image lacks (benchmarks/device_setup.py), puts $STUDY (the
# study so far, committed after each session) alone into a fresh study folder, and runs
# `ssal study --budget-minutes` on what is missing; the study stops cleanly between runs when
# the time is up. The first session (no $STUDY yet) first measures the throughput with
# `ssal bench` and picks the epochs so one run takes about $TARGET_S seconds
# (benchmarks/size_study.py); later sessions read the epochs from $STUDY's runs.
#
# Device command (carry [".whl", ".device_data"]; prepare both here first with
# bash benchmarks/prepare_device.sh):
#   OUT=$OUT bash benchmarks/gpu_study.sh
# then commit $OUT/study.json as $STUDY and run the same command in the next session.
# Options: STUDY (benchmarks/results/study_gpu_wrn-16-8_fmnist.json), BUDGET_S (510: wall
# time for the whole command), TARGET_S (160: seconds per SSAL run, so three runs fit one
# session), EPOCHS (skip the sizing; FALLBACK_EPOCHS, 25, if the sizing fails), SEEDS ("0 1 2").
# Try it on a CPU first: DEVICE=cpu OUT=/tmp/gpu_study PYTHON=ENV/bin/python bash benchmarks/gpu_study.sh
# with ENV a virtual environment holding only torch and torchvision, as the device's image does
# (WRN-10-1 with tiny branches, 600 training images, 1 epoch; same steps, same files).
#
# Writes into $OUT: env.txt (GPU, versions, set-up), sizing.json (first session: the bench
# row), study.json (every finished run so far, all sessions), study.txt (the study's tables),
# log.txt (what ran; the end of a failed run's log).
set -u
START=$(date +%s)
OUT=${OUT:-/tmp/gpu_study}
DEVICE=${DEVICE:-cuda}
BUDGET_S=${BUDGET_S:-510}
TARGET_S=${TARGET_S:-160}
STUDY=${STUDY:-benchmarks/results/study_gpu_wrn-16-8_fmnist.json}
SEEDS=${SEEDS:-"0 1 2"}
WORK=${WORK:-/tmp/ssal-study}
PY=${PYTHON:-python3}
CONFIGS=configs/fashion-mnist/study-gpu
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-16}
log() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/log.txt"; }

# ---- set-up: dependencies, Fashion-MNIST where ssal looks for it (./data/fashion-mnist)
{
  [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  echo "cpu cores: $(nproc)"
  "$PY" benchmarks/device_setup.py "$WORK/site"
} > "$OUT/env.txt" 2>&1 || { log "set-up failed: $(tail -1 "$OUT/env.txt")"; exit 1; }
export PYTHONPATH="$WORK/site:$PWD/src"
if [ ! -e data/fashion-mnist ] && [ -d .device_data/fashion-mnist ]; then
  mkdir -p data && ln -s "$PWD/.device_data/fashion-mnist" data/fashion-mnist
fi
"$PY" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" >> "$OUT/env.txt" 2>&1 \
  || { log "set-up failed: $(tail -1 "$OUT/env.txt") (PYTHON=$PY)"; exit 1; }
log "set-up done: $(tail -1 "$OUT/env.txt")"

layouts() {  # the SSAL configs' branch layouts, one per line
  "$PY" -c "import yaml; print('\n'.join(yaml.safe_load(open('$CONFIGS/wrn-16-8_ssal-similar.yaml'))['model']['layouts']))"
}
if [ "$DEVICE" = cuda ]; then
  EXTRA=()
  SIZING=(--model wrn-16-8 --batch-size 512 --device cuda --precision bf16-mixed --compile
          --channels-last --steps 30 --warmup 10)
  BOUNDS="15 40"
  mapfile -t LAYOUTS < <(layouts)
else  # DEVICE=cpu: tiny everything, to try the whole path here
  LAYOUTS=("cbr(8,3,2) inception(0.1,8) gap" "cbr(8,3) gap dense(16)" "inception(0.1,8) gap")
  EXTRA=(--trainer.accelerator=cpu --trainer.precision=32-true --model.network.name=wrn-10-1
         --data.init_args.train_size=600 --data.init_args.batch_size=64 --model.groupings.probe_epochs=1
         "--model.network.layouts=[\"${LAYOUTS[0]}\", \"${LAYOUTS[1]}\", \"${LAYOUTS[2]}\"]")
  SIZING=(--model wrn-10-1 --batch-size 64 --device cpu --steps 2 --warmup 1)
  BOUNDS="1 1"
fi

# ---- the study so far, alone in a fresh folder; the epochs it was run with
RUN_DIR="$WORK/study"
if [ -f "$STUDY" ] && [ ! -f "$RUN_DIR/study.json" ]; then
  mkdir -p "$RUN_DIR" && cp "$STUDY" "$RUN_DIR/study.json"
  log "resuming from $STUDY"
fi
EPOCHS=${EPOCHS:-$("$PY" - "$RUN_DIR/study.json" <<'PY' 2>/dev/null
import json, sys
for run in json.load(open(sys.argv[1])).get("runs", []):
    for o in run.get("overrides", []):
        if o.startswith("--trainer.max_epochs="):
            print(o.split("=", 1)[1]); sys.exit()
PY
)}
if [ -z "$EPOCHS" ]; then
  log "sizing: ssal bench of the SSAL model and its bare backbone"
  "$PY" -m ssal.cli bench "${SIZING[@]}" --ssal --num-classes 10 --input-size 1 28 28 \
    --layouts "${LAYOUTS[@]}" --no-reference --json "$OUT/sizing.json" > "$WORK/sizing.log" 2>&1 \
    || { log "sizing failed:"; grep -vE "Warning|warn\(" "$WORK/sizing.log" | tail -5 >> "$OUT/log.txt"; }
  # shellcheck disable=SC2086
  [ -f "$OUT/sizing.json" ] && EPOCHS=$("$PY" benchmarks/size_study.py "$OUT/sizing.json" \
    "$TARGET_S" $BOUNDS 2>> "$OUT/log.txt") && tail -1 "$OUT/log.txt"
  if [ -z "$EPOCHS" ]; then EPOCHS=${FALLBACK_EPOCHS:-25}; log "no sizing: $EPOCHS epochs"; fi
fi
log "epochs per run: $EPOCHS"

# ---- the study: what is missing, until the budget is spent
left=$(( BUDGET_S - ($(date +%s) - START) - 20 ))  # 20 s to write the files back
# shellcheck disable=SC2046
"$PY" -m ssal.cli study \
  --config $(for k in baseline ssal-similar ssal-split; do echo "$CONFIGS/wrn-16-8_$k.yaml"; done) \
  --name baseline ssal-similar ssal-split --seeds $SEEDS --out "$RUN_DIR" \
  --budget-minutes "$("$PY" -c "print(max(0.1, $left / 60))")" \
  -- "--trainer.max_epochs=$EPOCHS" ${EXTRA[@]+"${EXTRA[@]}"} > "$OUT/study.txt" 2>&1
rc=$?
log "ssal study: rc=$rc"
grep -E "^run |: \+TR|not started|stopped|runs finished" "$OUT/study.txt" | tee -a "$OUT/log.txt" | tail -12
if [ $rc -ne 0 ]; then
  tail -5 "$OUT/study.txt" >> "$OUT/log.txt"
  for f in "$RUN_DIR"/*/seed*/log.txt; do
    [ -f "${f%log.txt}eval.json" ] || { echo "== $f" >> "$OUT/log.txt"; grep -vE "Warning|warn\(" "$f" | tail -6 >> "$OUT/log.txt"; }
  done
fi
[ -f "$RUN_DIR/study.json" ] && cp "$RUN_DIR/study.json" "$OUT/study.json"
log "done: $OUT/study.json"
