"""The exporter's state after one collection: what a scrape renders.

The collection loop builds a new `ExporterState` each time and swaps it in whole, so a
scrape always sees one consistent collection and never waits for the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.attribution import Attribution
from exporter.integrator import UsageTotals
from exporter.model import DeviceSnapshot
from exporter.pod_usage import PodDeviceUsage


@dataclass(frozen=True)
class SelfStats:
    """Counters about the exporter itself, cumulative since start."""

    collections: int = 0
    last_collection_timestamp: float | None = None
    nvml_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    attribution_errors: dict[tuple[str, str], int] = field(default_factory=dict)
    dropped_series: int = 0
    collector_up: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class ExporterState:
    node: str
    generation: int  # increases by one per collection
    snapshot: DeviceSnapshot | None
    attribution: Attribution
    usages: tuple[PodDeviceUsage, ...]
    totals: UsageTotals
    stats: SelfStats

    @property
    def source(self) -> str:
        return self.snapshot.source if self.snapshot else "none"


def empty_state(node: str) -> ExporterState:
    return ExporterState(
        node=node,
        generation=0,
        snapshot=None,
        attribution=Attribution(),
        usages=(),
        totals=UsageTotals(),
        stats=SelfStats(),
    )
