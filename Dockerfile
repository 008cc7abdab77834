# syntax=docker/dockerfile:1
# One image for every Loanwatch process: the API (the default command), the Celery worker and
# Celery beat (docker-compose.yml gives them their commands).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 loanwatch \
    && useradd --system --uid 10001 --gid loanwatch --no-create-home \
        --home-dir /var/lib/loanwatch --shell /usr/sbin/nologin loanwatch \
    && install -d -o loanwatch -g loanwatch -m 0750 /var/lib/loanwatch

WORKDIR /srv/loanwatch

# The dependencies get their own layer, rebuilt only when pyproject.toml changes. tzdata: the
# slim image may lack the system time-zone database that zoneinfo needs for LOANWATCH_TIMEZONE.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt tzdata \
    && rm /tmp/requirements.txt

# app/migrate.py finds the Alembic scripts at ../migrations relative to the app package, so the
# package is installed in editable mode: `app` imports from this tree, with migrations/ beside it.
COPY . .
RUN pip install --no-cache-dir --no-deps -e . \
    && python -m compileall -q app workers migrations

USER loanwatch
# Run from a folder this user may write: with no LOANWATCH_DATABASE_URL the embedded default
# keeps its SQLite file (./loanwatch.db) here.
WORKDIR /var/lib/loanwatch

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# `serve` applies the migrations, creates an admin key on first start (printed once to the
# log), then runs uvicorn.
CMD ["loanwatch", "serve", "--host", "0.0.0.0", "--port", "8000"]
