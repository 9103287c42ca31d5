"""Collective, Inspector and link families for prometheus_client.

`collect()` renders the aggregator's totals and the snapshot of the last `refresh()`;
it never reads a file or the hardware. The exporter's collection loop calls
`refresh(gpus, attribution)` each cycle, which reads the NCCL Inspector directory and
the InfiniBand counters and attributes link bytes to pods.

Series of two pod objects with the same namespace/pod/container (a pod recreated under
its name while the old one is still known) are merged, so no series is exported twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from exporter import catalogue as cat
from exporter.attribution import Attribution, PodRef
from exporter.catalogue import MetricSpec, MetricType
from exporter.collective.aggregator import BUSBW_BUCKETS, CollectiveAggregator
from exporter.collective.infiniband import read_infiniband
from exporter.collective.inspector import InspectorReader, InspectorSnapshot
from exporter.collective.links import LinkAttributor, LinkSnapshot, devices_from_attribution
from exporter.model import GpuReading

log = logging.getLogger(__name__)

_BUCKET_LABELS = tuple(floatToGoString(b) for b in BUSBW_BUCKETS) + ("+Inf",)


def _pod_labels(pod: PodRef | None) -> tuple[str, str, str]:
    return ("", "", "") if pod is None else (pod.namespace, pod.pod, pod.container)


class _Families:
    """Samples gathered per family and label values; yielded in catalogue order."""

    def __init__(self) -> None:
        self._values: dict[MetricSpec, dict[tuple[str, ...], float]] = {}
        self._histograms: dict[MetricSpec, dict[tuple[str, ...], list[float]]] = {}

    def add(self, spec: MetricSpec, labels: tuple[str, ...], value: float) -> None:
        assert len(labels) == len(spec.labels), spec.name
        values = self._values.setdefault(spec, {})
        if spec.type is MetricType.COUNTER:
            values[labels] = values.get(labels, 0.0) + value
        else:
            values[labels] = value

    def add_histogram(
        self, spec: MetricSpec, labels: tuple[str, ...], counts: Sequence[int], total: float
    ) -> None:
        acc = self._histograms.setdefault(spec, {}).get(labels)
        if acc is None:
            self._histograms[spec][labels] = [*counts, total]
        else:
            for i, v in enumerate([*counts, total]):
                acc[i] += v

    def __iter__(self) -> Iterator[Metric]:
        for spec in cat.CATALOGUE.values():
            if spec in self._values:
                cls = CounterMetricFamily if spec.type is MetricType.COUNTER else GaugeMetricFamily
                family = cls(spec.name, spec.help, labels=spec.labels)
                for labels, value in self._values[spec].items():
                    family.add_metric(labels, value)
                yield family
            if spec in self._histograms:
                family = HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
                for labels, acc in self._histograms[spec].items():
                    counts, total = acc[:-1], acc[-1]
                    family.add_metric(
                        labels,
                        buckets=list(zip(_BUCKET_LABELS, counts, strict=True)),
                        sum_value=total,
                    )
                yield family


class CollectiveCollector:
    """Register with a prometheus_client registry; call `refresh` from the collection loop."""

    def __init__(
        self,
        aggregator: CollectiveAggregator,
        node: str,
        inspector: InspectorReader | None = None,
        infiniband_sys_root: str | None = "/sys",
    ) -> None:
        self.aggregator = aggregator
        self.node = node
        self._inspector = inspector
        self._sys_root = infiniband_sys_root
        self._links = LinkAttributor()
        self._inspector_snapshot: InspectorSnapshot | None = None
        self._link_snapshot: LinkSnapshot | None = None

    def refresh(
        self, gpus: Sequence[GpuReading] = (), attribution: Attribution | None = None
    ) -> None:
        """Read Inspector files and link counters; keep them for the next scrapes."""
        holders = devices_from_attribution(attribution) if attribution is not None else {}
        if self._inspector is not None:
            try:
                self._inspector_snapshot = self._inspector.read()
            except Exception:
                log.exception("reading NCCL Inspector files failed")
                self._inspector_snapshot = None
        try:
            ports = read_infiniband(self._sys_root) if self._sys_root else []
            self._link_snapshot = self._links.update(gpus, ports, holders)
        except Exception:
            log.exception("attributing link counters failed")
            self._link_snapshot = None

    def describe(self) -> list[Metric]:
        return []  # series come and go with pods: nothing to declare up front

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        self._add_probe(families)
        self._add_inspector(families)
        self._add_links(families)
        yield from families

    def _add_probe(self, families: _Families) -> None:
        node = self.node
        snapshot = self.aggregator.snapshot()
        for op in snapshot.operations:
            labels = (*_pod_labels(op.pod), node, op.operation)
            families.add(cat.COLLECTIVE_BYTES, labels, op.bytes)
            families.add(cat.COLLECTIVE_BUS_BYTES, labels, op.bus_bytes)
            families.add(cat.COLLECTIVE_SECONDS, labels, op.seconds)
            families.add(cat.COLLECTIVE_CALLS, labels, op.calls)
            families.add(cat.COLLECTIVE_WORLD_SIZE, labels, op.world_size)
            if op.algbw_bytes_per_s is not None and op.busbw_bytes_per_s is not None:
                families.add(cat.COLLECTIVE_ALGBW, labels, op.algbw_bytes_per_s)
                families.add(cat.COLLECTIVE_BUSBW, labels, op.busbw_bytes_per_s)
            if op.busbw_count:
                families.add_histogram(
                    cat.COLLECTIVE_BUSBW_HISTOGRAM, labels, op.busbw_bucket_counts, op.busbw_sum
                )
        for stats in snapshot.pods:
            labels = (*_pod_labels(stats.pod), node)
            families.add(cat.PROBE_REPORTS, labels, stats.reports)
            families.add(cat.PROBE_DROPPED_REPORTS, labels, stats.dropped_reports)
        for reason, count in snapshot.rejected.items():
            families.add(cat.PROBE_REJECTED, (node, reason), count)
        families.add(cat.PROBE_CONNECTIONS, (node,), snapshot.connections)

    def _add_inspector(self, families: _Families) -> None:
        snapshot = self._inspector_snapshot
        if snapshot is None:
            return
        for s in snapshot.series:
            labels = (
                *_pod_labels(s.pod),
                self.node,
                s.uuid,
                s.operation,
                s.comm,
                s.nranks,
                s.n_nodes,
                s.message_size,
            )
            families.add(s.spec, labels, s.value)
        for f in snapshot.files:
            families.add(cat.NCCL_INSPECTOR_FILE_AGE, (self.node, f.uuid), f.age_seconds)

    def _add_links(self, families: _Families) -> None:
        snapshot = self._link_snapshot
        if snapshot is None:
            return
        for port in snapshot.ib_ports:
            for direction, value in (("tx", port.xmit_bytes), ("rx", port.rcv_bytes)):
                if value is not None:
                    labels = (self.node, port.device, str(port.port), direction)
                    families.add(cat.IB_BYTES, labels, value)
        for entry in snapshot.pods:
            labels = (*_pod_labels(entry.pod), self.node, *entry.device, entry.direction)
            families.add(entry.spec, labels, entry.bytes)
