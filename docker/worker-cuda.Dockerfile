# syntax=docker/dockerfile:1.7
# The GPU worker image: Herd with llama-cpp-python built for CUDA, one container per GPU (compose.yaml).
# Build from the repository root: docker build -f docker/worker-cuda.Dockerfile .
# The host needs the NVIDIA driver and container toolkit (ansible/ installs the toolkit).

# uv installs a pinned, self-contained CPython (python-build-standalone): the CUDA images are Ubuntu's,
# whose python3 is another version than the one Herd is tested with.
FROM ghcr.io/astral-sh/uv:0.5.11 AS uv

FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build
ARG HTTPS_PROXY
ARG HTTP_PROXY
ARG NO_PROXY
# The GPU generations to compile kernels for (a build has no GPU, so "native" cannot work here):
# 75 Turing, 80 A100, 86 Ampere consumer, 89 Ada, 90 Hopper.
ARG CUDA_ARCHITECTURES="75;80;86;89;90"
COPY deploy/ca/ /usr/local/share/ca-certificates/herd/
RUN update-ca-certificates
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential=12.10ubuntu1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF" \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
RUN uv python install 3.11.11 && uv venv --python 3.11.11 /opt/venv
COPY pyproject.toml README.md /src/
COPY herd /src/herd
COPY app /src/app
COPY workers /src/workers
COPY stack /src/stack
COPY cli /src/cli
RUN CMAKE_ARGS="${CMAKE_ARGS} -DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
    uv pip install --python /opt/venv/bin/python "/src[worker]"

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04
COPY deploy/ca/ /usr/local/share/ca-certificates/herd/
# Ubuntu 24.04 images ship a user 1000 "ubuntu"; Herd's own uid matches the API image's, so the shared
# models volume has one owner.
RUN update-ca-certificates \
    && groupadd --system --gid 10001 herd \
    && useradd --system --uid 10001 --gid herd --create-home --home-dir /home/herd herd \
    && mkdir -p /models \
    && chown herd:herd /models
COPY --from=build /opt/python /opt/python
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
