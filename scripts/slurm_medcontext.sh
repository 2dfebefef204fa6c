#!/bin/bash
# MedContext data-parallel training on SLURM: N nodes x G GPUs, one torchrun agent per node.
#
#   DATA=/shared/Synapse sbatch scripts/slurm_medcontext.sh
#   sbatch --nodes 4 --export=ALL,CONFIG=configs/brats21_unetr.yaml,DATA=/shared/BraTS2021,RUN_DIR=/shared/runs/brats21 \
#       scripts/slurm_medcontext.sh
#
# - The run folder must be on a filesystem every node mounts at the same path (rank 0 writes
#   the checkpoints, every rank reads last.pt on --resume).
# - SLURM sends SIGTERM 5 minutes before the time limit (--signal); torchrun forwards it to its
#   workers, which finish the current step, agree to stop, and rank 0 writes last.pt. torchrun
#   waits --shutdown-timeout seconds for that before it kills them: keep it above one step plus
#   one checkpoint write. The job then requeues itself and the next start resumes from last.pt.
# - train.batch_size is per GPU. The effective batch (batch_size x data.num_samples x GPUs) is
#   printed at start and saved as train.effective_batch_size; with LR_SCALING=linear or sqrt the
#   learning rate follows it from optim.base_batch_size. A resume must use the same GPU count.
#
#SBATCH --job-name=medcontext
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=medcontext-%x-%j.out

set -euo pipefail

CONFIG=${CONFIG:-configs/synapse_unetr.yaml}
DATA=${DATA:?set DATA to the dataset folder (on a shared filesystem)}
RUN_DIR=${RUN_DIR:-runs/${SLURM_JOB_NAME:-medcontext}}
LR_SCALING=${LR_SCALING:-none}          # none | linear | sqrt
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
MAX_REQUEUES=${MAX_REQUEUES:-20}
PYTHON=${PYTHON:-python}

threads=$(( ${SLURM_CPUS_PER_TASK:-8} / GPUS_PER_NODE ))
export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))

# "last logged step, total steps" of the run ("0 0" before its first start)
progress() {
    "$PYTHON" -c '
import sys
from pathlib import Path
from medcontext.engine.config import load_config
from medcontext.engine.training_log import read_metrics
run = Path(sys.argv[1])
if not (run / "config.yaml").is_file():
    print(0, 0)
else:
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl", "train")]
    print(steps[-1] if steps else 0, load_config(run / "config.yaml").train.steps)
' "$RUN_DIR"
}

RESUME=()
if [ -f "$RUN_DIR/last.pt" ]; then
    RESUME=(--resume)
fi
read -r START_STEP _ < <(progress)
echo "medcontext: $SLURM_JOB_NUM_NODES node(s) x $GPUS_PER_NODE GPU(s), rendezvous $MASTER_ADDR:$MASTER_PORT," \
     "run $RUN_DIR from step $START_STEP ${RESUME[*]:-}"

set +e
srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
    --nnodes "$SLURM_JOB_NUM_NODES" \
    --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_id "$SLURM_JOB_ID" \
    --rdzv_backend c10d \
    --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
    --shutdown-timeout 240 \
    -m medcontext train \
        --config "$CONFIG" \
        --data "$DATA" \
        --out "$RUN_DIR" \
        --set optim.lr_scaling="$LR_SCALING" \
        --no-progress \
        "${RESUME[@]}"
status=$?
set -e

read -r END_STEP TOTAL_STEPS < <(progress)
if [ "$TOTAL_STEPS" -gt 0 ] && [ "$END_STEP" -ge "$TOTAL_STEPS" ]; then
    echo "medcontext: run finished at step $END_STEP"
    exit 0
fi
# Stopped before the end (the time limit: SIGTERM, last.pt written). Requeue to resume, but only
# when this start made progress, so that a run that fails at the same place does not loop.
if [ "$END_STEP" -gt "$START_STEP" ] && [ -f "$RUN_DIR/last.pt" ] && [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUES" ]; then
    echo "medcontext: stopped at step $END_STEP of $TOTAL_STEPS (torchrun exit status $status); requeueing to resume"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
echo "medcontext: stopped at step $END_STEP of $TOTAL_STEPS without progress (torchrun exit status $status); not requeued" >&2
exit "$status"
