# syntax=docker/dockerfile:1
# Bulkhead: multi-stage build, pinned base, non-root runtime, no secrets in any layer.
# Configuration (DATABASE_URL, BULKHEAD_SECRETS__MASTER_KEY[_FILE], provider keys, ...) is
# supplied at run time through the environment or mounted files, never at build time.

# ---- builder: resolve the locked dependency set into a self-contained venv -------------
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /src

RUN python -m venv /opt/venv

# Dependencies first, from the lock only, so this layer is cached across code changes.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

# Then the project itself, without re-resolving anything the lock did not pin.
# README* is a glob so a missing README never breaks the build (pyproject names it).
COPY pyproject.toml README* ./
COPY app ./app
RUN pip install --no-cache-dir --no-deps . \
    && python -c "import app, importlib.metadata as m; print('bulkhead', m.version('bulkhead'))"

# ---- runtime: same base, only the venv and the files the service reads -----------------
FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="bulkhead" \
      org.opencontainers.image.description="Multi-tenant RAG backend" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    BULKHEAD_HOST=0.0.0.0 \
    BULKHEAD_PORT=8000 \
    BULKHEAD_DATA_DIR=/var/lib/bulkhead \
    BULKHEAD_TENANTS_DIR=/app/tenants

# Fixed, unprivileged uid/gid (numeric USER below, so runAsNonRoot can verify it).
RUN groupadd --system --gid 10001 bulkhead \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/bulkhead --shell /usr/sbin/nologin bulkhead \
    && mkdir -p /var/lib/bulkhead \
    && chown 10001:10001 /var/lib/bulkhead \
    && chmod 0700 /var/lib/bulkhead

WORKDIR /app

COPY --from=builder /opt/venv /opt/venv
# Read-only inputs stay root-owned: the service user can read but not modify them.
COPY tenants ./tenants
COPY alembic.ini ./
COPY alembic ./alembic

# Mount a volume (or a writable emptyDir) at /var/lib/bulkhead for the Qdrant Edge shard.
USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BULKHEAD_PORT', '8000') + '/healthz', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

ENTRYPOINT ["bulkhead"]
CMD ["serve"]
