# syntax=docker/dockerfile:1.7
# The CPU worker image (also the store worker's): Herd with llama-cpp-python built for the CPU.
# Build from the repository root: docker build -f docker/worker-cpu.Dockerfile .

# The full image carries gcc and make; cmake comes from PyPI through llama-cpp-python's build backend.
FROM python:3.11.11-bookworm AS build
ARG HTTPS_PROXY
ARG HTTP_PROXY
ARG NO_PROXY
COPY deploy/ca/ /usr/local/share/ca-certificates/herd/
RUN update-ca-certificates
# GGML_NATIVE=OFF: the image runs on CPUs other than the build machine's. No OpenMP: the slim runtime
# image has no libgomp, and the worker sets its thread count itself (HERD_THREADS).
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF"
RUN python -m venv /opt/venv
COPY pyproject.toml README.md /src/
COPY herd /src/herd
COPY app /src/app
COPY workers /src/workers
COPY stack /src/stack
COPY cli /src/cli
RUN /opt/venv/bin/pip install "/src[worker]"

FROM python:3.11.11-slim-bookworm
COPY deploy/ca/ /usr/local/share/ca-certificates/herd/
RUN update-ca-certificates \
    && groupadd --system --gid 10001 herd \
    && useradd --system --uid 10001 --gid herd --create-home --home-dir /home/herd herd \
    && mkdir -p /models \
    && chown herd:herd /models
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh docker/healthcheck.py /opt/herd/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OLLAMA_MODELS=/models
WORKDIR /home/herd
USER 10001:10001
EXPOSE 9400
ENTRYPOINT ["/opt/herd/entrypoint.sh"]
CMD ["herd", "worker"]
