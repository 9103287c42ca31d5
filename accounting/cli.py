"""`gpuledger accounting ...`: ingest usage into the ledger, write monthly reports.

    gpuledger accounting ingest --prometheus URL [--from T --to T] [--ledger URL]
                                [--price-book FILE] [--resume]
    gpuledger accounting report --month YYYY-MM --out DIR [--ledger URL] [--idle share]
    gpuledger accounting serve --prometheus URL [--listen HOST:PORT] [--api-token-file F]

The option helpers (`add_ledger_option`, `add_price_book_option`, `add_team_options`,
`add_prometheus_options`) are shared by every subcommand, `serve` included.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TextIO

from accounting.chargeback import PeriodError, TeamRule
from accounting.ingest import (
    IngestError,
    Ingestor,
    IngestQueries,
    IngestResult,
    iso,
    parse_time,
    plan_range,
)
from accounting.ledger import Ledger, LedgerError, default_ledger_url
from accounting.pricebook import DEFAULT_PRICE_BOOK, PriceBookError, load_price_book
from accounting.prometheus import PrometheusClient, PrometheusError
from accounting.service import add_serve

# Errors a user can fix; each message says how. Exit 2 for bad input, 1 for the rest.
_BAD_INPUT = (PriceBookError, PeriodError, IngestError, OSError)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


# ---------------------------------------------------------------- shared options
def add_ledger_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger",
        default=None,
        help="ledger: an SQLite file path or an SQLAlchemy URL (postgresql+psycopg2://...); "
        f"default $GPULEDGER_LEDGER or ./{default_ledger_url()}",
    )


def add_price_book_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--price-book",
        default=None,
        help=f"price book YAML (docs/cost-model.md); default the example {DEFAULT_PRICE_BOOK.name}",
    )


def add_team_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--team-label",
        action="append",
        default=None,
        metavar="KEY",
        help="label naming a team, looked up on the pod, its job, then its namespace "
        "(repeat; default: team, cost-center)",
    )
    parser.add_argument(
        "--team-fallback",
        choices=["unlabelled", "namespace"],
        default="unlabelled",
        help="team of work without a team label: __unlabelled__ or the namespace's name",
    )
    parser.add_argument(
        "--idle",
        choices=["row", "share"],
        default="row",
        help="idle capacity as its own __idle__ row, or shared out in proportion",
    )


def add_prometheus_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prometheus",
        required=True,
        metavar="URL",
        help="Prometheus-compatible query API (Prometheus, Thanos, Mimir, VictoriaMetrics)",
    )
    parser.add_argument(
        "--bearer-token-file",
        default=None,
        help="file with a bearer token sent to the query API",
    )
    parser.add_argument(
        "--prometheus-retries",
        type=int,
        default=3,
        help="retries of a failed query (connection errors, 429, 5xx), with backoff",
    )
    parser.add_argument(
        "--prometheus-compression",
        action="store_true",
        help="ask for gzip-compressed answers: for a server across a slow network. In a "
        "cluster, uncompressed answers (the default) cost Prometheus less CPU",
    )
    parser.add_argument(
        "--queries",
        choices=("raw", "recorded"),
        default="raw",
        help="raw: the exporter's per-device counters (any Prometheus); recorded: gpuledger's "
        "accounting recording rules (group gpuledger.accounting.rules), one series per pod, "
        "several times cheaper for Prometheus; they must have run over the whole range",
    )


def team_rule(args: argparse.Namespace) -> TeamRule:
    labels = tuple(args.team_label) if args.team_label else TeamRule().labels
    return TeamRule(labels=labels, fallback=args.team_fallback)


def ingest_queries(args: argparse.Namespace) -> IngestQueries:
    return IngestQueries.recorded() if args.queries == "recorded" else IngestQueries()


def open_ledger(args: argparse.Namespace) -> Ledger:
    return Ledger(args.ledger).create()


def prometheus_client(args: argparse.Namespace) -> PrometheusClient:
    headers = {}
    if args.bearer_token_file:
        with open(args.bearer_token_file) as f:
            headers["Authorization"] = f"Bearer {f.read().strip()}"
    return PrometheusClient(
        args.prometheus,
        headers=headers,
        retries=args.prometheus_retries,
        compression=args.prometheus_compression,
    )


# ---------------------------------------------------------------- ingest
def _add_ingest(parser: argparse.ArgumentParser) -> None:
    add_prometheus_options(parser)
    parser.add_argument(
        "--from",
        dest="start",
        default=None,
        help="first hour (ISO 8601 UTC, unix seconds or now-6h); default: after the "
        "ledger's last hour, or the start of this month",
    )
    parser.add_argument(
        "--to", dest="end", default=None, help="end (exclusive); default: the last complete hour"
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip hours already in the ledger (after a crash)"
    )
    parser.add_argument(
        "--chunk-hours", type=_positive, default=72, help="hours asked of Prometheus at once"
    )
    parser.add_argument(
        "--settle-seconds",
        type=int,
        default=300,
        help="an hour is complete this long after it ends (late scrapes)",
    )
    parser.add_argument(
        "--allow-gaps",
        action="store_true",
        help="record hours Prometheus has no data for (between hours it has) as empty",
    )
    parser.add_argument("--kubeconfig", default=None, help="kubeconfig for owner chains")
    parser.add_argument(
        "--no-kube",
        action="store_true",
        help="do not ask the Kubernetes API; owners come from kube-state-metrics only",
    )
    add_ledger_option(parser)
    add_price_book_option(parser)
    parser.set_defaults(func=_guard(run_ingest))


def run_ingest(args: argparse.Namespace) -> int:
    price_book = load_price_book(args.price_book)
    ledger = open_ledger(args)
    now = time.time()
    start = parse_time(args.start, now) if args.start else None
    end = parse_time(args.end, now) if args.end else None
    start, end = plan_range(ledger, start, end, now=now, settle_seconds=args.settle_seconds)
    if start == end:
        print(f"nothing to ingest: the ledger is current up to {iso(end)}")
        return 0
    resolver = None
    if not args.no_kube:
        from accounting.kube import OwnerResolver, api_client_from_config

        try:
            api = api_client_from_config(args.kubeconfig)
        except Exception as error:  # the kubernetes client's config errors have no base
            raise IngestError(
                f"cannot load the Kubernetes configuration ({error}); fix --kubeconfig, or "
                "pass --no-kube to take owners from kube-state-metrics only"
            ) from None
        resolver = OwnerResolver(api) if api is not None else None
    ingestor = Ingestor(
        prometheus_client(args),
        ledger,
        price_book,
        resolver=resolver,
        queries=ingest_queries(args),
        chunk_hours=args.chunk_hours,
        progress=ProgressPrinter("ingest"),
        allow_gaps=args.allow_gaps,
    )
    result = ingestor.run(start, end, resume=args.resume)
    print(describe(result, start, end))
    return 0


def describe(result: IngestResult, start: int, end: int) -> str:
    kept = f", {len(result.hours_kept)} kept (gone from Prometheus)" if result.hours_kept else ""
    return (
        f"ingested {result.hours_written} hours of {iso(start)} .. {iso(end)} "
        f"({result.hours_skipped} already done{kept}), {result.usage_rows} usage rows, "
        f"{result.pods_resolved_by_api} pods resolved by the Kubernetes API; "
        f"{result.seconds_total:.1f}s: Prometheus {result.seconds_prometheus:.1f}s, "
        f"Kubernetes {result.seconds_kube:.1f}s, ledger {result.seconds_ledger:.1f}s, "
        f"gpuledger {result.seconds_own:.1f}s"
    )


# ---------------------------------------------------------------- report
def _add_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--month", required=True, help="the month, YYYY-MM (UTC)")
    parser.add_argument("--out", required=True, help="directory for the report files")
    parser.add_argument(
        "--cluster", default="gpuledger", help="cluster name (FOCUS BillingAccountId)"
    )
    parser.add_argument(
        "--require-complete",
        action="store_true",
        help="fail when the ledger lacks hours of the month",
    )
    add_ledger_option(parser)
    add_price_book_option(parser)
    add_team_options(parser)
    parser.set_defaults(func=_guard(run_report))


def run_report(args: argparse.Namespace) -> int:
    from accounting.html_report import write_html_report
    from accounting.reports import build_report, write_report

    price_book = load_price_book(args.price_book)
    ledger = open_ledger(args)
    report = build_report(
        ledger,
        args.month,
        price_book=price_book,
        idle=args.idle,
        teams=team_rule(args),
        cluster=args.cluster,
        require_complete=args.require_complete,
    )
    if report.missing_hours:
        print(
            f"warning: the ledger has {report.hours_ingested} of {report.hours_expected} hours "
            f"of {report.month}; first missing {iso(report.missing_hours[0])}",
            file=sys.stderr,
        )
    paths = write_report(report, args.out)
    paths.append(write_html_report(report, args.out))
    print(f"{report.month}: {report.total_cost} {report.currency} in {len(paths)} files:")
    for path in paths:
        print(f"  {path}")
    return 0


# ---------------------------------------------------------------- wiring
# subcommand -> (adds its arguments, one-line help). `serve` (scheduled ingestion,
# the HTTP API and cost metrics) registers here in the same way.
SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], str]] = {
    "ingest": (_add_ingest, "ingest hours of GPU usage from Prometheus into the ledger"),
    "report": (_add_report, "write a month's chargeback: CSV, Parquet, FOCUS, HTML"),
    "serve": (add_serve, "hourly ingestion, the read-only allocation API and cost metrics"),
}


def register(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest="accounting_command", metavar="SUBCOMMAND")
    subparsers.required = True
    for name, (add, help_text) in SUBCOMMANDS.items():
        add(subparsers.add_parser(name, help=help_text, description=help_text))


def _guard(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the errors a user can fix into one clear line and an exit status."""

    def guarded(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except _BAD_INPUT as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except (PrometheusError, LedgerError, RuntimeError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    guarded.__name__ = run.__name__
    return guarded


class ProgressPrinter:
    """Progress of a long run on stderr: a live line on a terminal, else a line every few
    seconds."""

    def __init__(self, what: str, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.every = every
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int, hour: int) -> None:
        now = time.monotonic()
        live = self.stream.isatty()
        if not live and now - self.last < self.every and done < total:
            return
        self.last = now
        elapsed = now - self.started
        eta = elapsed / done * (total - done) if done else 0.0
        line = (
            f"{self.what}: {done}/{total} hours ({100 * done // max(total, 1)}%), "
            f"through {iso(hour)}, {elapsed:.0f}s elapsed, ~{eta:.0f}s left"
        )
        if live:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
