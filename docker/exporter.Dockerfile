# syntax=docker/dockerfile:1
# The node exporter: `gpuledger exporter`, without torch (the exporter never imports
# it). Build from the repository root:
#   docker build -f docker/exporter.Dockerfile -t ghcr.io/gpuledger/exporter:0.1.0 .
#
# The image runs as uid 10001. On Kubernetes the DaemonSet overrides this with
# runAsUser: 0, because the kubelet's PodResources socket admits only root; see the
# comment in deploy/base/exporter/daemonset.yaml and docs/install.md.
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
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# The package alone: no [torch] extra.
RUN pip install /wheels/gpuledger-*.whl && rm -rf /wheels
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin gpuledger
USER 10001:10001
EXPOSE 9400
ENTRYPOINT ["gpuledger", "exporter"]
