"""HTTP endpoints: /metrics (the last collection, rendered), /healthz, /readyz.

A scrape renders the state the loop published last; it never calls NVML or the
kubelet. Two scrapes of the same collection reuse one rendering.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from exporter import catalogue as cat
from exporter.loop import DURATION_BUCKETS

log = logging.getLogger(__name__)


class MetricsRenderer:
    """Renders a registry, caching the text per collection generation."""

    def __init__(
        self, registry: CollectorRegistry, generation: Callable[[], int], node: str
    ) -> None:
        self.registry = registry
        self._generation = generation
        self._lock = threading.Lock()
        self._cached: tuple[int, bytes] | None = None
        self.scrape_duration = Histogram(
            cat.EXPORTER_SCRAPE_DURATION.name,
            cat.EXPORTER_SCRAPE_DURATION.help,
            labelnames=cat.EXPORTER_SCRAPE_DURATION.labels,
            buckets=DURATION_BUCKETS,
            registry=registry,
        ).labels(node=node)

    def render(self) -> bytes:
        started = time.perf_counter()
        generation = self._generation()
        with self._lock:
            if self._cached is None or self._cached[0] != generation:
                self._cached = (generation, generate_latest(self.registry))
            body = self._cached[1]
        self.scrape_duration.observe(time.perf_counter() - started)
        return body


class ExporterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        renderer: MetricsRenderer,
        healthy: Callable[[], bool],
        ready: Callable[[], bool],
    ) -> None:
        self.renderer = renderer
        self.healthy = healthy
        self.ready = ready
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = self.server.renderer.render()
            headers = {"Content-Type": CONTENT_TYPE_LATEST}
            if "gzip" in self.headers.get("Accept-Encoding", ""):
                body = gzip.compress(body, compresslevel=1)
                headers["Content-Encoding"] = "gzip"
            self._reply(200, body, headers)
        elif path == "/healthz":
            ok = self.server.healthy()
            self._reply(200 if ok else 503, b"ok\n" if ok else b"collection loop is not running\n")
        elif path == "/readyz":
            ok = self.server.ready()
            self._reply(200 if ok else 503, b"ready\n" if ok else b"no collection finished yet\n")
        elif path == "/":
            self._reply(200, b"gpuledger exporter: see /metrics, /healthz, /readyz\n")
        else:
            self._reply(404, b"not found: try /metrics\n")

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {"Content-Type": "text/plain; charset=utf-8"}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("http " + format, *args)


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `:PORT` or `[::1]:PORT` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {value!r}: expected HOST:PORT, for example 0.0.0.0:9400")
    return host.strip("[]") or "0.0.0.0", int(port)
