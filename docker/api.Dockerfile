# syntax=docker/dockerfile:1
# dscm API image, also used by the CPU worker profile: CPython slim, pyvips-binary wheels (no
# system libvips), onnxruntime CPU; no torch, no onnxruntime-gpu, no compilers in the final stage.
# Build from the repository root:  docker build -f docker/api.Dockerfile -t dscm/api:0.1.0 .
# Secrets (database and Redis passwords, API keys) are never build inputs: they come from the
# environment and volumes at run time (docker-compose.yml, .env).
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, service/, models/ and docker/.
COPY . .
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --constraint docker/constraints.txt . "psycopg[binary]" \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'training')))" \
    && if /opt/venv/bin/pip show onnxruntime-gpu >/dev/null 2>&1; then exit 1; fi \
    && mkdir -p /src/models

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 dscm \
    && useradd --system --uid 10001 --gid dscm --create-home --home-dir /home/dscm \
        --shell /usr/sbin/nologin dscm \
    && mkdir -p /data /keys \
    && chown dscm:dscm /data /keys
COPY --from=build /opt/venv /opt/venv
# The shipped models, baked in; mount another folder on /opt/dscm/models to replace them.
COPY --from=build /src/models /opt/dscm/models
COPY docker/healthcheck.py /opt/dscm/healthcheck.py
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DSCM_MODELS_DIR=/opt/dscm/models \
    DSCM_STORAGE_DIR=/data
# Numeric, so that runtimes that check runAsNonRoot can verify it; owns /data on shared volumes.
USER 10001:10001
WORKDIR /home/dscm
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=6s --start-period=30s --retries=3 \
    CMD ["python", "/opt/dscm/healthcheck.py", "http://127.0.0.1:8000/readyz"]
CMD ["dscm", "serve", "--host", "0.0.0.0", "--port", "8000"]
