"""Real services for integration tests (the implementation is shared with `gpuledger
demo` and `gpuledger calibrate`, in gpuledger/services.py)."""

from gpuledger.services import (  # noqa: F401 - re-exported for tests
    Alertmanager,
    MissingService,
    PostgreSQL,
    Prometheus,
    VictoriaMetrics,
    backfill_openmetrics,
    free_port,
    http_get,
    http_post,
    require_binary,
    scrape_job,
    wait_until,
)
