# GPU image: CUDA runtime, CUDA build of torch, onnxruntime-gpu, `mudjack` as entrypoint.
# Build: docker build -t mudjack .
# Run:   docker run --gpus all -v "$PWD:/work" mudjack run
# Serve: docker run --gpus all -v "$PWD:/work" -e PREFECT_API_URL=http://host:4200/api mudjack serve
# Not built in CI (there is no Docker engine there); `make lint` checks it with hadolint.
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GX_ANALYTICS_ENABLED=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# The base image's tag fixes the distribution; apt versions are left to its security updates.
# git: DVC and GTO work on the mounted project's repository (owned by the host user).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv git \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && git config --system --add safe.directory /work

WORKDIR /opt/mudjack
COPY pyproject.toml README.md ./
COPY mudjack ./mudjack
COPY stages ./stages
COPY pipeline ./pipeline
# PyPI's torch 2.6.0 wheel is the CUDA 12.4 build (matching the base image); onnxruntime-gpu
# 1.20.1 is built for CUDA 12 + cuDNN 9. Never onnxruntime as well: the `gpu` extra has only
# onnxruntime-gpu.
RUN pip install torch==2.6.0 onnxruntime-gpu==1.20.1 \
    && pip install "./[gpu]"

RUN useradd --create-home --uid 1000 mudjack
USER 1000:1000
WORKDIR /work
ENTRYPOINT ["mudjack"]
CMD ["--help"]
