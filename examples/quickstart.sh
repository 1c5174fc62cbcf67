#!/usr/bin/env bash
# The quickstart in one command: the demo teacher in the background, two workers in one torchrun
# job distilling it into the demo student (gkd, examples/quickstart.yaml), and the teacher stopped
# when the workers finish, fail or are interrupted (Ctrl-C).
#
#   examples/quickstart.sh [section.key=value ...]     overrides, passed on to the workers
#
# NPROC (2) workers; OUT (runs/quickstart) the run folder, resumed when it holds a checkpoint;
# TEACHER_PORT (50051) and the server's other TEACHER_* variables (TEACHER_HTTP_PORT=off, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export TEACHER_PORT=${TEACHER_PORT:-50051}
export TEACHER_ADDRESS=127.0.0.1:$TEACHER_PORT

"$py" -m teacher_server --model examples/demo-teacher --num-threads 1 &
teacher=$!
# EXIT runs on every way out: the workers' end, an error (set -e), Ctrl-C. A background job of a
# script ignores Ctrl-C, so the teacher is stopped here, with SIGTERM (it drains, then exits).
trap 'kill "$teacher" 2>/dev/null || true; wait "$teacher" 2>/dev/null || true' EXIT

until "$py" -m distill.client.probe --address "$TEACHER_ADDRESS" >/dev/null 2>&1; do
    kill -0 "$teacher" 2>/dev/null || { echo "the teacher did not start" >&2; exit 1; }
    sleep 1   # polling the health check while the model loads
done
"$py" -m torch.distributed.run --nproc-per-node "${NPROC:-2}" -m student_worker \
    --config examples/quickstart.yaml --output-dir "${OUT:-runs/quickstart}" --resume "$@"
