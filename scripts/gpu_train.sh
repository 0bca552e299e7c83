#!/usr/bin/env bash
# Train both shipped backbones concurrently on one GPU (the device machine), weights to $OUT.
# Usage there: bash scripts/gpu_train.sh <seconds of training each>
set -u
BUDGET=${1:-420}
PY=${PYTHON:-python3}
export DGMOOD_DATA=.data PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 MKL_NUM_THREADS=4
nvidia-smi -L 2>/dev/null; $PY -c "import torch, skorch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'skorch', skorch.__version__)"
$PY scripts/train_pretrained.py fmnist-flow --out "$OUT" --time-budget "$BUDGET" --verbose 1 ${EXTRA:-} > "$OUT/flow.log" 2> "$OUT/flow.err" &
$PY scripts/train_pretrained.py fmnist-hvae --out "$OUT" --time-budget "$BUDGET" --verbose 1 ${EXTRA:-} > "$OUT/hvae.log" 2> "$OUT/hvae.err" &
wait
tail -n 25 "$OUT/flow.log" "$OUT/hvae.log"; grep -v "it/s" "$OUT/flow.err" "$OUT/hvae.err" | tail -n 20
ls -la "$OUT"
