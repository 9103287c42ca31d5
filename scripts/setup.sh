#!/usr/bin/env bash
# Install everything gpuledger and its tests need on a fresh Debian machine (idempotent).
# Debian: prometheus (+promtool), prometheus-alertmanager (+amtool), postgresql,
# victoria-metrics, chromium. Python: torch (CPU build) first, then the project.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  # The packages start system services we do not use; tests start their own.
  for service in prometheus prometheus-alertmanager postgresql victoria-metrics; do
    $SUDO service "$service" stop >/dev/null 2>&1 || true
  done
fi

PYTHON="${PYTHON:-python3}"
# torch first, pinned to the CPU build: a range would pull a CUDA build of several GB.
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install -q "torch==2.13.0"
"$PYTHON" -m pip install -q -e ".[torch,test,postgres,dashboards]"
echo "setup: done"
