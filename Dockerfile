# byok-relay image: a slim Python runtime, the relay installed (non-editable) into a venv, run as
# an unprivileged user. `byok-relay serve` applies pending migrations, then serves.
#
#   docker build -t byok-relay .
#   docker run -p 3000:3000 -e ENCRYPTION_SECRET=... -v relaydata:/data byok-relay
#
# Without DATABASE_URL the key store is SQLite at /data/relay.db: mount a volume there or the
# keys die with the container. (No VOLUME instruction: Railway rejects Dockerfiles that use it.)

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Only what the package build needs (the readme is part of the project metadata; setup.py copies
# the browser client into the package).
COPY pyproject.toml setup.py README.md ./
COPY clients/js ./clients/js
COPY relay ./relay
COPY backends ./backends
COPY migrations ./migrations
RUN /opt/venv/bin/pip install ".[otel]"

FROM python:${PYTHON_VERSION}-slim
# Shown by GET /version; `docker build --build-arg RELAY_COMMIT=$(git rev-parse HEAD) ...`.
# Empty means unset (Railway's and Render's own commit variables are used then).
ARG RELAY_COMMIT=""
ARG RELAY_BUILD_TIME=""
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    RELAY_ENV=production \
    RELAY_DEMO=off \
    DB_PATH=/data/relay.db \
    RELAY_COMMIT=${RELAY_COMMIT} \
    RELAY_BUILD_TIME=${RELAY_BUILD_TIME}
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin relay \
    && mkdir /data \
    && chown relay:relay /data
COPY --from=build /opt/venv /opt/venv
WORKDIR /data
USER 10001:10001
EXPOSE 3000
# /readyz: 200 only when the key store answers and the relay is not draining (never rate
# limited); urllib raises (exit 1) on a 503 or no answer. PORT is honoured because platforms
# such as Railway and Render choose it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '3000'), timeout=4)"]
CMD ["byok-relay", "serve"]
