# The teacher server on a GPU box: vLLM (which brings its own CUDA torch) + this project.
#
#   docker build -f docker/teacher.Dockerfile -t distill-teacher .
#   docker run --gpus all -p 50051:50051 -p 8080:8080 -v $PWD/models:/models:ro \
#       -e TEACHER_MODEL=/models/my-teacher distill-teacher          # or TEACHER_MODEL=org/name (hub id)
#
# Every server flag is a TEACHER_* variable (python -m teacher_server --help). The hub cache is
# /home/teacher/.cache/huggingface: mount a volume there so a restart does not download again.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ARG VLLM_VERSION=0.32.0
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH

# The cache folder is made here, the user's: a named volume mounted on a missing folder is root's.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3=3.12.* python3-venv=3.12.* \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && useradd --uid 10001 --create-home teacher \
    && install -d -o teacher -g teacher /home/teacher/.cache /home/teacher/.cache/huggingface

# vLLM first: it chooses torch and the CUDA libraries. The project then installs under a
# constraint that holds torch where vLLM put it (never the `cpu` extra, which pins the CPU wheel).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN pip install "vllm==${VLLM_VERSION}" \
    && pip freeze | grep -i '^torch==' > /opt/torch-constraint.txt

WORKDIR /app
COPY pyproject.toml README.md ./
COPY distill ./distill
COPY teacher_server ./teacher_server
COPY student_worker ./student_worker
RUN pip install --constraint /opt/torch-constraint.txt .
# the default model (TEACHER_MODEL=examples/demo-teacher), so the compose demo runs as it is
COPY examples/demo-teacher ./examples/demo-teacher

USER 10001
ENV HF_HOME=/home/teacher/.cache/huggingface \
    TEACHER_BACKEND=vllm \
    TEACHER_HOST=0.0.0.0 \
    TEACHER_PORT=50051 \
    TEACHER_HTTP_PORT=8080
EXPOSE 50051 8080

# SERVING only after the warm-up forward pass; loading a large model takes minutes.
HEALTHCHECK --interval=15s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python", "-m", "teacher_server.probe"]
ENTRYPOINT ["python", "-m", "teacher_server"]
