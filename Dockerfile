# syntax=docker/dockerfile:1
# gunicorn-exporter: a small image, non-root by default.
#
#   docker build -t gunicorn-exporter .
#   docker run --rm --pid=host -p 10188:10188 gunicorn-exporter
#
# Privileges (docs/configuration.md#privileges, docs/deployment.md): as the default
# non-root user the exporter sees every gunicorn process, CPU, memory, settings from the
# command line and the accept queues of its own network namespace, but not other users'
# /proc/PID/fd (per-worker connections, fds, heartbeats) nor /dev/kmsg. For those run
# it as UID 0 with only the capabilities they need (Docker gives added capabilities to
# UID 0 only):
#
#   docker run --rm --pid=host --network=host --user 0 --cap-drop ALL \
#     --cap-add SYS_PTRACE --cap-add DAC_READ_SEARCH --cap-add SYSLOG \
#     --read-only gunicorn-exporter
#
# Pin the base by digest for reproducible builds:
#   docker buildx imagetools inspect python:3.11.11-slim-bookworm
# and use FROM python:3.11.11-slim-bookworm@sha256:<digest> in both stages.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python3 -m venv /opt/gunicorn-exporter
COPY pyproject.toml README.md LICENSE ./
COPY exporter ./exporter
RUN /opt/gunicorn-exporter/bin/pip install --no-cache-dir . \
    && /opt/gunicorn-exporter/bin/gunicorn-exporter --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="gunicorn-exporter" \
      org.opencontainers.image.description="Prometheus exporter that watches gunicorn from outside" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/gunicorn-exporter /opt/gunicorn-exporter
RUN useradd --system --uid 10188 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gunicorn-exporter
ENV PATH=/opt/gunicorn-exporter/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10188:10188
EXPOSE 10188
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:10188/-/healthy', timeout=4)"]
ENTRYPOINT ["gunicorn-exporter"]
CMD ["--web.listen-address=:10188"]
