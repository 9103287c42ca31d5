"""Monthly report files: CSV and Parquet per grouping, a FOCUS cost file, a summary.

`build_report` makes every table of a month from the ledger (a `Report`);
`write_report` writes them. Each file is written to a temporary name and renamed, so a
reader never sees half a file. The HTML report and the HTTP API build on `Report`.

FOCUS: the FinOps Open Cost and Usage Specification (1.x column names). One row per
day, team, namespace, job, GPU model and region; BilledCost = EffectiveCost = ListCost
= ContractedCost (an internal chargeback has no discounts); quantities in GPU-Hours;
gpuledger's own columns carry the `x_` prefix the specification reserves for them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd

from accounting.chargeback import TeamRule, chargeback, parse_month
from accounting.costmodel import IDLE, UNATTRIBUTED
from accounting.ingest import iso
from accounting.ledger import HOUR, Ledger
from accounting.pricebook import PriceBook

# report name -> dimensions
GROUPINGS: dict[str, tuple[str, ...]] = {
    "team": ("team",),
    "namespace": ("team", "namespace"),
    "job": ("team", "namespace", "job", "queue", "cohort"),
    "pod": ("team", "namespace", "job", "pod", "model", "node"),
    "model": ("model",),
    "daily": ("day", "team"),
}
FOCUS_DIMENSIONS = ("day", "team", "namespace", "job", "job_kind", "job_name", "model", "region")
FOCUS_VERSION = "1.1"


class ReportError(RuntimeError):
    """The report cannot be made; the message says what to do."""


@dataclass
class Report:
    month: str
    start: int
    end: int
    currency: str
    total_cost: Decimal
    idle: str
    frames: dict[str, pd.DataFrame]
    focus: pd.DataFrame
    hours_expected: int
    hours_ingested: int
    missing_hours: list[int] = field(default_factory=list)
    price_book: str = ""

    def summary(self) -> dict[str, Any]:
        team = self.frames["team"]
        return {
            "month": self.month,
            "period_start": _stamp(self.start),
            "period_end": _stamp(self.end),
            "currency": self.currency,
            "total_cost": str(self.total_cost),
            "idle": self.idle,
            "price_book": self.price_book,
            "hours_expected": self.hours_expected,
            "hours_ingested": self.hours_ingested,
            "missing_hours": [iso(h) for h in self.missing_hours],
            "complete": not self.missing_hours,
            "reconciles": {
                basis: str(sum(team[basis], Decimal(0)))
                for basis in ("cost_allocation", "cost_usage")
            },
            "gpu_hours": {
                "capacity": round(float(team["gpu_hours_held"].sum()), 6),
                "held": round(
                    float(team.loc[team["category"] == "workload", "gpu_hours_held"].sum()), 6
                ),
                "busy": round(float(team["gpu_hours_busy"].sum()), 6),
            },
        }


def build_report(
    ledger: Ledger,
    month: str,
    *,
    price_book: PriceBook,
    idle: str = "row",
    teams: TeamRule | None = None,
    cluster: str = "gpuledger",
    require_complete: bool = False,
) -> Report:
    """Every table of a month's report, from the ledger."""
    start, end = parse_month(month)
    hours = ledger.hours_frame(start, end)
    if hours.empty:
        raise ReportError(
            f"the ledger {ledger.safe_url} has no hours of {month}: run `gpuledger accounting "
            f"ingest --prometheus URL --from {_stamp(start)} --to {_stamp(min(end, _now_hour()))}` first"
        )
    frames = {
        name: chargeback(ledger, start, end, price_book=price_book, by=dims, idle=idle, teams=teams)
        for name, dims in GROUPINGS.items()
    }
    focus_source = chargeback(
        ledger, start, end, price_book=price_book, by=FOCUS_DIMENSIONS, idle=idle, teams=teams
    )
    attrs = frames["team"].attrs
    if require_complete and attrs["missing_hours"]:
        raise ReportError(
            f"the ledger lacks {len(attrs['missing_hours'])} hours of {month} (first "
            f"{iso(attrs['missing_hours'][0])}): ingest them, or drop --require-complete"
        )
    return Report(
        month=month,
        start=start,
        end=end,
        currency=price_book.currency,
        total_cost=attrs["total_cost"],
        idle=idle,
        frames=frames,
        focus=focus_frame(focus_source, cluster=cluster),
        hours_expected=(end - start) // HOUR,
        hours_ingested=attrs["hours_ingested"],
        missing_hours=list(attrs["missing_hours"]),
        price_book=price_book.path,
    )


def focus_frame(frame: pd.DataFrame, cluster: str = "gpuledger") -> pd.DataFrame:
    """FOCUS rows from a chargeback grouped by FOCUS_DIMENSIONS."""
    attrs = frame.attrs
    period_start, period_end = attrs["start"], attrs["end"]
    rows = []
    for r in frame.itertuples(index=False):
        day_start = int(datetime.strptime(r.day, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
        charge_start, charge_end = max(day_start, period_start), min(day_start + 86400, period_end)
        quantity = Decimal(repr(r.gpu_hours_held)).quantize(Decimal("0.000001"))
        cost = r.cost_allocation
        unit_price = (cost / quantity).quantize(Decimal("0.000001")) if quantity else None
        if r.category == IDLE:
            description = f"Idle capacity of {r.model}: GPU time no pod held"
            resource_id, name, kind = f"{IDLE}/{r.model}", IDLE, "Idle GPU capacity"
        elif r.category == UNATTRIBUTED:
            description = f"GPU time on {r.model} used outside any Kubernetes pod"
            resource_id, name, kind = (
                f"{UNATTRIBUTED}/{r.model}",
                UNATTRIBUTED,
                "Unattributed GPU time",
            )
        else:
            description = f"GPU time held on {r.model} by {r.job} in namespace {r.namespace}"
            resource_id, name, kind = f"{r.namespace}/{r.job}", r.job_name, r.job_kind
        tags = {"team": r.team, "namespace": r.namespace, "job": r.job, "gpu_model": r.model}
        rows.append(
            {
                "BilledCost": cost,
                "BillingAccountId": cluster,
                "BillingAccountName": cluster,
                "BillingCurrency": attrs["currency"],
                "BillingPeriodStart": _stamp(period_start),
                "BillingPeriodEnd": _stamp(period_end),
                "ChargeCategory": "Usage",
                "ChargeClass": None,
                "ChargeDescription": description,
                "ChargeFrequency": "Usage-Based",
                "ChargePeriodStart": _stamp(charge_start),
                "ChargePeriodEnd": _stamp(charge_end),
                "ConsumedQuantity": quantity,
                "ConsumedUnit": "GPU-Hours",
                "ContractedCost": cost,
                "ContractedUnitPrice": unit_price,
                "EffectiveCost": cost,
                "InvoiceIssuerName": attrs["provider"],
                "ListCost": cost,
                "ListUnitPrice": unit_price,
                "PricingCategory": "Standard",
                "PricingQuantity": quantity,
                "PricingUnit": "GPU-Hours",
                "ProviderName": attrs["provider"],
                "PublisherName": attrs["provider"],
                "RegionId": r.region or None,
                "RegionName": r.region or None,
                "ResourceId": resource_id,
                "ResourceName": name,
                "ResourceType": kind,
                "ServiceCategory": "Compute",
                "ServiceName": "GPU compute",
                "SkuId": r.model,
                "SkuPriceId": r.model,
                "SubAccountId": r.team,
                "SubAccountName": r.team,
                "Tags": json.dumps(tags, sort_keys=True),
                "x_Category": r.category,
                "x_GpuModel": r.model,
                "x_GpuHoursBusy": round(r.gpu_hours_busy, 6),
                "x_Efficiency": None if pd.isna(r.efficiency) else round(r.efficiency, 6),
                "x_MemoryGBHours": round(r.memory_gb_hours, 6),
                "x_EnergyKWh": round(r.energy_kwh, 6),
                "x_UsageBasisCost": r.cost_usage,
                "x_IdleCostInAllocation": r.idle_cost_in_allocation,
                "x_UnallocatedShare": r.unallocated_share,
                "x_IdleMode": attrs["idle"],
                "x_FocusVersion": FOCUS_VERSION,
            }
        )
    return pd.DataFrame(rows)


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write CSV and Parquet per grouping, the FOCUS CSV and summary.json; return paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frame in report.frames.items():
        stem = out / f"gpuledger-{report.month}-by-{name}"
        written.append(_atomic(stem.with_suffix(".csv"), lambda p, f=frame: write_csv(f, p)))
        written.append(
            _atomic(stem.with_suffix(".parquet"), lambda p, f=frame: write_parquet(f, p))
        )
    written.append(
        _atomic(out / f"gpuledger-{report.month}-focus.csv", lambda p: write_csv(report.focus, p))
    )
    summary = report.summary() | {"files": [p.name for p in written]}
    written.append(
        _atomic(
            out / f"gpuledger-{report.month}-summary.json",
            lambda p: p.write_text(json.dumps(summary, indent=2) + "\n"),
        )
    )
    return written


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    # Decimal columns print as written (12.30); floats without binary noise.
    frame.to_csv(path, index=False, float_format="%.6f")


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    # Money as decimal128 (exact); the period, currency and totals in the file's
    # pandas metadata (as JSON: Decimals as strings).
    plain = frame.copy()
    plain.attrs = {k: str(v) if isinstance(v, Decimal) else v for k, v in frame.attrs.items()}
    plain.to_parquet(path, index=False)


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _stamp(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_hour() -> int:
    return int(datetime.now(UTC).timestamp()) // HOUR * HOUR
