#!/usr/bin/env bash
# E18 (docs/experiments.md): composition RL from a given base at GPU scale, beside a control that
# pretrains the same base for the same wall time, all three sampled on the eval prompts.
#   OUT=/tmp/e18 bash experiments/gpu_composition.sh BASE_MODEL [PARAMS]
# It reads the prompt corpora from data/prompts (`dvc repro prompts`; carry them to a lent machine).
# Each stage's outputs are packed into $OUT/<stage>.tar as soon as it ends (a lent machine returns
# only a limited number of files, and what finished must survive a lease that runs out).
# Unpack them and evaluate on any machine:
#   for t in $OUT/*.tar; do tar -xf $t -C DIR; done
#   python -m stages.evaluate --params PARAMS --samples DIR/samples --metrics DIR/eval.json --plots DIR/plots
set -eu
BASE=$1; PARAMS=${2:-experiments/gpu_composition.yaml}; OUT=${OUT:-/tmp/e18}
WORK=$(mktemp -d); mkdir -p "$OUT" "$WORK/samples"
source bench/device_env.sh  # the pinned wheels from .whl/ where the machine lacks them
stage() {  # stage NAME MODULE ARGS... ; then pack what the stage wrote
  local name=$1 module=$2 t0=$SECONDS; shift 2
  python3 -m "$module" "$@" --params "$PARAMS" --no-progress
  echo "[$name: $((SECONDS - t0)) s]"
}
pack() { tar -C "$WORK" -cf "$OUT/$1.tar" "${@:2}"; }
stage sample_base stages.sample --model "$BASE" --out "$WORK/samples/base" --name sample_base
pack sample_base samples/base
stage finetune stages.finetune --base "$BASE" --out "$WORK/rl" --metrics "$WORK/train.json" --plots "$WORK/train.csv" \
  --budget "$WORK/budget.json" --checkpoints "$WORK/checkpoints"
pack finetune rl train.json train.csv budget.json
stage sample_rl stages.sample --model "$WORK/rl" --out "$WORK/samples/rl" --name sample_rl
pack sample_rl samples/rl
stage control stages.control --base "$BASE" --budget "$WORK/budget.json" --out "$WORK/control" \
  --metrics "$WORK/control.json" --checkpoints "$WORK/checkpoints"
pack control control control.json
stage sample_control stages.sample --model "$WORK/control" --out "$WORK/samples/control" --name sample_control
pack sample_control samples/control
