"""`gpuledger accounting serve`: hourly ingestion, a read-only HTTP API, cost metrics.

    gpuledger accounting serve --prometheus URL --api-token-file FILE [--listen :9404]

- Ingestion on a schedule: a few minutes after each hour (`--settle-seconds`), every
  hour of the last `--catch-up` (default 7 days) that the ledger lacks is ingested with
  the same code as `gpuledger accounting ingest --resume`, so hours missed while the
  service was down or Prometheus was unreachable are filled in. A failed run is retried
  after `--retry-seconds`.
- The HTTP API is read-only (GET only) and asks for `Authorization: Bearer TOKEN` on
  every path but `/healthz`:
    /allocation (and /allocation/compute): OpenCost-shaped chargeback (accounting/allocation.py)
    /metrics: cost per team and namespace (accounting/costmetrics.py) and the service's own
    /healthz: liveness, no token
  The token comes from `--api-token-file` (re-read when the file changes, so it can be
  rotated) or `$GPULEDGER_API_TOKEN`, and is compared in constant time.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import prometheus_client
import sqlalchemy as sa
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from accounting.allocation import QueryError, allocation_sets, parse_duration, parse_query
from accounting.chargeback import TeamRule
from accounting.costmetrics import CostMetrics
from accounting.ingest import Ingestor, IngestResult, floor_hour, iso
from accounting.ledger import HOUR, Ledger, ingested_hours
from accounting.pricebook import PriceBook
from exporter import catalogue as cat

log = logging.getLogger(__name__)

TOKEN_ENV = "GPULEDGER_API_TOKEN"
MIN_TOKEN_LENGTH = 16
DEFAULT_LISTEN = "0.0.0.0:9404"


class ServeError(RuntimeError):
    """The service cannot start; the message says what to fix."""


# ---------------------------------------------------------------- the token
class BearerToken:
    """The API token, from a file (re-read when it changes) or a fixed value."""

    def __init__(self, value: str | None = None, path: str | Path | None = None) -> None:
        if (value is None) == (path is None):
            raise ValueError("give the token's value or its file, not both")
        self.path = Path(path) if path is not None else None
        self._stamp: tuple[int, int] | None = None
        self._value = _check_token(value, f"${TOKEN_ENV}") if value is not None else ""
        if self.path is not None:
            self._load()

    @classmethod
    def from_sources(cls, path: str | None, environ: dict[str, str] | None = None) -> BearerToken:
        environ = dict(os.environ) if environ is None else environ
        if path:
            return cls(path=path)
        if environ.get(TOKEN_ENV):
            return cls(value=environ[TOKEN_ENV])
        raise ServeError(
            "the API needs a bearer token: write one to a file and pass --api-token-file FILE, "
            f"or set {TOKEN_ENV} (e.g. `openssl rand -hex 32`)"
        )

    def _load(self) -> None:
        assert self.path is not None
        try:
            stat = self.path.stat()
            text = self.path.read_text()
        except OSError as error:
            raise ServeError(
                f"cannot read the API token file {self.path}: {error.strerror}"
            ) from None
        self._value = _check_token(text, str(self.path))
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def current(self) -> str:
        if self.path is not None:
            try:
                stat = self.path.stat()
                if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._load()
            except (OSError, ServeError) as error:
                # Keep the last good token: a half-written file must not lock everyone out.
                log.warning("keeping the previous API token: %s", error)
        return self._value

    def accepts(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self.current().encode())


def _check_token(text: str, where: str) -> str:
    token = text.strip()
    if not token:
        raise ServeError(f"the API token in {where} is empty: put a random token there")
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise ServeError(
            f"the API token in {where} must be at least {MIN_TOKEN_LENGTH} characters without "
            "spaces (e.g. `openssl rand -hex 32`)"
        )
    return token


# ---------------------------------------------------------------- ingestion on a schedule
@dataclass
class RunRecord:
    started: float
    ended: float
    start: int
    end: int
    result: IngestResult | None = None
    error: str = ""


class IngestSchedule:
    """Runs ingestion `settle_seconds` after every hour, catching up on missing hours."""

    def __init__(
        self,
        make_ingestor: Callable[[], Ingestor],
        *,
        catch_up: int = 7 * 86400,
        settle_seconds: int = 300,
        retry_seconds: int = 300,
        on_run: Callable[[RunRecord], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if catch_up < HOUR or catch_up % HOUR:
            raise ValueError("catch_up must be a whole number of hours")
        self.make_ingestor = make_ingestor
        self.catch_up = catch_up
        self.settle_seconds = settle_seconds
        self.retry_seconds = retry_seconds
        self.on_run = on_run
        self.clock = clock
        self.last: RunRecord | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def window(self, now: float) -> tuple[int, int]:
        """[start, end): the catch-up window up to the last complete hour."""
        end = floor_hour(now - self.settle_seconds)
        return end - self.catch_up, end

    def run_once(self) -> RunRecord:
        """One run over the window; hours already in the ledger are skipped."""
        started = self.clock()
        start, end = self.window(started)
        record = RunRecord(started, started, start, end)
        try:
            record.result = self.make_ingestor().run(start, end, resume=True)
        except Exception as error:  # any failure waits for the next try
            record.error = f"{type(error).__name__}: {error}"
            log.error("ingestion of %s .. %s failed: %s", iso(start), iso(end), record.error)
        else:
            log.info(
                "ingested %d hours of %s .. %s (%d already there)",
                record.result.hours_written,
                iso(start),
                iso(end),
                record.result.hours_skipped,
            )
        record.ended = self.clock()
        self.last = record
        if self.on_run:
            self.on_run(record)
        return record

    def next_due(self, now: float, failed: bool) -> float:
        if failed:
            return now + self.retry_seconds
        return floor_hour(now) + HOUR + self.settle_seconds

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ingest-schedule", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            record = self.run_once()
            due = self.next_due(self.clock(), failed=bool(record.error))
            self._stop.wait(max(1.0, due - self.clock()))


# ---------------------------------------------------------------- the service
class AccountingService:
    """What the HTTP API answers, independent of HTTP: allocation queries (cached per
    ledger state) and the metrics registry."""

    def __init__(
        self,
        ledger: Ledger,
        price_book: PriceBook,
        *,
        teams: TeamRule | None = None,
        idle: str = "row",
        cluster: str = "gpuledger",
        clock: Callable[[], float] = time.time,
        cache_size: int = 32,
    ) -> None:
        self.ledger = ledger
        self.price_book = price_book
        self.teams = teams or TeamRule()
        self.idle = idle
        self.cluster = cluster
        self.clock = clock
        self.cost_metrics = CostMetrics()
        # As in the exporter: no `_created` series, which no dashboard reads.
        prometheus_client.disable_created_metrics()
        self.registry = CollectorRegistry()
        self.registry.register(self.cost_metrics)
        self.runs = Counter(
            cat.ACCOUNTING_INGEST_RUNS.name.removesuffix("_total"),
            cat.ACCOUNTING_INGEST_RUNS.help,
            labelnames=cat.ACCOUNTING_INGEST_RUNS.labels,
            registry=self.registry,
        )
        self.last_success = Gauge(
            cat.ACCOUNTING_INGEST_LAST_SUCCESS.name,
            cat.ACCOUNTING_INGEST_LAST_SUCCESS.help,
            registry=self.registry,
        )
        self.durations = Gauge(
            cat.ACCOUNTING_INGEST_DURATION.name,
            cat.ACCOUNTING_INGEST_DURATION.help,
            labelnames=cat.ACCOUNTING_INGEST_DURATION.labels,
            registry=self.registry,
        )
        self.requests = Counter(
            cat.ACCOUNTING_API_REQUESTS.name.removesuffix("_total"),
            cat.ACCOUNTING_API_REQUESTS.help,
            labelnames=cat.ACCOUNTING_API_REQUESTS.labels,
            registry=self.registry,
        )
        self._cache: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def refresh_metrics(self) -> None:
        self.cost_metrics.refresh(
            self.ledger, self.price_book, now=self.clock(), teams=self.teams, idle=self.idle
        )

    def record_run(self, record: RunRecord) -> None:
        """Count a scheduled run and refresh the cost metrics after a good one."""
        if record.error:
            self.runs.labels(result="error").inc()
            return
        self.runs.labels(result="success").inc()
        self.last_success.set(record.ended)
        result = record.result
        assert result is not None
        for part, seconds in (
            ("total", result.seconds_total),
            ("prometheus", result.seconds_prometheus),
            ("kube", result.seconds_kube),
            ("ledger", result.seconds_ledger),
            ("gpuledger", result.seconds_own),
        ):
            self.durations.labels(part=part).set(seconds)
        try:
            self.refresh_metrics()
        except Exception:  # stale metrics beat a dead scheduler
            log.exception("could not refresh the cost metrics")

    def ledger_state(self) -> tuple[int, int, int]:
        """Changes whenever an hour is written: the key that invalidates cached answers."""
        with self.ledger.engine.connect() as conn:
            count, latest, rows = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.max(ingested_hours.c.ingested_at),
                    sa.func.sum(ingested_hours.c.usage_rows),
                )
            ).one()
        return int(count), int(latest or 0), int(rows or 0)

    def allocation(self, params: dict[str, str]) -> dict[str, Any]:
        """The JSON answer of /allocation; raises QueryError for bad parameters."""
        query = parse_query(params, self.clock(), self.teams, self.idle)
        key = (query, self.ledger_state())
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        sets, missing = allocation_sets(
            self.ledger, query, price_book=self.price_book, teams=self.teams, cluster=self.cluster
        )
        answer: dict[str, Any] = {"code": 200, "data": sets}
        if missing:
            answer["warning"] = (
                f"the ledger lacks {len(missing)} hours of the window (first {iso(min(missing))}): "
                "their cost is not included"
            )
        with self._lock:
            self._cache[key] = answer
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return answer


# ---------------------------------------------------------------- HTTP
class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        service: AccountingService,
        token: BearerToken,
        *,
        healthy: Callable[[], bool] = lambda: True,
        public_metrics: bool = False,
    ) -> None:
        self.service = service
        self.token = token
        self.healthy = healthy
        self.public_metrics = public_metrics
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        handler = {
            "/allocation": "allocation",
            "/allocation/compute": "allocation",
            "/metrics": "metrics",
            "/healthz": "healthz",
        }.get(path, "other")
        if handler == "healthz":
            ok = self.server.healthy()
            self._json(handler, 200 if ok else 503, {"status": "ok" if ok else "ingestion stopped"})
            return
        public = handler == "metrics" and self.server.public_metrics
        if not public and not self.server.token.accepts(self.headers.get("Authorization")):
            self._json(
                handler,
                401,
                {"code": 401, "message": "send Authorization: Bearer <the API token>"},
                {"WWW-Authenticate": 'Bearer realm="gpuledger"'},
            )
            return
        if handler == "metrics":
            body = generate_latest(self.server.service.registry)
            self._count(handler, 200)
            self._reply(200, body, {"Content-Type": CONTENT_TYPE_LATEST})
        elif handler == "allocation":
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            try:
                answer = self.server.service.allocation(params)
            except QueryError as error:
                self._json(handler, 400, {"code": 400, "data": None, "message": str(error)})
                return
            except Exception:  # one bad request must not kill the server
                log.exception("allocation query %s failed", url.query)
                self._json(handler, 500, {"code": 500, "data": None, "message": "internal error"})
                return
            self._json(handler, 200, answer)
        else:
            self._json(
                handler,
                404,
                {"code": 404, "message": "not found: try /allocation, /metrics or /healthz"},
            )

    def _method_not_allowed(self) -> None:
        self._json(
            "other", 405, {"code": 405, "message": "read-only API: use GET"}, {"Allow": "GET"}
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = _method_not_allowed

    def _count(self, handler: str, status: int) -> None:
        self.server.service.requests.labels(handler=handler, code=str(status)).inc()

    def _json(
        self, handler: str, status: int, payload: Any, headers: dict[str, str] | None = None
    ) -> None:
        self._count(handler, status)
        body = (json.dumps(payload, allow_nan=False) + "\n").encode()
        self._reply(status, body, {"Content-Type": "application/json", **(headers or {})})

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        log.debug("http " + format, *args)


# ---------------------------------------------------------------- the command
def add_serve(parser: argparse.ArgumentParser) -> None:
    """Arguments of `gpuledger accounting serve` (accounting/cli.py's SUBCOMMANDS)."""
    from accounting import cli

    cli.add_prometheus_options(parser)
    parser.add_argument(
        "--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT of the API (default {DEFAULT_LISTEN})"
    )
    parser.add_argument(
        "--api-token-file",
        default=None,
        help=f"file with the bearer token clients must send (or set ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--public-metrics",
        action="store_true",
        help="serve /metrics without the token (for a Prometheus without credentials)",
    )
    parser.add_argument(
        "--catch-up",
        default="7d",
        help="hours this far back that the ledger lacks are ingested (default 7d)",
    )
    parser.add_argument(
        "--settle-seconds", type=int, default=300, help="ingest an hour this long after it ends"
    )
    parser.add_argument(
        "--retry-seconds", type=int, default=300, help="retry a failed run after this long"
    )
    parser.add_argument(
        "--chunk-hours", type=int, default=72, help="hours asked of Prometheus at once"
    )
    parser.add_argument(
        "--cluster", default="gpuledger", help="cluster name in the API's properties"
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig for owner chains")
    parser.add_argument(
        "--no-kube",
        action="store_true",
        help="do not ask the Kubernetes API; owners come from kube-state-metrics only",
    )
    cli.add_ledger_option(parser)
    cli.add_price_book_option(parser)
    cli.add_team_options(parser)
    parser.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from accounting import cli
    from accounting.ledger import LedgerError
    from accounting.pricebook import PriceBookError, load_price_book
    from accounting.prometheus import PrometheusError
    from exporter.server import parse_listen

    try:
        address = parse_listen(args.listen)
        try:
            catch_up = parse_duration(args.catch_up, "--catch-up")
        except QueryError as error:
            raise ServeError(str(error)) from None
        token = BearerToken.from_sources(args.api_token_file)
        price_book = load_price_book(args.price_book)
        ledger = cli.open_ledger(args)
        client = cli.prometheus_client(args)
    except (ServeError, ValueError, OSError, PriceBookError, LedgerError, PrometheusError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    def make_ingestor() -> Ingestor:
        resolver = None
        if not args.no_kube:
            from accounting.kube import OwnerResolver, api_client_from_config

            api = api_client_from_config(args.kubeconfig)
            resolver = OwnerResolver(api) if api is not None else None
        return Ingestor(
            client,
            ledger,
            price_book,
            resolver=resolver,
            queries=cli.ingest_queries(args),
            chunk_hours=args.chunk_hours,
        )

    service = AccountingService(
        ledger, price_book, teams=cli.team_rule(args), idle=args.idle, cluster=args.cluster
    )
    schedule = IngestSchedule(
        make_ingestor,
        catch_up=catch_up,
        settle_seconds=args.settle_seconds,
        retry_seconds=args.retry_seconds,
        on_run=service.record_run,
    )
    try:
        service.refresh_metrics()  # what the ledger has already, before the first run ends
    except Exception:  # the API still answers; the next run refreshes them
        log.exception("could not compute the cost metrics from the ledger")
    try:
        server = ApiServer(
            address, service, token, healthy=schedule.alive, public_metrics=args.public_metrics
        )
    except OSError as error:
        print(f"error: cannot listen on {args.listen}: {error.strerror}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("stopping on signal %d", signum)
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    schedule.start()
    log.info("accounting API on %s; ingesting from %s", server.url, client.url)
    try:
        server.serve_forever()
    finally:
        schedule.stop()
        server.server_close()
        ledger.dispose()
    return 0
