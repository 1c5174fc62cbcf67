#!/bin/sh
# The worker image's entry point: one torchrun job of the student worker.
#   WORKER_CONFIG  the run's YAML (${VAR:-default} inside it reads this environment)
#   RUNS_DIR       where runs go (default /runs)
#   RUN_NAME       the run's folder under RUNS_DIR. Default: worker-N for the first N that no
#                  running container holds, so that `--scale worker=N` replicas never write into
#                  one folder and a restarted or recreated container takes a run back (with
#                  --resume it continues it). A container's host name would not do: it changes
#                  when the container is recreated, and on the host network all are the same.
#   PET_*          torchrun's options: PET_NPROC_PER_NODE, PET_NNODES, PET_RDZV_BACKEND, ...
# Arguments are passed on to the worker: section.key=value overrides, --resume, --preset.
set -eu
runs="${RUNS_DIR:-/runs}"
if [ -z "${RUN_NAME:-}" ]; then
    # worker-N is held by a lock on RUNS_DIR/worker-N.lock, open on descriptor 9 for as long as
    # the job runs (exec hands the descriptor to torchrun); the kernel drops it when the job ends
    n=1
    while exec 9>"$runs/worker-$n.lock" && ! flock --nonblock 9; do n=$((n + 1)); done
    RUN_NAME="worker-$n"
fi
exec torchrun -m student_worker --config "${WORKER_CONFIG}" --output-dir "$runs/$RUN_NAME" "$@"
