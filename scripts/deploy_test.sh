#!/usr/bin/env bash
# make deploy-test: the images built and the compose `cpu` profile run for real, then torn down.
#
#   1. Docker: installed (Debian's docker.io) and dockerd started if need be; needs root.
#   2. A base image made from Debian's mirror (no registry is needed), once: distill-base:bookworm.
#   3. docker/worker.Dockerfile and docker/teacher.Dockerfile (its CPU variant) built on it, with
#      the CPU torch wheel pip finds on this machine and this machine's CA bundle for pip's index.
#   4. docker-compose.yml's `cpu` profile with docker/compose.deploy-test.yml on top (host
#      network): the demo teacher, two workers that train gkd for two steps and stop; the teacher's
#      health check must pass first. Then the workers' containers are recreated and must resume
#      their own runs to step four.
#   5. Checks: /metrics counts the workers' Score calls; on the checkpoints volume each run has
#      its checkpoints, which load with transformers.
# Everything the run made (containers, volumes, networks) is removed at the end, also on failure;
# the images, their build stages and the base stay as a cache (docker image rm
# distill-base:bookworm ... to drop them), and earlier runs' untagged images are removed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
COMPOSE_BIN=${COMPOSE_BIN:-.venv/bin/docker-compose}
BASE_IMAGE=distill-base:bookworm
PROJECT=distill-deploy-test
STEPS=4            # compose.deploy-test.yml: train.steps=4, train.stop_after=2
WORKERS=2
LOCAL=docker/local # the build's extra inputs (docker/local/README.md)
DOCKERD_LOG=${DOCKERD_LOG:-/var/log/dockerd-deploy-test.log}

step() { printf '\n== %s (%ds)\n' "$*" "$SECONDS"; }
fail() { echo "deploy-test FAILED: $*" >&2; exit 1; }

# --- 1. Docker ------------------------------------------------------------------------------------
step "docker"
[ "$(id -u)" = 0 ] || fail "run as root (it installs and starts Docker)"
if ! command -v dockerd >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd (log: $DOCKERD_LOG)"
    nohup dockerd >"$DOCKERD_LOG" 2>&1 &
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || fail "dockerd did not start; see $DOCKERD_LOG"
fi
docker version --format 'engine {{.Server.Version}}'

# --- 2. the base image ----------------------------------------------------------------------------
step "base image $BASE_IMAGE"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE"
    rm -rf "$rootfs"
fi

# --- 3. the images --------------------------------------------------------------------------------
step "images"
# The CPU torch wheel, as pip on this machine finds it (a local version that no index but
# PyTorch's has, so nothing is downloaded if it is not on disk), and pip's CA bundle.
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --dest "$LOCAL" "torch==2.13.0+cpu"
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$LOCAL/ca-certificates.crt"
# (this machine's index, if it names one, else pip's default; the host network, as everywhere here)
build=(docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE"
       ${PIP_INDEX_URL:+--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL"}
       --build-arg PIP_CERT=/tmp/local/ca-certificates.crt)
# image NAME DOCKERFILE ARGS...: its `build` stage tagged NAME-build:deploy-test (so the next
# run's cache is a tagged image, not a dangling one), then the image NAME:deploy-test
image() {
    local name=$1 file=$2 start=$SECONDS
    shift 2
    "${build[@]}" -f "$file" --target build -t "$name-build:deploy-test" "$@" .
    "${build[@]}" -f "$file" -t "$name:deploy-test" "$@" .
    echo "$name image: $((SECONDS - start)) s"
}
image distill-worker docker/worker.Dockerfile \
    --build-arg "TORCH_INDEX=${PIP_INDEX_URL:-https://pypi.org/simple}" --build-arg TORCH_VERSION=2.13.0+cpu
image distill-teacher docker/teacher.Dockerfile \
    --build-arg ENGINE=torch==2.13.0+cpu --build-arg TEACHER_BACKEND=transformers
# Every image this run built is tagged, so the dangling ones are earlier runs' (~3 GB a run that
# changed the code): removed, or repeated runs fill the disk.
docker image prune --force >/dev/null

# --- 4. the stack ---------------------------------------------------------------------------------
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export DEPLOY_TEST_PORT DEPLOY_TEST_HTTP_PORT
DEPLOY_TEST_PORT=$(free_port)
DEPLOY_TEST_HTTP_PORT=$(free_port)
compose() { "$COMPOSE_BIN" -p "$PROJECT" -f docker-compose.yml -f docker/compose.deploy-test.yml --profile cpu "$@"; }
teardown() {
    status=$?
    if [ "$status" != 0 ]; then compose logs --no-color --tail 60 >&2 || true; fi
    step "teardown"
    compose down --volumes --remove-orphans --timeout 10
    exit "$status"
}
trap teardown EXIT

volume="${PROJECT}_checkpoints"
runs() { docker volume inspect --format '{{.Mountpoint}}' "$volume"; }
# Wait for the workers to leave; every one must leave with 0.
wait_workers() {
    mapfile -t ids < <(compose ps --all --quiet worker-cpu)
    [ "${#ids[@]}" = "$WORKERS" ] || fail "expected $WORKERS worker containers, found ${#ids[@]}"
    codes=$(timeout 600 docker wait "${ids[@]}") || fail "the workers did not finish in 600 s"
    [ "$(echo "$codes" | sort -u)" = 0 ] || fail "workers exited with $(echo "$codes" | tr '\n' ' ')"
}
# The run folders on the volume and the last checkpoint of each.
expect_checkpoints() {
    local step_dir
    step_dir=$(printf 'step-%06d' "$1")
    found=$(cd "$(runs)" && ls -d worker-*/ | tr -d / | tr '\n' ' ')
    [ "$found" = "worker-1 worker-2 " ] || fail "run folders on the volume: $found"
    for run in worker-1 worker-2; do
        [ -f "$(runs)/$run/checkpoints/$step_dir/model.safetensors" ] || fail "no $run/checkpoints/$step_dir"
    done
}

step "compose up: the teacher, then $WORKERS workers (two steps each)"
# up returns once the teacher's health check has passed (the workers depend on it) and they started
compose up --detach --scale worker-cpu=$WORKERS teacher-cpu worker-cpu
[ "$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps --quiet teacher-cpu)")" = healthy ] \
    || fail "the teacher is not healthy"
wait_workers
expect_checkpoints 2

step "recreated workers resume their runs"
compose up --detach --force-recreate --no-deps --scale worker-cpu=$WORKERS worker-cpu
wait_workers
expect_checkpoints $STEPS

step "checks"
# Score calls: one per step of each worker (the quickstart's method is gkd, no evaluation here)
scored=$(curl -sf "http://127.0.0.1:$DEPLOY_TEST_HTTP_PORT/metrics" \
         | awk '/^teacher_requests_total\{/ && /rpc="Score"/ && /code="OK"/ {n += $NF} END {print n + 0}')
[ "$scored" = $((WORKERS * STEPS)).0 ] || [ "$scored" = $((WORKERS * STEPS)) ] \
    || fail "/metrics counts $scored Score calls, expected $((WORKERS * STEPS))"
echo "/metrics: $scored Score calls"
"$PY" - "$(runs)" "$STEPS" <<'EOF'
"""Each run's metrics.jsonl has steps 1..N once (the resume kept the first two), and its last
checkpoint loads as a causal LM."""
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

torch.set_num_threads(1)
runs, steps = Path(sys.argv[1]), int(sys.argv[2])
for run in sorted(runs.glob("worker-*/")):
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, steps + 1)), f"{run.name}: steps logged {logged}"
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / f"step-{steps:06d}")
    print(f"{run.name}: steps {logged}, loads as {type(model).__name__}")
EOF
step "passed"
