"""Build the exporter's collective parts: the probe listener, NCCL Inspector files and
InfiniBand/NVLink/PCIe link counters, as collectors plus the hooks that feed them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from exporter.attribution import PodRef
from exporter.collective.aggregator import AggregatorLimits, CollectiveAggregator
from exporter.collective.collector import CollectiveCollector
from exporter.collective.inspector import InspectorReader
from exporter.collective.server import CollectiveServer
from exporter.state import ExporterState


def build(
    *,
    probe_socket: str | None,
    node: str,
    resolve_pid: Callable[[int], PodRef | None],
    inspector_dir: str | None = None,
    gpu_to_pods: Callable[[str], list[PodRef]] | None = None,
    sys_root: str | None = None,
    live_pods: Callable[[ExporterState], Iterable[PodRef]] | None = None,
    departed_grace_s: float = 300.0,
) -> tuple[list[object], list[Callable[[], None]], list[Callable[[ExporterState], None]]]:
    """(collectors, stop callbacks, after-collection hooks) for the exporter.

    The probe listener starts here (it needs its socket before training starts); the
    Inspector files and link counters are read once per collection, never by a scrape.
    `live_pods` names the pods that still exist; the others' collective series go
    `departed_grace_s` later (the last reports must be scraped first).
    """
    aggregator = CollectiveAggregator(AggregatorLimits(departed_grace_s=departed_grace_s))
    stops: list[Callable[[], None]] = []
    if probe_socket:
        server = CollectiveServer(probe_socket, resolve_pid, node, aggregator=aggregator)
        server.start()
        stops.append(server.stop)
    inspector = None
    if inspector_dir:
        inspector = InspectorReader(inspector_dir, gpu_to_pods or (lambda uuid: []))
    collector = CollectiveCollector(
        aggregator, node, inspector=inspector, infiniband_sys_root=sys_root
    )

    def refresh(state: ExporterState) -> None:
        gpus = state.snapshot.gpus if state.snapshot else ()
        collector.refresh(gpus, state.attribution)
        if live_pods is not None:
            aggregator.retain_pods(live_pods(state))

    return [collector], stops, [refresh]
