# syntax=docker/dockerfile:1
# Accounting: `gpuledger accounting serve` (scheduled ingestion, the API and cost
# metrics) by default; `ingest` and `report` run the same image. With the PostgreSQL
# driver, without torch. Build from the repository root:
#   docker build -f docker/accounting.Dockerfile -t ghcr.io/gpuledger/accounting:0.1.0 .
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
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GPULEDGER_LEDGER=/var/lib/gpuledger/ledger.sqlite
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/gpuledger-*.whl)[postgres]" && rm -rf /wheels
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gpuledger \
    && mkdir -p /var/lib/gpuledger \
    && chown 10001:10001 /var/lib/gpuledger
USER 10001:10001
WORKDIR /var/lib/gpuledger
VOLUME /var/lib/gpuledger
EXPOSE 9404
ENTRYPOINT ["gpuledger", "accounting"]
CMD ["serve"]
