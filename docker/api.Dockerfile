# syntax=docker/dockerfile:1.7
# The API image: FastAPI under gunicorn, no llama_cpp (the API never imports it; see pyproject's `worker` extra).
# Build from the repository root: docker build -f docker/api.Dockerfile .

FROM python:3.11.11-slim-bookworm AS build
# Docker passes these through to RUN without persisting them in the image; declared here for the reader.
ARG HTTPS_PROXY
ARG HTTP_PROXY
ARG NO_PROXY
# A TLS-intercepting corporate proxy needs its CA trusted before pip can download anything.
COPY deploy/ca/ /usr/local/share/ca-certificates/herd/
RUN update-ca-certificates
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY herd /src/herd
COPY app /src/app
COPY workers /src/workers
COPY stack /src/stack
COPY cli /src/cli
# No extra: the base dependencies only (fastapi, gunicorn, redis, rq, ...), versions from pyproject.toml.
RUN /opt/venv/bin/pip install /src \
    && if /opt/venv/bin/python -c "import llama_cpp" 2>/dev/null; then echo "llama_cpp must not be in the API image" >&2; exit 1; fi

FROM python:3.11.11-slim-bookworm
COPY deploy/ca/ /usr/local/share/ca-certificates/herd/
RUN update-ca-certificates \
    && groupadd --system --gid 10001 herd \
    && useradd --system --uid 10001 --gid herd --create-home --home-dir /home/herd herd \
    && mkdir -p /models /run/herd/prometheus \
    && chown herd:herd /models /run/herd/prometheus
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh docker/healthcheck.py /opt/herd/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OLLAMA_MODELS=/models
WORKDIR /home/herd
USER 10001:10001
EXPOSE 11435
ENTRYPOINT ["/opt/herd/entrypoint.sh"]
CMD ["gunicorn", "--worker-class", "uvicorn_worker.UvicornWorker", "--bind", "0.0.0.0:11435", "app.main:create_app()"]
