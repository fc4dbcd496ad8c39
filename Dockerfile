# syntax=docker/dockerfile:1
# The gateway as a container: `docker build -t llm-gateway .`, then
#   docker run -p 127.0.0.1:8080:8080 -e GATEWAY_DEMO_KEY=sk-... llm-gateway
# docker-compose.yml runs it behind nginx with Redis (two workers).

# Build stage: install the package and its dependencies into a venv, so the
# runtime image carries neither the source tree nor the build tools.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install .

FROM python:3.11-slim
# XDG_DATA_HOME: the embedded store (no REDIS_URL) keeps keys and usage under
# /data/gateway; mount a volume on /data to keep them across containers.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_DATA_HOME=/data
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /home/gateway --create-home \
        --shell /usr/sbin/nologin gateway \
    && mkdir /data \
    && chown gateway:gateway /data
COPY --from=build /opt/venv /opt/venv
USER gateway
WORKDIR /home/gateway

EXPOSE 8080
# Liveness through the real HTTP stack; slim has no curl, so Python asks.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=3).status != 200)"]
# Inside a container 0.0.0.0 is right: the container's network is the boundary.
# SIGTERM drains streams in flight for server.drain_seconds (30 s by default).
CMD ["gateway", "serve", "--host", "0.0.0.0", "--port", "8080"]
