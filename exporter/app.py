"""Assemble the exporter: a device source, attribution, the loop, the registry, HTTP.

`Exporter` is what `gpuledger exporter` runs and what tests and the demo start in
process. Building it from options lives in `exporter.cli`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client import CollectorRegistry

from exporter.collector import GpuLedgerCollector
from exporter.dcgm_compat import DcgmCompatCollector
from exporter.loop import Attributor, CollectionLoop, no_attribution
from exporter.server import ExporterHTTPServer, MetricsRenderer
from exporter.sources import DeviceSource
from exporter.state import ExporterState

log = logging.getLogger(__name__)


class Exporter:
    def __init__(
        self,
        source: DeviceSource,
        node: str,
        attributor: Attributor = no_attribution,
        *,
        interval_s: float = 1.0,
        dcgm_compat: bool = False,
        max_pod_series: int = 10_000,
        departed_grace_s: float = 300.0,
        attribution_errors: Callable[[], dict[tuple[str, str], int]] | None = None,
        extra_collectors: Iterable[object] = (),
        after_collect: Iterable[Callable[[ExporterState], None]] = (),
        on_stop: Iterable[Callable[[], None]] = (),
    ) -> None:
        # `_created` series double the histograms' size and no dashboard reads them.
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        self.loop = CollectionLoop(
            source,
            node,
            attributor,
            interval_s=interval_s,
            max_pod_series=max_pod_series,
            departed_grace_s=departed_grace_s,
            attribution_errors=attribution_errors,
            after_collect=list(after_collect),
            registry=self.registry,
        )
        self.registry.register(GpuLedgerCollector(lambda: self.loop.state))
        if dcgm_compat:
            self.registry.register(DcgmCompatCollector(lambda: self.loop.state))
        for collector in extra_collectors:
            self.registry.register(collector)
        self.renderer = MetricsRenderer(self.registry, lambda: self.loop.state.generation, node)
        self.source = source
        self._on_stop = list(on_stop)
        self._http: ExporterHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._http is not None, "serve() first"
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def healthy(self) -> bool:
        return self.loop.alive()

    def ready(self) -> bool:
        return self.loop.state.generation > 0

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Start collecting and serving; returns at once (threads do the work)."""
        self.loop.start()
        self._http = ExporterHTTPServer((host, port), self.renderer, self.healthy, self.ready)
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, name="http", daemon=True
        )
        self._http_thread.start()
        log.info("exporter serving", extra={"url": self.url, "source": self.source.name})

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        self.loop.stop()
        for callback in self._on_stop:
            try:
                callback()
            except Exception as exc:  # stopping must finish whatever fails
                log.warning("error while stopping", extra={"error": repr(exc)})
        self.source.close()

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
