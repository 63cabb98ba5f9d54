# One image for every process: `app serve` (the default command), `app worker` and
# `app migrate` (fly.toml's release_command, the Procfile's release line). Runs as a non-root
# user. docs/deploy.md has the details.
#
#   docker build -t pgfirst .
#   docker build -t pgfirst --build-arg BASE_IMAGE=registry.example.com/python:3.12-slim .
#   docker build -t pgfirst --secret id=extra_ca,src=/etc/ssl/certs/ca-certificates.crt .
#
# BASE_IMAGE: any Debian-like image with Python >= 3.11 and its venv module (the official
# python slim images; Debian's python3-venv). The build and runtime stages share it, so the
# virtualenv's interpreter path is valid in both.
# extra_ca (optional build secret): PEM certificates trusted, on top of the base image's, by
# the steps that download from PyPI — for builds behind a TLS-intercepting proxy. It is
# mounted only into those steps and never lands in a layer.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /app
# Dependencies first, so a code change does not download them again.
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=secret,id=extra_ca \
    if [ -s /run/secrets/extra_ca ]; then \
        cat $(find /etc/ssl/certs -maxdepth 1 -name ca-certificates.crt 2>/dev/null) \
            /run/secrets/extra_ca >/tmp/ca.pem; \
        export SSL_CERT_FILE=/tmp/ca.pem PIP_CERT=/tmp/ca.pem; \
    fi; \
    python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --quiet "uv==${UV_VERSION}" \
    && /opt/uv/bin/uv sync --frozen --no-dev --no-install-project \
    && rm -f /tmp/ca.pem
COPY app ./app
COPY migrations ./migrations
# Editable: the code runs from /app/app, next to the /app/migrations that `app migrate`
# reads. Installing the project fetches its build backend, hence the secret again. The
# runtime user cannot write __pycache__ next to root-owned sources: compiled here, or every
# start would compile the app again.
RUN --mount=type=secret,id=extra_ca \
    if [ -s /run/secrets/extra_ca ]; then \
        cat $(find /etc/ssl/certs -maxdepth 1 -name ca-certificates.crt 2>/dev/null) \
            /run/secrets/extra_ca >/tmp/ca.pem; \
        export SSL_CERT_FILE=/tmp/ca.pem; \
    fi; \
    /opt/uv/bin/uv sync --frozen --no-dev \
    && rm -f /tmp/ca.pem \
    && /app/.venv/bin/python -m compileall -q app migrations

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin pgfirst
WORKDIR /app
# Owned by root and read-only to the app: a compromised process cannot rewrite its code.
COPY --from=build --chown=root:root /app /app
ENV PATH="/app/.venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    ENV=production \
    HOST=0.0.0.0 \
    PORT=8080 \
    LOG_FORMAT=json
USER 10001:10001
EXPOSE 8080
# No HEALTHCHECK: the same image runs the worker, which serves no HTTP. The platform checks
# GET /healthz on web processes (fly.toml [[http_service.checks]]).
CMD ["app", "serve"]
