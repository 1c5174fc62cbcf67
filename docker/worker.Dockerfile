# The student worker: one container is one torchrun job (docker/worker-entrypoint.sh).
#
#   docker build -f docker/worker.Dockerfile -t distill-worker .                     # CPU torch
#   docker build -f docker/worker.Dockerfile --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 \
#       -t distill-worker:cuda .                                                      # GPU workers
#   docker run -e TEACHER_ADDRESS=teacher-host:50051 -v runs:/runs distill-worker [section.key=value ...]
#
# WORKER_CONFIG picks the run's YAML (default: the quickstart, the shipped demo student);
# torchrun reads its options from PET_* variables (PET_NPROC_PER_NODE, PET_NNODES, ...).
FROM python:3.11.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# torch from the chosen index first (CPU or CUDA build), then the project under a constraint that
# keeps it.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && pip freeze | grep -i '^torch==' > /opt/torch-constraint.txt

WORKDIR /app
COPY pyproject.toml README.md ./
COPY distill ./distill
COPY teacher_server ./teacher_server
COPY student_worker ./student_worker
RUN pip install --constraint /opt/torch-constraint.txt .
COPY examples ./examples
COPY docker/worker-entrypoint.sh /usr/local/bin/worker-entrypoint

# folders for the volumes, made here so that they are the user's, not root's
RUN useradd --uid 10001 --create-home worker \
    && install -d -o worker -g worker /runs /home/worker/.cache /home/worker/.cache/huggingface
USER 10001
ENV HF_HOME=/home/worker/.cache/huggingface \
    PET_NPROC_PER_NODE=1 \
    OMP_NUM_THREADS=1 \
    WORKER_CONFIG=examples/quickstart.yaml
VOLUME /runs

ENTRYPOINT ["worker-entrypoint"]
