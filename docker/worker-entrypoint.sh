#!/bin/sh
# The worker image's entry point: one torchrun job of the student worker.
#   WORKER_CONFIG  the run's YAML (${VAR:-default} inside it reads this environment)
#   RUNS_DIR       where runs go (default /runs); the run is RUNS_DIR/RUN_NAME, and RUN_NAME
#                  defaults to the container's host name, so `--scale worker=N` replicas never
#                  write into one folder. Set RUN_NAME to resume a named run (add --resume).
#   PET_*          torchrun's options: PET_NPROC_PER_NODE, PET_NNODES, PET_RDZV_BACKEND, ...
# Arguments are passed on to the worker: section.key=value overrides, --resume, --preset.
set -eu
exec torchrun -m student_worker --config "${WORKER_CONFIG}" \
    --output-dir "${RUNS_DIR:-/runs}/${RUN_NAME:-$(hostname)}" "$@"
