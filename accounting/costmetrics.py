"""Prometheus metrics of cost per team and namespace, from the ledger.

`CostMetrics.refresh(ledger, now)` computes a snapshot (the current month's chargeback
by team and namespace, and that of the latest hour); `collect()` yields it, so a scrape
never queries the ledger. Names and labels are the catalogue's "accounting" section
(exporter/catalogue.py); the cost dashboard (dashboards/cost.py) reads them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from accounting.chargeback import TeamRule, chargeback
from accounting.ledger import HOUR, Ledger
from accounting.pricebook import PriceBook
from exporter import catalogue as cat

log = logging.getLogger(__name__)


@dataclass
class CostSnapshot:
    """What one refresh found; label values -> value."""

    currency: str = ""
    month_cost: dict[tuple[str, ...], float] = field(default_factory=dict)
    month_waste: dict[tuple[str, ...], float] = field(default_factory=dict)
    month_gpu_seconds: dict[tuple[str, ...], float] = field(default_factory=dict)
    last_hour_cost: dict[tuple[str, ...], float] = field(default_factory=dict)
    last_hour: int | None = None
    missing_seconds: float = 0.0


def month_bounds(ts: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(ts, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + (moment.month == 12), moment.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def compute_snapshot(
    ledger: Ledger,
    price_book: PriceBook,
    *,
    now: float,
    teams: TeamRule | None = None,
    idle: str = "row",
    settle_seconds: int = 300,
) -> CostSnapshot:
    """The metrics' values: the month of the ledger's latest hour, and that hour."""
    snapshot = CostSnapshot(currency=price_book.currency)
    last = ledger.last_hour()
    snapshot.last_hour = last
    if last is None:
        return snapshot
    start, end = month_bounds(last)
    by = ("team", "namespace")
    month = chargeback(ledger, start, end, price_book=price_book, by=by, idle=idle, teams=teams)
    currency = price_book.currency
    for row in month.to_dict("records"):
        key = (row["team"], row["namespace"])
        snapshot.month_cost[(*key, "allocation", currency)] = float(row["cost_allocation"])
        snapshot.month_cost[(*key, "usage", currency)] = float(row["cost_usage"])
        snapshot.month_waste[(*key, currency)] = float(row["idle_cost_in_allocation"])
        snapshot.month_gpu_seconds[(*key, "held")] = row["gpu_hours_held"] * HOUR
        snapshot.month_gpu_seconds[(*key, "busy")] = row["gpu_hours_busy"] * HOUR
    hour = chargeback(
        ledger, last, last + HOUR, price_book=price_book, by=by, idle=idle, teams=teams
    )
    for row in hour.to_dict("records"):
        snapshot.last_hour_cost[(row["team"], row["namespace"], currency)] = float(
            row["cost_allocation"]
        )
    # Hours of the month that should be in the ledger by now but are not.
    complete = min(end, int(now - settle_seconds) // HOUR * HOUR)
    if complete > start:
        done = ledger.done_hours(start, complete)
        snapshot.missing_seconds = float((complete - start) // HOUR - len(done)) * HOUR
    return snapshot


class CostMetrics(Collector):
    """A collector of the last snapshot; refresh() replaces it atomically."""

    def __init__(self) -> None:
        self._snapshot = CostSnapshot()
        self._lock = threading.Lock()

    def set(self, snapshot: CostSnapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    def refresh(
        self,
        ledger: Ledger,
        price_book: PriceBook,
        *,
        now: float,
        teams: TeamRule | None = None,
        idle: str = "row",
    ) -> CostSnapshot:
        snapshot = compute_snapshot(ledger, price_book, now=now, teams=teams, idle=idle)
        self.set(snapshot)
        return snapshot

    @property
    def snapshot(self) -> CostSnapshot:
        with self._lock:
            return self._snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        for spec, values in (
            (cat.ACCOUNTING_MONTH_COST, snapshot.month_cost),
            (cat.ACCOUNTING_MONTH_WASTE_COST, snapshot.month_waste),
            (cat.ACCOUNTING_MONTH_GPU_SECONDS, snapshot.month_gpu_seconds),
            (cat.ACCOUNTING_LAST_HOUR_COST, snapshot.last_hour_cost),
        ):
            family = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels, value in sorted(values.items()):
                family.add_metric(labels, value)
            yield family
        if snapshot.last_hour is not None:
            yield GaugeMetricFamily(
                cat.ACCOUNTING_LAST_HOUR.name,
                cat.ACCOUNTING_LAST_HOUR.help,
                value=snapshot.last_hour,
            )
            yield GaugeMetricFamily(
                cat.ACCOUNTING_MONTH_MISSING.name,
                cat.ACCOUNTING_MONTH_MISSING.help,
                value=snapshot.missing_seconds,
            )
