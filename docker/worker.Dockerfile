# syntax=docker/dockerfile:1
# dscm GPU worker image: NVIDIA CUDA runtime + cuDNN base, onnxruntime-gpu (the [gpu] extra of
# pyproject.toml) instead of onnxruntime, one solo Celery worker per GPU, non-root.
# DSCM_INFERENCE=cuda: a worker whose CUDA provider does not load fails its jobs with a
# model_error naming the cause instead of staining 50x slower on the CPU (service/core/backends.py).
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t dscm/worker:0.1.0 .
# The CUDA major version of the base must be the one onnxruntime-gpu is built for: 1.31.x wants
# CUDA 13 + cuDNN 9 (its "cuda" extra requires nvidia-cuda-runtime~=13.0), i.e. an NVIDIA driver
# >= 580 on the host. Change both together (docs/operations.md, "Upgrade dependencies").
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Ubuntu's python3 (3.12 on 24.04); apt versions float with the pinned base image's release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, service/, models/ and docker/.
COPY . .
# onnxruntime (CPU) is a core dependency and onnxruntime-gpu ships the same "onnxruntime" package:
# with both installed, whichever came last owns the files. Remove the CPU one, then reinstall the
# GPU one over the files it shared, and prove the CUDA provider is compiled in (no GPU needed).
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --constraint docker/constraints.txt ".[gpu]" "psycopg[binary]" \
    && /opt/venv/bin/pip uninstall -y onnxruntime \
    && /opt/venv/bin/pip install --constraint docker/constraints.txt --force-reinstall --no-deps onnxruntime-gpu \
    && /opt/venv/bin/python -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
    && /opt/venv/bin/python -c "from service.core.backends import choose_backend as c; print(c('cuda', 'fp16'))" \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'training')))" \
    && mkdir -p /src/models

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# The venv's interpreter is the base's /usr/bin/python3.12, so the runtime needs python3 only.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dscm \
    && useradd --system --uid 10001 --gid dscm --create-home --home-dir /home/dscm \
        --shell /usr/sbin/nologin dscm \
    && mkdir -p /data \
    && chown dscm:dscm /data
COPY --from=build /opt/venv /opt/venv
# The shipped models, baked in; mount another folder on /opt/dscm/models to replace them.
COPY --from=build /src/models /opt/dscm/models
COPY docker/healthcheck.py /opt/dscm/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    DSCM_MODELS_DIR=/opt/dscm/models \
    DSCM_INFERENCE=cuda \
    DSCM_BATCH_SIZE=4 \
    DSCM_STORAGE_DIR=/data \
    DSCM_WORKER_METRICS_PORT=9100
# Numeric, so that runtimes that check runAsNonRoot can verify it; owns /data on shared volumes.
USER 10001:10001
WORKDIR /home/dscm
EXPOSE 9100
# Liveness through the metrics thread: a solo worker cannot answer Celery pings mid-slide.
HEALTHCHECK --interval=15s --timeout=6s --start-period=60s --retries=3 \
    CMD ["python", "/opt/dscm/healthcheck.py", "http://127.0.0.1:9100/metrics"]
# SIGTERM (docker stop) is Celery's warm shutdown: the running job stops at the next tile and is
# queued again; compose gives it stop_grace_period before SIGKILL.
STOPSIGNAL SIGTERM
CMD ["dscm", "worker", "--pool", "solo", "--concurrency", "1"]
