# chatgpt-proxy's container image.
#
#   docker build -t chatgpt-proxy .
#   docker run -d -p 3000:3000 -v chatgpt-proxy-data:/data \
#     -e OPENAI_API_KEYS=sk-... -e CHATGPT_PROXY_ADMIN_KEY=... chatgpt-proxy
#
# Configuration: environment variables alone (see .env.example), or a config.yaml mounted read-only
# and named by CHATGPT_PROXY_CONFIG. SQLite lives in the /data volume; the process runs as an
# unprivileged user and is the container's PID 1 (exec form), so `docker stop` (SIGTERM) reaches it
# and streams in flight finish within server.grace_seconds (give `docker stop -t` as long).
# BASE may be any Debian-like image with python3 and its venv module: deploy/test.sh builds one
# from Debian's packages where no registry is reachable.
ARG BASE=python:3.12-slim

FROM ${BASE} AS build
WORKDIR /src
RUN python3 -m venv /opt/chatgpt-proxy
# The dependencies first, from pyproject.toml alone (with a stand-in package), so that a change
# to the code rebuilds only the last step. The pip cache is a build cache, never a layer.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    mkdir -p src/chatgpt_proxy && touch README.md src/chatgpt_proxy/__init__.py \
 && /opt/chatgpt-proxy/bin/pip install --disable-pip-version-check '.[postgres,redis]' \
 && rm -rf src README.md build
COPY README.md ./
COPY src ./src
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/chatgpt-proxy/bin/pip install --disable-pip-version-check --no-deps --force-reinstall .

# The image that runs: the base and the virtual environment, no sources, no build tools.
FROM ${BASE}
RUN groupadd --system --gid 10001 chatgpt-proxy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin chatgpt-proxy \
 && mkdir /data && chown chatgpt-proxy:chatgpt-proxy /data
COPY --from=build /opt/chatgpt-proxy /opt/chatgpt-proxy
# CHATGPT_PROXY_HOST/PORT/WORKERS/CONFIG are `serve`'s options; the database URL is used when no
# config file is (a config.yaml's own database_url, if relative, also lands in /data: the cwd).
ENV PATH=/opt/chatgpt-proxy/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHATGPT_PROXY_HOST=0.0.0.0 \
    CHATGPT_PROXY_PORT=3000 \
    CHATGPT_PROXY_DATABASE_URL=sqlite:////data/chatgpt-proxy.db
WORKDIR /data
VOLUME /data
USER 10001:10001
EXPOSE 3000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CHATGPT_PROXY_PORT', '3000'), timeout=4)"]
ENTRYPOINT ["chatgpt-proxy"]
CMD ["serve"]
