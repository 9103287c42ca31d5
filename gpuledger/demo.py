"""`gpuledger demo`: the whole stack on this machine, from GPU metrics to a chargeback.

    gpuledger demo                    # the `demo` profile: ~3 minutes of training, one fault
    gpuledger demo --quick            # the `quick` profile (~1.5 minutes)
    gpuledger demo --minutes 10       # the profile stretched to about 10 minutes
    gpuledger demo --keep-running     # leave the stack up afterwards, to browse Prometheus

It starts the exporter (NVML when a GPU driver answers, simulated GPUs following the
training's phases otherwise; it says which), Prometheus with gpuledger's rules,
Alertmanager routing to a receiver in this process, and the load generator: real
training steps on two ranks with a fault phase. Then it ingests the run's usage from
Prometheus into an SQLite ledger and writes the chargeback report (HTML, CSV, FOCUS),
and prints where to look. Everything it started stops on exit, on error, on Ctrl-C
and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gpuledger.stack import INSTALL_HINT, LocalStack, ReceivedAlert, StackError, plan_profile

log = logging.getLogger(__name__)

LEDGER_FILE = "demo-ledger.sqlite"
REPORT_DIR = "report"
SUMMARY_FILE = "demo-summary.json"
# Beyond the profile's planned time: torch start-up, the CPU peak measurement, the
# ranks meeting. A run that takes longer than this has hung.
STARTUP_ALLOWANCE_S = 300.0
# After the training: two scrapes so the last counters are in Prometheus, and time for
# alerts pending at the end to be delivered.
SETTLE_S = 3.0


def register(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 2)[1]
    parser.add_argument(
        "--profile",
        default=None,
        help="load generator profile: a built-in name or a YAML file (default: demo)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the short `quick` profile (about 1.5 minutes)"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stretch or shrink the profile's phases to about this many minutes of training",
    )
    parser.add_argument(
        "--out",
        default="demo-out",
        help="directory for the ledger, report and logs (default: ./demo-out)",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "nvml", "simulated"],
        default="auto",
        help="GPU readings: NVML when a GPU driver answers, else simulated (auto)",
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the stack up after the run until Ctrl-C, to browse Prometheus",
    )
    parser.set_defaults(func=run)


# ---------------------------------------------------------------- options


def _choose_profile(args: argparse.Namespace) -> str:
    if args.quick and args.profile not in (None, "quick"):
        raise StackError(f"--quick runs the quick profile: leave out --profile {args.profile}")
    return "quick" if args.quick else (args.profile or "demo")


def _time_scale(profile: str, minutes: float | None) -> float:
    if minutes is None:
        return 1.0
    if not minutes > 0:
        raise StackError(f"--minutes must be a positive number, got {minutes:g}")
    planned = plan_profile(profile).planned_seconds
    if planned <= 0:
        raise StackError(f"profile {profile} has no timed phases to stretch: leave out --minutes")
    return minutes * 60.0 / planned


# ---------------------------------------------------------------- progress


class Say:
    """Progress lines a person can follow: seconds since the start, then the news."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.started = time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, message: str) -> None:
        elapsed = int(time.monotonic() - self.started)
        with self._lock:
            print(
                f"[{elapsed // 60:2d}:{elapsed % 60:02d}] {message}", file=self.stream, flush=True
            )


class TimelineTail:
    """Rank 0's new timeline records, read as the file grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0

    def new_records(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        records = []
        for line in complete.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("rank") == 0:
                    records.append(record)
        return records


def _describe_record(record: dict[str, Any], phases: int) -> str | None:
    kind = record.get("type")
    if kind == "run_start":
        return (
            f"training started: {record.get('world_size')} rank(s) on {record.get('device')}"
            f" ({record.get('backend') or 'no collectives'}), "
            f"{record.get('params', 0) / 1e6:.1f} M parameters"
        )
    if kind == "phase_start":
        planned = record.get("planned_s")
        length = f" for {planned:.0f} s" if planned else ""
        return (
            f"phase {record['index'] + 1}/{phases} {record['phase']} ({record['kind']})"
            f" started{length}"
        )
    if kind == "phase_end":
        parts = [f"{record.get('steps', 0)} steps"]
        if record.get("busy_ratio") is not None:
            parts.append(f"busy {record['busy_ratio']:.0%}")
        if record.get("busbw_bytes_per_s"):
            parts.append(f"bus bandwidth {record['busbw_bytes_per_s'] / 1e9:.2f} GB/s")
        return f"phase {record['phase']} ended: {', '.join(parts)}"
    if kind == "run_end":
        if record.get("status") == "ok":
            return f"training finished in {record.get('duration_s', 0):.0f} s"
        return f"training failed: {record.get('error')}"
    return None


def _where(labels: dict[str, str]) -> str:
    """What an alert is about, in a few words."""
    if labels.get("pod"):
        return f"{labels.get('namespace', '')}/{labels['pod']}"
    if labels.get("gpu"):
        return f"node {labels.get('node', '')} GPU {labels['gpu']}"
    if labels.get("workload"):
        return f"workload {labels.get('namespace', '')}/{labels['workload']}"
    return labels.get("node") or labels.get("instance") or ""


def _alert_line(alert: ReceivedAlert) -> str:
    route = alert.receiver or "(not routed: no Alertmanager)"
    severity = alert.labels.get("severity", "")
    return f"{alert.name} [{severity}] {_where(alert.labels)} -> {route}"


# ---------------------------------------------------------------- accounting


class AccountingFailed(RuntimeError):
    """Ingestion or the report failed; the message says why (from the accounting code)."""


@dataclass
class MonthReport:
    month: str
    total_cost: str
    currency: str
    hours_ingested: int  # complete hours
    hours_expected: int
    html: str
    focus: str
    files: list[str]
    hours_provisional: int = 0  # written but not over yet


@dataclass
class Accounting:
    ledger: str
    hours: int  # in the ledger, provisional ones included
    usage_rows: int
    provisional_hours: int = 0  # written but not done: the hour the run ended in
    reports: list[MonthReport] = field(default_factory=list)


def ingest_and_report(prometheus_url: str, start: float, end: float, out: Path) -> Accounting:
    """Ingest [start, end) from Prometheus into a fresh SQLite ledger in `out`, and
    write each month's chargeback report into out/report.

    The ledger works in whole hours. A run of minutes lies inside the hour in
    progress, so that hour is written provisional, with its data up to `end`
    (Ingestor.run_until): the reports say so, and a later ingestion of the same ledger
    would ingest the hour again once it is over. Whether the GPUs were simulated the
    reports learn from the ledger (the exporter's `source` label), not from here.
    """
    from accounting.chargeback import PeriodError
    from accounting.ingest import IngestError
    from accounting.ledger import LedgerError
    from accounting.pricebook import PriceBookError
    from accounting.prometheus import PrometheusError
    from accounting.reports import ReportError

    try:
        return _ingest_and_report(prometheus_url, start, end, out)
    except (
        IngestError,
        LedgerError,
        PeriodError,
        PriceBookError,
        PrometheusError,
        ReportError,
    ) as error:
        raise AccountingFailed(str(error)) from error


def _ingest_and_report(prometheus_url: str, start: float, end: float, out: Path) -> Accounting:
    from accounting.chargeback import TeamRule
    from accounting.html_report import write_html_report
    from accounting.ingest import Ingestor, ceil_hour, floor_hour
    from accounting.ledger import HOUR, Ledger
    from accounting.pricebook import load_price_book
    from accounting.prometheus import PrometheusClient
    from accounting.reports import build_report, write_report

    ledger_path = out / LEDGER_FILE
    ledger_path.unlink(missing_ok=True)
    ledger = Ledger(str(ledger_path)).create()
    price_book = load_price_book(None)
    first = floor_hour(start)
    last = max(ceil_hour(end), first + HOUR)  # the months to report
    until = min(end, time.time())
    result = Ingestor(PrometheusClient(prometheus_url), ledger, price_book).run_until(first, until)
    outcome = Accounting(
        str(ledger_path),
        result.hours_written + len(result.hours_provisional),
        result.usage_rows,
        provisional_hours=len(result.hours_provisional),
    )
    months = sorted(
        {datetime.fromtimestamp(h, UTC).strftime("%Y-%m") for h in range(first, last, HOUR)}
    )
    report_dir = out / REPORT_DIR
    # No kube-state-metrics here: a pod's team is its namespace.
    teams = TeamRule(fallback="namespace")
    for month in months:
        report = build_report(ledger, month, price_book=price_book, teams=teams)
        paths = write_report(report, report_dir)
        html = write_html_report(report, report_dir)
        focus = next(p for p in paths if p.name.endswith("-focus.csv"))
        outcome.reports.append(
            MonthReport(
                month=month,
                total_cost=str(report.total_cost),
                currency=report.currency,
                hours_ingested=report.hours_ingested,
                hours_provisional=len(report.provisional_hours),
                hours_expected=report.hours_expected,
                html=str(html),
                focus=str(focus),
                files=[str(p) for p in [html, *paths]],
            )
        )
    return outcome


# ---------------------------------------------------------------- signals


@contextlib.contextmanager
def _quiet_parts(level: str) -> Iterator[None]:
    """The progress lines tell the story; the parts' own info logs would drown them
    (unless debug logs are asked for)."""
    names = ("exporter", "accounting", "gpuledger.services")
    previous = {name: logging.getLogger(name).level for name in names}
    if level.lower() != "debug":
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, old in previous.items():
            logging.getLogger(name).setLevel(old)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops the demo as Ctrl-C does: through KeyboardInterrupt, so that every
    `finally` runs and everything started is stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """While stopping: a second Ctrl-C must not cut the clean-up short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# ---------------------------------------------------------------- the run


@dataclass
class Summary:
    source: str
    source_detail: str
    fallback_reason: str | None
    profile: str
    out: str
    exporter_metrics: str
    prometheus: str | None
    alertmanager: str | None
    timeline: str
    loadgen_log: str
    loadgen_exit: int | None
    alerts: list[dict[str, Any]]
    accounting: dict[str, Any] | None
    missing: list[str]
    seconds: float


def _watch_training(stack: LocalStack, say: Say, alerts: queue.Queue) -> int:
    """Print the run's phases and the alerts as they come; return the load generator's
    exit status."""
    assert stack.loadgen is not None
    tail = TimelineTail(stack.timeline_path)
    phases = len(stack.plan.phases)
    deadline = time.monotonic() + stack.plan.planned_seconds + STARTUP_ALLOWANCE_S

    def report_news() -> None:
        for record in tail.new_records():
            line = _describe_record(record, phases)
            if line:
                say(line)
        while not alerts.empty():
            say(f"alert: {_alert_line(alerts.get())}")

    while True:
        code = stack.loadgen.wait(timeout=0.5)
        report_news()
        if code is not None:
            return code
        if time.monotonic() > deadline:
            raise StackError(
                f"the load generator has not finished {STARTUP_ALLOWANCE_S:.0f} s after its "
                f"planned {stack.plan.planned_seconds:.0f} s: see {stack.loadgen.log_path}"
            )


def _run_stack(stack: LocalStack, args: argparse.Namespace, say: Say) -> tuple[Summary, int]:
    out = stack.workdir
    say(f"starting the stack in {out}")
    stack.start()
    assert stack.exporter is not None and stack.receiver is not None
    if stack.source_name == "simulated":
        why = f" ({stack.fallback_reason})" if stack.fallback_reason else ""
        say(f"exporter: SIMULATED GPUs, {stack.source_detail}; no GPU driver used{why}")
    else:
        say(f"exporter: real GPUs through NVML, {stack.source_detail}")
    say(f"exporter metrics: {stack.exporter.url}/metrics")
    for line in stack.missing:
        say(f"warning: {line}")
    if stack.alertmanager:
        say(f"Alertmanager: {stack.alertmanager.url} (routes of alerts/alertmanager)")
    if stack.prometheus:
        say(f"Prometheus: {stack.prometheus.url} (scrapes every second, gpuledger's rules)")

    news: queue.Queue = queue.Queue()
    stack.receiver.on_alert(lambda a: news.put(a) if a.status == "firing" else None)
    plan = stack.plan
    say(
        f"load generator: profile {plan.profile_name}, {plan.nproc} rank(s), "
        f"{len(plan.phases)} phases, {plan.planned_seconds:.0f} s planned "
        f"(log: {out / 'loadgen.log'})"
    )
    loadgen = stack.start_loadgen()
    code = _watch_training(stack, say, news)
    if code != 0:
        say(f"the load generator exited with status {code}; the end of its log:")
        for line in loadgen.tail().splitlines():
            say(f"  | {line}")
    time.sleep(SETTLE_S)
    while not news.empty():
        say(f"alert: {_alert_line(news.get())}")

    accounting = None
    if stack.prometheus is None:
        say(
            "accounting skipped: without Prometheus there is no usage to ingest into the "
            f"ledger, so no chargeback report; {INSTALL_HINT}"
        )
    else:
        say("accounting: ingesting the run's usage from Prometheus into the ledger")
        try:
            accounting = ingest_and_report(
                stack.prometheus.url,
                stack.started_at or loadgen.started_at,
                time.time(),
                out,
            )
        except AccountingFailed as error:
            say(f"accounting failed: {error}")
            code = code or 1
        else:
            say(
                f"accounting: {accounting.hours} hour(s), {accounting.usage_rows} usage rows "
                f"in {accounting.ledger}"
            )
    summary = Summary(
        source=stack.source_name,
        source_detail=stack.source_detail,
        fallback_reason=stack.fallback_reason,
        profile=plan.profile_name,
        out=str(out),
        exporter_metrics=f"{stack.exporter.url}/metrics",
        prometheus=stack.prometheus.url if stack.prometheus else None,
        alertmanager=stack.alertmanager.url if stack.alertmanager else None,
        timeline=str(stack.timeline_path),
        loadgen_log=str(loadgen.log_path),
        loadgen_exit=code,
        alerts=[
            {
                "name": a.name,
                "route": a.receiver,
                "severity": a.labels.get("severity", ""),
                "about": _where(a.labels),
                "starts_at": a.starts_at,
                "received_at": a.received_at,
            }
            for a in stack.alerts_fired()
        ],
        accounting=asdict(accounting) if accounting else None,
        missing=list(stack.missing),
        seconds=round(time.monotonic() - say.started, 1),
    )
    (out / SUMMARY_FILE).write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary, 0 if code == 0 else 1


def format_summary(summary: Summary, keep_running: bool) -> str:
    up = "up now" if keep_running else "up while the demo ran; --keep-running keeps them up"
    lines = ["", "gpuledger demo: where to look", ""]
    if summary.source == "simulated":
        reason = f"; {summary.fallback_reason}" if summary.fallback_reason else ""
        lines.append(f"  GPU source     simulated: {summary.source_detail}{reason}")
    else:
        lines.append(f"  GPU source     nvml: {summary.source_detail}")
    lines.append(f"  metrics        {summary.exporter_metrics} ({up})")
    if summary.prometheus:
        lines.append(f"  Prometheus     {summary.prometheus}/graph ({up})")
    if summary.alertmanager:
        lines.append(f"  Alertmanager   {summary.alertmanager}")
    lines.append(f"  training       profile {summary.profile}, timeline {summary.timeline}")
    lines.append(f"                 log {summary.loadgen_log} (exit status {summary.loadgen_exit})")
    lines.append("")
    if summary.alerts:
        lines.append(f"  alerts fired ({len(summary.alerts)}):")
        for a in sorted(summary.alerts, key=lambda a: a["received_at"]):
            when = datetime.fromtimestamp(a["received_at"], UTC).strftime("%H:%M:%SZ")
            route = a["route"] or "(not routed: no Alertmanager)"
            lines.append(
                f"    {when}  {a['name']:<38} {a['severity']:<8} {a['about']:<28} -> {route}"
            )
    elif summary.prometheus:
        lines.append("  alerts fired:  none")
    else:
        lines.append("  alerts:        not evaluated (no Prometheus)")
    lines.append("")
    if summary.accounting:
        acc = summary.accounting
        provisional = acc.get("provisional_hours") or 0
        note = f", {provisional} provisional: still in progress" if provisional else ""
        lines.append(f"  ledger         {acc['ledger']} ({acc['hours']} hour(s) ingested{note})")
        for report in acc["reports"]:
            lines.append(
                f"  chargeback     {report['month']}: {report['total_cost']} {report['currency']}"
                f" for {report['hours_ingested']} complete and "
                f"{report.get('hours_provisional', 0)} provisional hour(s) in the ledger"
            )
            lines.append(f"    HTML         {report['html']}")
            lines.append(f"    FOCUS CSV    {report['focus']}")
            others = [f for f in report["files"] if f not in (report["html"], report["focus"])]
            lines.append(
                f"    CSV, Parquet {len(others)} more files in {Path(report['html']).parent}"
            )
    else:
        lines.append("  chargeback     not made: no Prometheus to ingest usage from")
    for line in summary.missing:
        lines.append(f"  missing        {line}")
    lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    say = Say()
    try:
        profile = _choose_profile(args)
        stack = LocalStack(
            Path(args.out),
            profile=profile,
            device=args.device,
            time_scale=_time_scale(profile, args.minutes),
        )
    except StackError as error:
        print(f"gpuledger demo: error: {error}", file=sys.stderr)
        return 2
    code: int | None = None  # set once the run and its summary are done
    with _quiet_parts(args.log_level), _sigterm_interrupts():
        try:
            summary, code = _run_stack(stack, args, say)
            print(format_summary(summary, args.keep_running), flush=True)
            if args.keep_running:
                say("the stack stays up: press Ctrl-C to stop it")
                while True:
                    time.sleep(1)
        except KeyboardInterrupt:
            if code is None:
                say("interrupted")
                code = 130
        except (StackError, RuntimeError, TimeoutError, OSError) as error:
            # A service that would not start, a port taken meanwhile, a full disk.
            say(f"error: {error}")
            say(f"logs of the services and the load generator are in {stack.workdir}")
            code = 1
        finally:
            with _signals_ignored():
                say("stopping everything the demo started")
                stack.stop()
                say("stopped")
    return code if code is not None else 1
