# syntax=docker/dockerfile:1
# The load generator: `gpuledger loadgen`, with torch. One rank per process; a
# PyTorchJob or torchrun gives each its rank (loadgen/distributed.py). Build from the
# repository root:
#   docker build -f docker/loadgen.Dockerfile -t ghcr.io/gpuledger/loadgen:0.1.0 .
# PyPI's torch wheel for Linux is the CUDA build (several GB). For a CPU-only image:
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gpuledger ./gpuledger
COPY exporter ./exporter
COPY accounting ./accounting
COPY loadgen ./loadgen
COPY dashboards ./dashboards
COPY alerts ./alerts
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# torch first, from the chosen index, so that the [torch] extra finds it installed.
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" torch; fi \
    && pip install "$(ls /wheels/gpuledger-*.whl)[torch]" \
    && rm -rf /wheels
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin gpuledger
USER 10001:10001
# The timeline (loadgen-timeline.jsonl) is written to the working directory.
WORKDIR /home/gpuledger
ENTRYPOINT ["gpuledger", "loadgen"]
