# syntax=docker/dockerfile:1
#
# The comfyui-grpc gateway image: `comfyui-grpc serve` on a slim Python 3.11, as a fixed
# non-root user, with a read-only root filesystem in mind (state and /tmp are volumes).
#
#   docker build -t ghcr.io/comfyui-grpc/comfyui-grpc:0.1.0 .
#
# Reproducible builds: pin the base image by digest (--build-arg
# PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...) and keep SOURCE_DATE_EPOCH fixed (it
# sets file times in the image and makes the installed bytecode hash-checked). The Helm
# chart in helm/comfyui-grpc uses this image by default.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: install the gateway and its server dependencies into a virtualenv ---------
FROM ${PYTHON_IMAGE} AS builder

ARG SOURCE_DATE_EPOCH=0
ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:${PATH}

WORKDIR /src
# Only what the wheel is built from (see .dockerignore).
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY server ./server
COPY clients/python ./clients/python

# pip compiles the bytecode here, once: with SOURCE_DATE_EPOCH set it is hash-checked
# rather than timestamped, so it is reproducible, and it is never rewritten at run time
# (PYTHONDONTWRITEBYTECODE, read-only root). pip itself is not needed at run time.
RUN pip install --no-cache-dir '.[server]' \
    && pip uninstall --yes pip

# --- runtime: the virtualenv on a clean slim Python, nothing else -----------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="comfyui-grpc" \
      org.opencontainers.image.description="gRPC gateway for ComfyUI: typed generation API, live progress streams, outputs stored in S3." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed, numeric non-root user (Kubernetes' runAsNonRoot can check it). The state
# directory is where the chart mounts the volume for the durable job records.
RUN groupadd --system --gid 10001 comfyui-grpc \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin comfyui-grpc \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/comfyui-grpc

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    COMFYUI_GRPC_PORT=50051 \
    COMFYUI_GRPC_METRICS_PORT=9464 \
    COMFYUI_GRPC_STATE_PATH=/var/lib/comfyui-grpc/state.db

USER 10001:10001
WORKDIR /var/lib/comfyui-grpc

# gRPC API (and grpc.health.v1.Health), Prometheus /metrics.
EXPOSE 50051 9464

# Exec form: the gateway is PID 1 and gets SIGTERM directly to drain; no shell involved.
ENTRYPOINT ["/opt/venv/bin/comfyui-grpc"]
CMD ["serve"]
