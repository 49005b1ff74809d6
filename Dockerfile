# GPU image: CUDA runtime, CUDA build of torch, onnxruntime-gpu, `mudjack` as entrypoint.
# Build: docker build -t mudjack .   Run: docker run --gpus all -v "$PWD:/work" mudjack run
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GX_ANALYTICS_ENABLED=false \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv git \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /opt/mudjack
COPY pyproject.toml README.md ./
COPY mudjack ./mudjack
COPY stages ./stages
COPY pipeline ./pipeline
# CUDA torch from PyPI's default index, onnxruntime-gpu instead of onnxruntime.
RUN pip install --no-cache-dir "torch>=2.4" \
    && pip install --no-cache-dir ".[gpu]"

RUN useradd --create-home --uid 1000 mudjack
USER mudjack
WORKDIR /work
ENTRYPOINT ["mudjack"]
CMD ["--help"]
