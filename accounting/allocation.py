"""The allocation query: the chargeback of a window, in the shape of OpenCost's
`/allocation` API, so that tools that read OpenCost can read gpuledger.

    GET /allocation?window=2026-11-01T00:00:00Z,2026-12-01T00:00:00Z&aggregate=team

    {"code": 200, "data": [{"research": {"name": "research", "properties": {...},
      "window": {"start": ..., "end": ...}, "start": ..., "end": ..., "minutes": ...,
      "gpuHours": ..., "gpuCost": ..., "gpuEfficiency": ..., "totalCost": ..., ...}}]}

Parameters, as OpenCost names them:
- `window`: an RFC 3339 pair `START,END`, a unix-seconds pair, a duration ending now
  (`24h`, `7d`, `2w`), or `today`, `yesterday`, `week`, `lastweek`, `month`,
  `lastmonth` (UTC). The ledger is hourly, so windows are whole hours.
- `aggregate`: `namespace`, `team`, `job` (or `controller`), `pod`, `gpu_model`,
  `node`, `cluster`, `label:<a team label>`, or a comma-separated list of them.
- `step` (a duration) with `accumulate=false`: one set per step instead of one set.
- `shareIdle` (`true`/`false`) and `includeIdle` (default `true`).

Each set holds every row of the chargeback, `__unattributed__` and `__idle__` included,
so a set's `totalCost` values sum to the cluster's cost of its window to the cent.
Bad parameters raise `QueryError`, which the HTTP API answers with 400 and its message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pandas as pd

from accounting.chargeback import TeamRule, chargeback, label_key
from accounting.costmodel import WORKLOAD
from accounting.ledger import HOUR, Ledger
from accounting.pricebook import PriceBook

MAX_WINDOW = 400 * 86400
MAX_SETS = 1000
# aggregate -> chargeback dimensions; a job or pod name is unique only in its namespace.
AGGREGATES: dict[str, tuple[str, ...]] = {
    "cluster": (),
    "namespace": ("namespace",),
    "team": ("team",),
    "job": ("namespace", "job"),
    "controller": ("namespace", "job"),
    "pod": ("namespace", "pod"),
    "gpu_model": ("model",),
    "node": ("node",),
}
_HARDWARE = ("model", "node")
_DURATION = re.compile(r"(\d+)([mhdw])")
_UNIT_SECONDS = {"m": 60, "h": HOUR, "d": 86400, "w": 7 * 86400}


class QueryError(ValueError):
    """A parameter of the query is wrong; the message says what to send instead."""


@dataclass(frozen=True)
class AllocationQuery:
    start: int
    end: int
    dims: tuple[str, ...]
    idle: str = "row"
    include_idle: bool = True
    step: int | None = None

    def windows(self) -> list[tuple[int, int]]:
        if not self.step:
            return [(self.start, self.end)]
        return [(t, min(t + self.step, self.end)) for t in range(self.start, self.end, self.step)]


# ---------------------------------------------------------------- parameters
def parse_duration(text: str, what: str) -> int:
    """Seconds of `24h`, `7d`, `90m`, `2w`; whole hours only."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise QueryError(f"{what} {text!r} is not a duration: use e.g. 1h, 24h, 7d or 2w")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0 or seconds % HOUR:
        raise QueryError(
            f"{what} {text!r} is not a whole number of hours: the ledger is hourly; "
            "use e.g. 1h, 24h or 7d"
        )
    return seconds


def _instant(text: str) -> int:
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return int(float(text))
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise QueryError(
            f"cannot read {text!r} as a time: use RFC 3339 (2026-11-01T00:00:00Z) or unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def parse_window(text: str | None, now: float) -> tuple[int, int]:
    """[start, end) in unix seconds, on hour boundaries, for OpenCost's window forms.

    Windows that end now end at the last whole hour: the ledger has no part-hours.
    """
    if text is None or not text.strip():
        raise QueryError(
            "window is required: e.g. window=2026-11-01T00:00:00Z,2026-12-01T00:00:00Z, "
            "window=7d or window=lastmonth"
        )
    text = text.strip()
    this_hour = int(now) // HOUR * HOUR
    today = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monday = today - timedelta(days=today.weekday())
    first = today.replace(day=1)
    previous_first = (first - timedelta(days=1)).replace(day=1)
    words = {
        "today": (today, None),
        "yesterday": (today - timedelta(days=1), today),
        "week": (monday, None),
        "lastweek": (monday - timedelta(days=7), monday),
        "month": (first, None),
        "lastmonth": (previous_first, first),
    }
    if text.lower() in words:
        begin, finish = words[text.lower()]
        start = int(begin.timestamp())
        end = this_hour if finish is None else int(finish.timestamp())
    elif "," in text:
        parts = text.split(",")
        if len(parts) != 2:
            raise QueryError(f"window {text!r} must be two times separated by one comma")
        start, end = _instant(parts[0]), _instant(parts[1])
        for name, value in (("start", start), ("end", end)):
            if value % HOUR:
                raise QueryError(
                    f"window {name} {_iso(value)} is not on an hour: the ledger is hourly; "
                    "use times like 2026-11-01T13:00:00Z"
                )
    else:
        end = this_hour
        start = end - parse_duration(text, "window")
    if end <= start:
        raise QueryError(
            f"window {text!r} is empty: it starts at {_iso(start)} and ends at {_iso(end)} "
            "(the ledger has whole hours only)"
        )
    if end - start > MAX_WINDOW:
        raise QueryError(
            f"window {text!r} is {(end - start) // 86400} days long; ask for at most "
            f"{MAX_WINDOW // 86400} days at once"
        )
    return start, end


def parse_aggregate(text: str | None, teams: TeamRule) -> tuple[str, ...]:
    """Chargeback dimensions for an `aggregate` parameter (default: namespace)."""
    names = [p.strip() for p in (text or "namespace").split(",") if p.strip()]
    if not names:
        names = ["namespace"]
    team_labels = {label_key(label) for label in teams.labels}
    dims: list[str] = []
    for name in names:
        if name.startswith("label:") and label_key(name[len("label:") :]) in team_labels:
            wanted = AGGREGATES["team"]
        elif name in AGGREGATES:
            wanted = AGGREGATES[name]
        else:
            labels = ", ".join(f"label:{label}" for label in teams.labels)
            raise QueryError(
                f"cannot aggregate by {name!r}: use {', '.join(AGGREGATES)} or {labels}, "
                "or several separated by commas"
            )
        dims.extend(d for d in wanted if d not in dims)
    return tuple(dims)


def _flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    value = params.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise QueryError(f"{name} must be true or false, got {value!r}")


def parse_query(
    params: Mapping[str, str], now: float, teams: TeamRule, idle: str = "row"
) -> AllocationQuery:
    """Check every parameter of an allocation request before touching the ledger."""
    known = {"window", "aggregate", "step", "accumulate", "shareIdle", "includeIdle", "resolution"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise QueryError(f"unknown parameters {unknown}: use {sorted(known)}")
    start, end = parse_window(params.get("window"), now)
    dims = parse_aggregate(params.get("aggregate"), teams)
    share = _flag(params, "shareIdle", idle == "share")
    step = None
    if params.get("step") and not _flag(params, "accumulate", False):
        step = parse_duration(params["step"], "step")
        if math.ceil((end - start) / step) > MAX_SETS:
            raise QueryError(
                f"step {params['step']} makes more than {MAX_SETS} sets: use a longer step"
            )
    return AllocationQuery(
        start=start,
        end=end,
        dims=dims,
        idle="share" if share else "row",
        include_idle=_flag(params, "includeIdle", True),
        step=step,
    )


# ---------------------------------------------------------------- the answer
def allocation_sets(
    ledger: Ledger,
    query: AllocationQuery,
    *,
    price_book: PriceBook,
    teams: TeamRule,
    cluster: str = "gpuledger",
) -> tuple[list[dict[str, dict[str, Any]]], list[int]]:
    """The sets of the answer and the hours of the window the ledger lacks."""
    sets, missing = [], []
    for start, end in query.windows():
        frame = chargeback(
            ledger, start, end, price_book=price_book, by=query.dims, idle=query.idle, teams=teams
        )
        missing.extend(frame.attrs.get("missing_hours", []))
        sets.append(allocation_set(frame, query, cluster, start, end))
    return sets, missing


def allocation_set(
    frame: pd.DataFrame, query: AllocationQuery, cluster: str, start: int, end: int
) -> dict[str, dict[str, Any]]:
    """One OpenCost allocation set (name -> allocation) from a chargeback frame."""
    window = {"start": _iso(start), "end": _iso(end)}
    hours = (end - start) / HOUR
    currency = frame.attrs.get("currency", "")
    out: dict[str, dict[str, Any]] = {}
    for row in frame.to_dict("records"):
        if not query.include_idle and row["category"] == "__idle__":
            continue
        name = allocation_name(row, query.dims, cluster)
        efficiency = row["efficiency"] if math.isfinite(row["efficiency"]) else 0.0
        cost = _money(row["cost_allocation"])
        out[name] = {
            "name": name,
            "properties": _properties(row, query.dims, cluster),
            "window": window,
            "start": window["start"],
            "end": window["end"],
            "minutes": hours * 60,
            "gpuCount": _round(row["gpu_hours_held"] / hours),
            "gpuHours": _round(row["gpu_hours_held"]),
            "gpuCost": cost,
            "gpuCostAdjustment": 0.0,
            "gpuEfficiency": _round(efficiency),
            "cpuCost": 0.0,
            "ramCost": 0.0,
            "pvCost": 0.0,
            "networkCost": 0.0,
            "loadBalancerCost": 0.0,
            "sharedCost": 0.0,
            "externalCost": 0.0,
            "totalCost": cost,
            "totalEfficiency": _round(efficiency),
            # What gpuledger knows beyond OpenCost's fields (docs/cost-model.md).
            "gpuledger": {
                "category": row["category"],
                "currency": currency,
                "gpuHoursBusy": _round(row["gpu_hours_busy"]),
                "memoryGBHours": _round(row["memory_gb_hours"]),
                "energyKWh": _round(row["energy_kwh"]),
                "costUsageBasis": _money(row["cost_usage"]),
                "idleCostInAllocation": _money(row["idle_cost_in_allocation"]),
                "unallocatedShare": _money(row["unallocated_share"]),
                "idle": query.idle,
            },
        }
    return out


def allocation_name(row: Mapping[str, Any], dims: tuple[str, ...], cluster: str) -> str:
    """`research`, `ns/PyTorchJob/train`, `ns/pod`; `__idle__`, or `<model>/__idle__`
    when the aggregation keeps hardware apart."""
    if not dims:
        return cluster if row["category"] == WORKLOAD else row["category"]
    if row["category"] == WORKLOAD:
        return "/".join(str(row[d]) for d in dims)
    hardware = [str(row[d]) for d in dims if d in _HARDWARE]
    return "/".join([*hardware, row["category"]])


def _properties(row: Mapping[str, Any], dims: tuple[str, ...], cluster: str) -> dict[str, Any]:
    properties: dict[str, Any] = {"cluster": cluster}
    if row["category"] != WORKLOAD:
        properties.update({d: row[d] for d in dims if d in _HARDWARE})
        return properties
    for dim in dims:
        value = row[dim]
        if dim == "job":
            kind, _, name = str(value).partition("/")
            properties["controllerKind"], properties["controller"] = kind, name
        elif dim == "model":
            properties["gpuModel"] = value
        else:
            properties[dim] = value
    return properties


def _money(value: Decimal | float) -> float:
    # Decimal cents to a JSON number: float(Decimal("12.30")) prints as 12.3 exactly.
    return float(value)


def _round(value: float) -> float:
    return round(float(value), 6)


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
