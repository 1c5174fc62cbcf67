# The student worker: one container is one torchrun job (docker/worker-entrypoint.sh).
#
#   docker build -f docker/worker.Dockerfile -t distill-worker .                     # CPU torch
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       -t distill-worker:cuda .                                                      # GPU workers
#   docker run -e TEACHER_ADDRESS=teacher-host:50051 -v runs:/runs distill-worker [section.key=value ...]
#
# WORKER_CONFIG picks the run's YAML (default: the quickstart, the shipped demo student);
# torchrun reads its options from PET_* variables (PET_NPROC_PER_NODE, PET_NNODES, ...).
#
# Build arguments: BASE_IMAGE (any Debian-like image with python3 and its venv module), TORCH_INDEX
# and TORCH_VERSION, and pip's own settings PIP_INDEX_URL (a mirror) and PIP_CERT (the CA bundle of
# a TLS-inspecting proxy, a file put in docker/local/). Wheels put in docker/local/ are found before
# any index: a torch wheel kept on disk is installed without a download.
ARG BASE_IMAGE=python:3.11.11-slim-bookworm

FROM ${BASE_IMAGE} AS runtime
# folders for the volumes, made here so that they are the user's, not root's
RUN useradd --uid 10001 --create-home worker \
    && install -d -o worker -g worker /runs /home/worker/.cache /home/worker/.cache/huggingface
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# The virtual environment is made in its own stage: docker/local/ and pip's settings stay out of
# the image.
FROM runtime AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/tmp/local
COPY docker/local/ /tmp/local/
# torch from the chosen index first (CPU or CUDA build), then the project under a constraint that
# keeps it.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv /opt/venv \
    && pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && pip freeze | grep -i '^torch==' > /opt/torch-constraint.txt
WORKDIR /app
COPY pyproject.toml README.md ./
COPY distill ./distill
COPY teacher_server ./teacher_server
COPY student_worker ./student_worker
RUN pip install --constraint /opt/torch-constraint.txt .

FROM runtime
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY examples ./examples
COPY docker/worker-entrypoint.sh /usr/local/bin/worker-entrypoint
USER 10001
ENV HF_HOME=/home/worker/.cache/huggingface \
    PET_NPROC_PER_NODE=1 \
    OMP_NUM_THREADS=1 \
    WORKER_CONFIG=examples/quickstart.yaml
VOLUME /runs

ENTRYPOINT ["worker-entrypoint"]
