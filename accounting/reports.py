"""Monthly report files: CSV and Parquet per grouping, a FOCUS cost file, a summary.

`build_report` makes every table of a month from the ledger (a `Report`);
`write_report` writes them. Each file is written to a temporary name and renamed, so a
reader never sees half a file. The HTML report and the HTTP API build on `Report`.

FOCUS: the FinOps Open Cost and Usage Specification (1.x column names). One row per
day, team, namespace, job, GPU model and region; BilledCost = EffectiveCost = ListCost
= ContractedCost (an internal chargeback has no discounts); quantities in GPU-Hours;
gpuledger's own columns carry the `x_` prefix the specification reserves for them.

Simulated data is labelled everywhere: a `simulated` column in every CSV and Parquet
table, `x_Simulated` in the FOCUS file and `simulated` in summary.json, true when any
GPU of the month reported from the exporter's simulated source.
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

import numpy as np
import pandas as pd

from accounting.chargeback import TeamRule, load_period, parse_month, summarise
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
    # From the exporter's `source` label: True when any GPU of the month was simulated.
    simulated: bool = False
    gpu_hours_by_source: dict[str, int] = field(default_factory=dict)
    # Hours in the numbers that are not final yet (the hour in progress), and the
    # latest time they hold.
    provisional_hours: list[int] = field(default_factory=list)
    provisional_through: int | None = None

    @property
    def complete(self) -> bool:
        return not self.missing_hours and not self.provisional_hours

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
            "provisional_hours": [iso(h) for h in self.provisional_hours],
            "provisional_through": (
                None if self.provisional_through is None else _stamp(self.provisional_through)
            ),
            "complete": self.complete,
            "simulated": self.simulated,
            "gpu_hours_by_source": dict(self.gpu_hours_by_source),
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
    if ledger.hours_frame(start, end).empty and not ledger.provisional(start, end):
        raise ReportError(
            f"the ledger {ledger.safe_url} has no hours of {month}: run `gpuledger accounting "
            f"ingest --prometheus URL --from {_stamp(start)} --to {_stamp(min(end, _now_hour()))}` first"
        )
    prepared = load_period(ledger, start, end, price_book=price_book, teams=teams)
    frames = {name: summarise(prepared, dims, idle) for name, dims in GROUPINGS.items()}
    focus_source = summarise(prepared, FOCUS_DIMENSIONS, idle)
    attrs = frames["team"].attrs
    if require_complete and attrs["missing_hours"]:
        raise ReportError(
            f"the ledger lacks {len(attrs['missing_hours'])} hours of {month} (first "
            f"{iso(attrs['missing_hours'][0])}): ingest them, or drop --require-complete"
        )
    if require_complete and attrs["provisional_hours"]:
        raise ReportError(
            f"{len(attrs['provisional_hours'])} hours of {month} are provisional (first "
            f"{iso(attrs['provisional_hours'][0])}): ingest them again once they are "
            "complete, or drop --require-complete"
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
        simulated=attrs["simulated"],
        gpu_hours_by_source=dict(attrs["gpu_hours_by_source"]),
        provisional_hours=list(attrs["provisional_hours"]),
        provisional_through=attrs["provisional_through"],
    )


def focus_frame(frame: pd.DataFrame, cluster: str = "gpuledger") -> pd.DataFrame:
    """FOCUS rows from a chargeback grouped by FOCUS_DIMENSIONS."""
    attrs = frame.attrs
    period_start, period_end = attrs["start"], attrs["end"]
    provider, n = attrs["provider"], len(frame)
    micro = Decimal("0.000001")
    day_start = {
        d: int(datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
        for d in set(frame["day"])
    }
    charge_start = {d: _stamp(max(t, period_start)) for d, t in day_start.items()}
    charge_end = {d: _stamp(min(t + 86400, period_end)) for d, t in day_start.items()}
    quantity = [Decimal(repr(h)).quantize(micro) for h in frame["gpu_hours_held"].tolist()]
    cost = frame["cost_allocation"].tolist()
    unit_price = [
        (c / q).quantize(micro) if q else None for c, q in zip(cost, quantity, strict=True)
    ]
    described = [
        _describe(*row)
        for row in zip(
            frame["category"].tolist(),
            frame["model"].tolist(),
            frame["namespace"].tolist(),
            frame["job"].tolist(),
            frame["job_kind"].tolist(),
            frame["job_name"].tolist(),
            strict=True,
        )
    ]
    # json.dumps({"gpu_model": m, "job": j, "namespace": ns, "team": t}, sort_keys=True),
    # each distinct value encoded once.
    encoded: dict[Any, str] = {}

    def value(v: Any) -> str:
        text = encoded.get(v)
        if text is None:
            text = encoded[v] = json.dumps(v)
        return text

    tags = [
        f'{{"gpu_model": {value(m)}, "job": {value(j)}, "namespace": {value(ns)}, '
        f'"team": {value(t)}}}'
        for t, ns, j, m in zip(
            frame["team"].tolist(),
            frame["namespace"].tolist(),
            frame["job"].tolist(),
            frame["model"].tolist(),
            strict=True,
        )
    ]
    region = [r or None for r in frame["region"].tolist()]
    days = frame["day"].tolist()
    efficiency = [None if pd.isna(e) else round(e, 6) for e in frame["efficiency"].tolist()]
    return pd.DataFrame(
        {
            "BilledCost": cost,
            "BillingAccountId": [cluster] * n,
            "BillingAccountName": [cluster] * n,
            "BillingCurrency": [attrs["currency"]] * n,
            "BillingPeriodStart": [_stamp(period_start)] * n,
            "BillingPeriodEnd": [_stamp(period_end)] * n,
            "ChargeCategory": ["Usage"] * n,
            "ChargeClass": [None] * n,
            "ChargeDescription": [d[0] for d in described],
            "ChargeFrequency": ["Usage-Based"] * n,
            "ChargePeriodStart": [charge_start[d] for d in days],
            "ChargePeriodEnd": [charge_end[d] for d in days],
            "ConsumedQuantity": quantity,
            "ConsumedUnit": ["GPU-Hours"] * n,
            "ContractedCost": cost,
            "ContractedUnitPrice": unit_price,
            "EffectiveCost": cost,
            "InvoiceIssuerName": [provider] * n,
            "ListCost": cost,
            "ListUnitPrice": unit_price,
            "PricingCategory": ["Standard"] * n,
            "PricingQuantity": quantity,
            "PricingUnit": ["GPU-Hours"] * n,
            "ProviderName": [provider] * n,
            "PublisherName": [provider] * n,
            "RegionId": region,
            "RegionName": region,
            "ResourceId": [d[1] for d in described],
            "ResourceName": [d[2] for d in described],
            "ResourceType": [d[3] for d in described],
            "ServiceCategory": ["Compute"] * n,
            "ServiceName": ["GPU compute"] * n,
            "SkuId": frame["model"].tolist(),
            "SkuPriceId": frame["model"].tolist(),
            "SubAccountId": frame["team"].tolist(),
            "SubAccountName": frame["team"].tolist(),
            "Tags": tags,
            "x_Category": frame["category"].tolist(),
            "x_GpuModel": frame["model"].tolist(),
            "x_GpuHoursBusy": frame["gpu_hours_busy"].round(6).tolist(),
            "x_Efficiency": efficiency,
            "x_MemoryGBHours": frame["memory_gb_hours"].round(6).tolist(),
            "x_EnergyKWh": frame["energy_kwh"].round(6).tolist(),
            "x_UsageBasisCost": frame["cost_usage"].tolist(),
            "x_IdleCostInAllocation": frame["idle_cost_in_allocation"].tolist(),
            "x_UnallocatedShare": frame["unallocated_share"].tolist(),
            "x_IdleMode": [attrs["idle"]] * n,
            # True when any GPU of the period was simulated (exporter source="simulated").
            "x_Simulated": [bool(attrs.get("simulated", False))] * n,
            "x_FocusVersion": [FOCUS_VERSION] * n,
        }
    )


def _describe(
    category: str, model: str, namespace: str, job: str, job_kind: str, job_name: str
) -> tuple[str, str, str, str]:
    """ChargeDescription, ResourceId, ResourceName and ResourceType of a row."""
    if category == IDLE:
        return (
            f"Idle capacity of {model}: GPU time no pod held",
            f"{IDLE}/{model}",
            IDLE,
            "Idle GPU capacity",
        )
    if category == UNATTRIBUTED:
        return (
            f"GPU time on {model} used outside any Kubernetes pod",
            f"{UNATTRIBUTED}/{model}",
            UNATTRIBUTED,
            "Unattributed GPU time",
        )
    return (
        f"GPU time held on {model} by {job} in namespace {namespace}",
        f"{namespace}/{job}",
        job_name,
        job_kind,
    )


def write_report(report: Report, out_dir: str | Path) -> list[Path]:
    """Write CSV and Parquet per grouping, the FOCUS CSV and summary.json; return paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in report.frames.items():
        # Every row says whether the month's data came from simulated GPUs.
        frame = table.assign(simulated=report.simulated)
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
    """The frame as `frame.to_csv(path, index=False, float_format="%.6f")` writes it,
    byte for byte: Decimal columns as written (12.30), floats without binary noise,
    missing values empty, fields quoted as the csv module quotes them.

    Made a column at a time: pandas's writer spends seconds on a month's FOCUS file
    (100,000 rows of 50 columns), most of it on each value in Python.
    """
    header = [_csv_field(str(name)) for name in frame.columns]
    lone = frame.shape[1] == 1  # the csv module quotes a row's only field when empty
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(",".join([text or '""' for text in header] if lone else header) + "\n")
        # 20,000 rows at a time: a month's FOCUS file is five million fields.
        for first in range(0, len(frame), 20_000):
            part = frame.iloc[first : first + 20_000]
            columns = [_csv_texts(part.iloc[:, i]) for i in range(part.shape[1])]
            if lone:
                columns = [[text or '""' for text in columns[0]]]
            out.writelines(f"{','.join(row)}\n" for row in zip(*columns, strict=True))


def _csv_texts(values: pd.Series) -> list[str]:
    """A column's CSV fields, as pandas and the csv module write them."""
    if values.dtype.kind == "f":
        return _fixed_decimals(values).tolist()
    texts = list(map(str, values.tolist()))
    for i in np.flatnonzero(values.isna().to_numpy()).tolist():
        texts[i] = ""
    joined = "".join(texts)
    if any(special in joined for special in _CSV_SPECIAL):
        return [_csv_field(text) for text in texts]
    return texts


# Fields holding these are quoted (QUOTE_MINIMAL, with "\n" ending lines).
_CSV_SPECIAL = (",", '"', "\n")


def _csv_field(text: str) -> str:
    if any(special in text for special in _CSV_SPECIAL):
        return '"' + text.replace('"', '""') + '"'
    return text


def _fixed_decimals(values: pd.Series) -> np.ndarray:
    """Floats as `%.6f` text (what to_csv's float_format writes), NaN as ""."""
    floats = values.to_numpy(dtype=np.float64, na_value=np.nan)
    text = np.array([f"{v:.6f}" for v in floats.tolist()], dtype=object)
    text[np.isnan(floats)] = ""
    return text


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
