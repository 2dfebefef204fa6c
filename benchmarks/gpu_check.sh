#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) on one GPU, in under 8 minutes:
#   bash benchmarks/gpu_check.sh [--data DIR] [more gpu_check.py options]
# Results: gpu_check.json and gpu_check.md in $OUT (else ./gpu_check_out). The smoke run needs MSD
# Task04_Hippocampus: --data DIR, or MEDCONTEXT_DATA_DIR/Task04_Hippocampus, or ../shared/data/Task04_Hippocampus.
# A hard stop at 470 s keeps the whole check under 8 minutes even if a step hangs; the script's own
# budget (450 s) normally ends it first, with the parts it skipped listed.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
mkdir -p "$out"
data_args=()
if [[ " $* " != *" --data "* ]]; then
  for candidate in "${MEDCONTEXT_DATA_DIR:-}/Task04_Hippocampus" ../shared/data/Task04_Hippocampus shared/data/Task04_Hippocampus; do
    if [[ -f "$candidate/dataset.json" ]]; then data_args=(--data "$candidate"); break; fi
  done
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-python}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia_smi.csv"
"$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available())"
timeout --signal=TERM 470 "$python" benchmarks/gpu_check.py --out "$out" "${data_args[@]}" "$@" 2>&1 | tee "$out/gpu_check.log"
