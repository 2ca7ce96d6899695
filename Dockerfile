# shopstream worker image.
#
#   docker build -t shopstream:local .
#   docker run --rm shopstream:local --help
#
# Two stages: the builder installs the project and its pinned dependencies
# (every one ships a manylinux wheel for CPython 3.11, so no compiler is
# needed) into /opt/venv; the runtime stage copies only that virtualenv, so
# the source tree and pip's caches never reach the final image.

# The dashboard's chart library from the npm registry (the worker serves it; no CDN).
FROM node:22-slim AS assets
WORKDIR /a
RUN npm pack --silent uplot@1.6.32 && tar -xzf uplot-1.6.32.tgz

FROM python:3.11-slim AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml constraints.txt ./
COPY shopstream/ shopstream/
COPY schemas/ schemas/
COPY streams/ streams/
COPY online_models/ online_models/
COPY serving/ serving/
COPY ops/ ops/
COPY --from=assets /a/package/dist/uPlot.iife.min.js /a/package/dist/uPlot.min.css ops/static/vendor/
RUN pip install -c constraints.txt .


FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    SHOPSTREAM_WEB_HOST=0.0.0.0 \
    SHOPSTREAM_DATA_DIR=/var/lib/shopstream/worker \
    SHOPSTREAM_LAKE_DIR=/var/lib/shopstream/lake

RUN groupadd --system --gid 10001 shopstream \
    && useradd --system --uid 10001 --gid shopstream --home-dir /var/lib/shopstream \
       --shell /usr/sbin/nologin shopstream \
    && mkdir -p /var/lib/shopstream/worker /var/lib/shopstream/lake \
    && chown -R shopstream:shopstream /var/lib/shopstream

COPY --from=builder /opt/venv /opt/venv

USER shopstream
WORKDIR /var/lib/shopstream

# Faust web server: /healthz and /metrics.
EXPOSE 6066

# slim has no curl; python's urllib raises (exit 1) on refusal, timeout or a non-2xx answer.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6066/healthz', timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["shopstream"]
CMD ["worker"]
