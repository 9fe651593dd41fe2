#!/bin/sh
# Every speed benchmark on one device, side by side, in one go (how the GPU numbers in
# docs/RESULTS.md were taken):
#
#     sh bench/speed_suite.sh MODEL OUTDIR [DEVICE]
#
# MODEL is 'default', a model folder or a Hub id; on a machine without the bundled model, make a
# random copy of its architecture first (speed does not depend on the weights):
#     python bench/random_model.py --like default --out /tmp/smollm2-random
# TRL's GRPOTrainer is included when trl is importable. A failed step is reported and the rest run.
MODEL=${1:?usage: speed_suite.sh MODEL OUTDIR [DEVICE]}
OUTDIR=${2:?usage: speed_suite.sh MODEL OUTDIR [DEVICE]}
DEVICE=${3:-cuda}
PY=${PYTHON:-python3}
mkdir -p "$OUTDIR"
# each step is cut after LIMIT seconds (default 600), so one stuck step cannot cost the rest
LIMIT=${LIMIT:-600}
step() { echo "== $*"; timeout "$LIMIT" "$@" || echo "== FAILED or cut: $*"; }
step $PY bench/matmul_ceiling.py --device "$DEVICE" --out "$OUTDIR/matmul_ceiling.json"
step $PY bench/train_step.py --model "$MODEL" --device "$DEVICE" --configs svf-merged,svf-factored,lora,trl-grpo-lora \
    --batch-size 16 --samples-per-prompt 4 --max-new-tokens 128 --repeats 2 --out "$OUTDIR/train_step.json"
step $PY bench/inference_speed.py --model "$MODEL" --device "$DEVICE" --batches 1 8 32 --new-tokens 32 --repeats 2 \
    --out "$OUTDIR/inference_speed.json"
step $PY bench/inference_speed.py --model "$MODEL" --device "$DEVICE" --dtype bfloat16 --batches 1 8 32 --new-tokens 32 \
    --repeats 2 --out "$OUTDIR/inference_speed_bf16.json"
step $PY bench/scaling.py --device "$DEVICE" --out "$OUTDIR/scaling.json"
