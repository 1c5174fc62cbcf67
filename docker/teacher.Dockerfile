# The teacher server on a GPU box: vLLM (which brings its own CUDA torch) + this project.
#
#   docker build -f docker/teacher.Dockerfile -t distill-teacher .
#   docker run --gpus all -p 50051:50051 -p 8080:8080 -v $PWD/models:/models:ro \
#       -e TEACHER_MODEL=/models/my-teacher distill-teacher          # or TEACHER_MODEL=org/name (hub id)
#
# Every server flag is a TEACHER_* variable (python -m teacher_server --help). The hub cache is
# /home/teacher/.cache/huggingface: mount a volume there so a restart does not download again.
#
# The same file builds a CPU teacher (the transformers backend; compose's `cpu` profile):
#   --build-arg BASE_IMAGE=python:3.11.11-slim-bookworm --build-arg ENGINE=torch==2.13.0+cpu
#   --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu --build-arg TEACHER_BACKEND=transformers
# pip's own settings (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_CERT) are build arguments, and wheels
# put in docker/local/ are found before any index (see docker/worker.Dockerfile).
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04

FROM ${BASE_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# Python from the base where it has one (a python or CPU base), else Ubuntu's (the CUDA base).
# The cache folder is made here, the user's: a named volume mounted on a missing folder is root's.
RUN if ! command -v python3; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3=3.12.* python3-venv=3.12.* \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && useradd --uid 10001 --create-home teacher \
    && install -d -o teacher -g teacher /home/teacher/.cache /home/teacher/.cache/huggingface

# The virtual environment is made in its own stage: docker/local/ and pip's settings stay out of
# the image.
FROM runtime AS build
# the package that brings torch, pinned: vLLM, which chooses torch and the CUDA libraries (never
# the `cpu` extra, which pins the CPU wheel), or torch itself for a CPU teacher
ARG ENGINE=vllm==0.32.0
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_FIND_LINKS=/tmp/local
COPY docker/local/ /tmp/local/
# The project then installs under a constraint that holds torch where the engine put it.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && pip install "${ENGINE}" \
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
# the default model (TEACHER_MODEL=examples/demo-teacher), so the compose demo runs as it is
COPY examples/demo-teacher ./examples/demo-teacher

USER 10001
ARG TEACHER_BACKEND=vllm
ENV HF_HOME=/home/teacher/.cache/huggingface \
    TEACHER_BACKEND=${TEACHER_BACKEND} \
    TEACHER_HOST=0.0.0.0 \
    TEACHER_PORT=50051 \
    TEACHER_HTTP_PORT=8080
EXPOSE 50051 8080

# SERVING only after the warm-up forward pass; loading a large model takes minutes.
HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "-m", "distill.client.probe"]
ENTRYPOINT ["python", "-m", "teacher_server"]
