#!/usr/bin/env bash
# The whole test suite: lint, then every test (real Prometheus, Alertmanager,
# PostgreSQL, VictoriaMetrics and Chromium included). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
exec "$PYTHON" -m pytest -q -ra "$@"
