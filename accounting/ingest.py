"""Hourly ingestion: Prometheus counters and Kubernetes metadata into the ledger.

For each UTC hour, the `increase()` of the exporter's counters over that hour, summed
per pod and device class (namespace, pod, node, GPU model, sharing) and per node and
GPU model for capacity. `increase()` handles counter resets (exporter restarts) and
missed scrapes. Queries go out in chunks of hours, each a `query_range` with a one-hour
step, so a month is never asked for at once.

Guarantees (docs/cost-model.md, section 8):
- an hour's rows and its "done" mark are one transaction: re-running replaces it;
- a crash at any point loses nothing and counts nothing twice (`resume=True` skips
  done hours; metadata merges are order-free);
- a chunk with partial data (warnings, a node's capacity missing, a whole hour missing
  between hours with data) or an unpriced GPU model writes nothing;
- an hour that Prometheus no longer has is never overwritten with nothing.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from accounting.kube import KubeUnavailable, ObjectRef, OwnerResolver
from accounting.ledger import HOUR, Ledger, PodMetadata
from accounting.pricebook import PriceBook
from accounting.prometheus import PartialDataError, PrometheusClient, Sample
from exporter import catalogue

log = logging.getLogger(__name__)

POD_KEY = ("namespace", "pod", "node", "model", "sharing")
CAPACITY_KEY = ("node", "model")


def _pod_sum(metric: str) -> str:
    return f"sum by ({', '.join(POD_KEY)}) (increase({metric}[{{window}}]))"


def _gpu_sum(metric: str) -> str:
    return f"sum by ({', '.join(CAPACITY_KEY)}) (increase({metric}[{{window}}]))"


_ALLOC = catalogue.POD_GPU_ALLOCATED_SECONDS.name
_SAMPLED = catalogue.GPU_SAMPLED_SECONDS.name
_GPU_PODS = f"group by (namespace, pod) (last_over_time({_ALLOC}[{{range}}]))"
_GPU_NODES = f"group by (node) (last_over_time({_SAMPLED}[{{range}}]))"


@dataclass(frozen=True)
class IngestQueries:
    """The PromQL ingestion runs. `{window}` is one hour; `{range}` the chunk.

    Replace them (e.g. with recording rules) to make large clusters cheaper to ask;
    the result labels must stay the same.
    """

    held: str = _pod_sum(_ALLOC)
    busy: str = _pod_sum(catalogue.POD_GPU_BUSY_SECONDS.name)
    memory: str = _pod_sum(catalogue.POD_GPU_MEMORY_BYTE_SECONDS.name)
    energy: str = _pod_sum(catalogue.POD_GPU_ENERGY.name)
    capacity: str = _gpu_sum(_SAMPLED)
    gpus: str = (
        f"count by (node, model) (group by (node, model, uuid) (increase({_SAMPLED}[{{window}}])))"
    )
    gpu_busy: str = _gpu_sum(catalogue.GPU_BUSY_SECONDS.name)
    gpu_energy: str = _gpu_sum(catalogue.GPU_ENERGY.name)
    # kube-state-metrics, for the pods and nodes that used GPUs in the chunk.
    pod_owner: str = (
        f"last_over_time(kube_pod_owner[{{range}}]) and on (namespace, pod) {_GPU_PODS}"
    )
    pod_labels: str = (
        f"last_over_time(kube_pod_labels[{{range}}]) and on (namespace, pod) {_GPU_PODS}"
    )
    pod_requests: str = (
        "sum by (namespace, pod) (last_over_time(kube_pod_container_resource_requests"
        f'{{{{resource=~"nvidia.com/.+|nvidia_com_.+"}}}}[{{range}}])) and on (namespace, pod) '
        f"{_GPU_PODS}"
    )
    job_owner: str = 'last_over_time(kube_job_owner{{owner_kind!="<none>"}}[{range}])'
    replicaset_owner: str = 'last_over_time(kube_replicaset_owner{{owner_kind!="<none>"}}[{range}])'
    namespace_labels: str = "last_over_time(kube_namespace_labels[{range}])"
    node_labels: str = f"last_over_time(kube_node_labels[{{range}}]) and on (node) {_GPU_NODES}"


_USAGE_QUERIES = ("held", "busy", "memory", "energy")
_CAPACITY_QUERIES = ("capacity", "gpus", "gpu_busy", "gpu_energy")


class IngestError(RuntimeError):
    """Ingestion cannot go on; the message says what to fix."""


@dataclass
class IngestResult:
    hours_written: int = 0
    hours_skipped: int = 0  # done already (resume)
    hours_kept: list[int] = field(default_factory=list)  # Prometheus had nothing; ledger kept
    usage_rows: int = 0
    pods_resolved_by_api: int = 0
    seconds_total: float = 0.0
    seconds_prometheus: float = 0.0
    seconds_kube: float = 0.0
    seconds_ledger: float = 0.0

    @property
    def seconds_own(self) -> float:
        """Time in gpuledger's own code: not waiting on Prometheus, the API or the ledger."""
        return max(
            0.0,
            self.seconds_total - self.seconds_prometheus - self.seconds_kube - self.seconds_ledger,
        )


@dataclass
class ChunkData:
    """Everything one chunk of hours puts in the ledger, checked, before any write."""

    hours: list[int]
    usage: dict[int, list[dict]]
    capacity: dict[int, list[dict]]
    pods: list[PodMetadata]
    namespaces: dict[str, tuple[dict[str, str], int]]
    nodes: dict[str, tuple[dict[str, str], int]]


Progress = Callable[[int, int, int], None]  # hours done, hours in total, last hour


class Ingestor:
    def __init__(
        self,
        client: PrometheusClient,
        ledger: Ledger,
        price_book: PriceBook,
        *,
        resolver: OwnerResolver | None = None,
        queries: IngestQueries | None = None,
        chunk_hours: int = 24,
        progress: Progress | None = None,
        allow_gaps: bool = False,
    ) -> None:
        if chunk_hours < 1:
            raise ValueError("chunk_hours must be at least 1")
        self.client = client
        self.ledger = ledger
        self.price_book = price_book
        self.resolver = resolver
        self.queries = queries or IngestQueries()
        self.chunk_hours = chunk_hours
        self.progress = progress
        self.allow_gaps = allow_gaps
        self._kube_seconds = 0.0

    # ---------------------------------------------------------------- the run
    def run(self, start: int, end: int, *, resume: bool = False) -> IngestResult:
        """Ingest the hours in [start, end) (both on hour boundaries)."""
        if start % HOUR or end % HOUR:
            raise ValueError("start and end must be on hour boundaries")
        started = time.monotonic()
        prometheus_before = self.client.stats.seconds_waiting
        result = IngestResult()
        hours = list(range(start, end, HOUR))
        if resume:
            done = self.ledger.done_hours(start, end)
            result.hours_skipped = len(done)
            hours = [h for h in hours if h not in done]
        total, finished = len(hours) + result.hours_skipped, result.hours_skipped
        for chunk in _chunks(hours, self.chunk_hours):
            data = self.fetch(chunk)
            ledger_started = time.monotonic()
            self._write(data, result)
            result.seconds_ledger += time.monotonic() - ledger_started
            finished += len(chunk)
            if self.progress:
                self.progress(finished, total, chunk[-1])
        result.seconds_total = time.monotonic() - started
        result.seconds_prometheus = self.client.stats.seconds_waiting - prometheus_before
        result.seconds_kube = self._kube_seconds
        return result

    def fetch(self, hours: list[int]) -> ChunkData:
        """Query one chunk of contiguous hours and check it; writes nothing."""
        first, last = hours[0], hours[-1]
        q = self.queries
        ranged = {}
        for name in (*_USAGE_QUERIES, *_CAPACITY_QUERIES):
            promql = getattr(q, name).format(window="1h")
            # The value at h + 1h is the increase over the hour that starts at h.
            ranged[name] = self.client.query_range(promql, first + HOUR, last + HOUR, HOUR)
        usage = _by_hour(ranged, _USAGE_QUERIES, POD_KEY, _usage_row, set(hours))
        capacity = _by_hour(ranged, _CAPACITY_QUERIES, CAPACITY_KEY, _capacity_row, set(hours))
        self._check(hours, usage, capacity)
        pods, namespaces, nodes = self._metadata(hours, usage)
        return ChunkData(hours, usage, capacity, pods, namespaces, nodes)

    # ---------------------------------------------------------------- checks
    def _check(
        self, hours: list[int], usage: dict[int, list[dict]], capacity: dict[int, list[dict]]
    ) -> None:
        with_data = [h for h in hours if capacity.get(h)]
        if with_data and not self.allow_gaps:
            holes = [h for h in hours if with_data[0] < h < with_data[-1] and not capacity.get(h)]
            if holes:
                raise PartialDataError(
                    f"Prometheus has no GPU data at all for {iso(holes[0])}"
                    f"{f' and {len(holes) - 1} more hours' if len(holes) > 1 else ''}, between "
                    "hours that have data: a scrape outage or a store that did not answer. "
                    "Nothing was written for this chunk; ingest it again when the data is "
                    "back, or pass --allow-gaps to record those hours as empty"
                )
        seen: dict[str, str] = {}
        for hour in hours:
            for row in capacity.get(hour, []) + usage.get(hour, []):
                seen.setdefault(row["model"], f"node {row['node']} at {iso(hour)}")
            nodes_with_capacity = {row["node"] for row in capacity.get(hour, [])}
            missing = sorted({row["node"] for row in usage.get(hour, [])} - nodes_with_capacity)
            if missing:
                raise PartialDataError(
                    f"partial data for the hour {iso(hour)}: pods used GPUs on "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} but "
                    f"{catalogue.GPU_SAMPLED_SECONDS.name} has no capacity there. A store or "
                    "shard did not answer, or the exporter's GPU series are missing; nothing "
                    "was written for this chunk"
                )
        self.price_book.check(seen.items())

    # ---------------------------------------------------------------- metadata
    def _metadata(
        self, hours: list[int], usage: dict[int, list[dict]]
    ) -> tuple[list[PodMetadata], dict, dict]:
        first, end = hours[0], hours[-1] + HOUR
        q = self.queries
        rng = f"{end - first}s"

        def instant(template: str) -> list[Sample]:
            return self.client.query(template.format(range=rng), end)

        seen: dict[tuple[str, str], list[int]] = {}
        nodes_of: dict[tuple[str, str], str] = {}
        for hour in hours:
            for row in usage.get(hour, []):
                if not row["namespace"] or not row["pod"]:
                    continue
                key = (row["namespace"], row["pod"])
                span = seen.setdefault(key, [hour, hour])
                span[0], span[1] = min(span[0], hour), max(span[1], hour)
                nodes_of[key] = row["node"]
        if not seen:
            return [], {}, {}

        owners: dict[tuple[str, str], ObjectRef] = {}
        for sample in sorted(
            instant(q.pod_owner), key=lambda s: s.labels.get("owner_is_controller") != "true"
        ):
            key = (sample.labels.get("namespace", ""), sample.labels.get("pod", ""))
            kind = sample.labels.get("owner_kind", "")
            if key in seen and kind and kind != "<none>" and key not in owners:
                owners[key] = ObjectRef(kind, sample.labels.get("owner_name", ""))
        labels = _labels_by(instant(q.pod_labels), ("namespace", "pod"))
        requests = {
            (s.labels.get("namespace", ""), s.labels.get("pod", "")): s.points[0][1]
            for s in instant(q.pod_requests)
        }
        parents: dict[tuple[str, str, str], ObjectRef] = {}
        for template, kind, name_label in (
            (q.job_owner, "Job", "job_name"),
            (q.replicaset_owner, "ReplicaSet", "replicaset"),
        ):
            for s in instant(template):
                parents[(s.labels.get("namespace", ""), kind, s.labels.get(name_label, ""))] = (
                    ObjectRef(s.labels.get("owner_kind", ""), s.labels.get("owner_name", ""))
                )
        namespaces = {
            ns: (values, end)
            for (ns,), values in _labels_by(instant(q.namespace_labels), ("namespace",)).items()
        }
        nodes = {
            node: (values, end)
            for (node,), values in _labels_by(instant(q.node_labels), ("node",)).items()
        }

        resolutions = self.ledger.pod_resolutions(seen) if self.resolver else {}
        pods = []
        for key in sorted(seen):
            namespace, pod = key
            owner = owners.get(key)
            chain = [owner] if owner else []
            while chain and len(chain) < 4:
                parent = parents.get((namespace, chain[-1].kind, chain[-1].name))
                if parent is None or not parent.kind:
                    break
                chain.append(parent)
            record = dict(
                namespace=namespace,
                pod=pod,
                first_seen=seen[key][0],
                last_seen=seen[key][1] + HOUR,
                # As of the pod's last hour in the chunk: the same whatever the chunking,
                # so a resumed run merges to the same ledger as an uninterrupted one.
                observed_at=seen[key][1] + HOUR,
                node=nodes_of[key],
                labels=labels.get(key, {}),
                gpu_request=requests.get(key),
                resolved_by="kube-state-metrics" if chain else "none",
                chain=chain,
            )
            if self.resolver and resolutions.get(key) != "kube-api":
                self._resolve(record, owner)
            pods.append(_pod_metadata(record))
        return pods, namespaces, nodes

    def _resolve(self, record: dict, owner: ObjectRef | None) -> None:
        """Deepen a pod's record from the API; turn the API off for the run if it is down."""
        assert self.resolver is not None
        started = time.monotonic()
        try:
            found = self.resolver.resolve(record["namespace"], record["pod"], owner)
        except KubeUnavailable as error:
            log.warning(
                "%s; owner chains come from kube-state-metrics for the rest of this run", error
            )
            self.resolver = None
            return
        finally:
            self._kube_seconds += time.monotonic() - started
        if found.pod_labels is None and not found.owners_read:
            return  # the pod and its owner are gone: kube-state-metrics knew more
        if found.pod_labels:
            record["labels"] = found.pod_labels
        if found.uid:
            record["uid"] = found.uid
        if found.chain:
            record["chain"] = found.chain
        record.update(
            job_labels=found.job_labels,
            queue=found.queue,
            cluster_queue=found.cluster_queue,
            cohort=found.cohort,
            resolved_by="kube-api",
        )

    # ---------------------------------------------------------------- writes
    def _write(self, data: ChunkData, result: IngestResult) -> None:
        self.ledger.merge_metadata(data.pods, data.namespaces, data.nodes)
        result.pods_resolved_by_api += sum(p.resolved_by == "kube-api" for p in data.pods)
        empty = [h for h in data.hours if not data.usage.get(h) and not data.capacity.get(h)]
        keep = self.ledger.hours_with_capacity(empty)
        for hour in data.hours:
            if hour in keep:
                log.warning(
                    "Prometheus has no GPU data for %s (beyond its retention?); "
                    "the ledger keeps what it has for that hour",
                    iso(hour),
                )
                result.hours_kept.append(hour)
                continue
            rows = data.usage.get(hour, [])
            self.ledger.write_hour(hour, rows, data.capacity.get(hour, []), self.client.url)
            result.hours_written += 1
            result.usage_rows += len(rows)


# ---------------------------------------------------------------- helpers
def _chunks(hours: list[int], size: int) -> Iterator[list[int]]:
    """Runs of contiguous hours, at most `size` long."""
    run: list[int] = []
    for hour in hours:
        if run and (hour != run[-1] + HOUR or len(run) == size):
            yield run
            run = []
        run.append(hour)
    if run:
        yield run


def _to_int(value: float) -> int:
    # Milli-units, rounded once here so that every later sum is exact.
    if not math.isfinite(value) or value <= 0:
        return 0
    return round(value * 1000)


def _usage_row(values: dict[str, float]) -> dict | None:
    row = {
        "held_ms": _to_int(values.get("held", 0.0)),
        "busy_ms": _to_int(values.get("busy", 0.0)),
        "memory_byte_seconds": max(0.0, values.get("memory", 0.0))
        if math.isfinite(values.get("memory", 0.0))
        else 0.0,
        "energy_mj": _to_int(values.get("energy", 0.0)),
    }
    if not (row["held_ms"] or row["busy_ms"] or row["energy_mj"] or row["memory_byte_seconds"]):
        return None  # a series that lingered after its pod ended
    return row


def _capacity_row(values: dict[str, float]) -> dict | None:
    row = {
        "capacity_ms": _to_int(values.get("capacity", 0.0)),
        "gpus": int(values.get("gpus", 0.0)) if math.isfinite(values.get("gpus", 0.0)) else 0,
        "busy_ms": _to_int(values.get("gpu_busy", 0.0)),
        "energy_mj": _to_int(values.get("gpu_energy", 0.0)),
    }
    if not row["capacity_ms"]:
        return None
    return row


def _by_hour(
    results: dict[str, list[Sample]],
    names: Iterable[str],
    key_labels: tuple[str, ...],
    make_row: Callable[[dict[str, float]], dict | None],
    hours: set[int],
) -> dict[int, list[dict]]:
    """Join several range results by (hour, key labels) into ledger rows."""
    joined: dict[tuple, dict[str, float]] = defaultdict(dict)
    for name in names:
        for sample in results[name]:
            key = tuple(sample.labels.get(label, "") for label in key_labels)
            for t, value in sample.points:
                hour = int(round(t)) - HOUR
                if hour in hours:
                    cell = joined[(hour, key)]
                    cell[name] = cell.get(name, 0.0) + value
    rows: dict[int, list[dict]] = defaultdict(list)
    for (hour, key), values in sorted(joined.items()):
        row = make_row(values)
        if row is not None:
            rows[hour].append({**dict(zip(key_labels, key, strict=True)), **row})
    return rows


def ksm_label_key(name: str) -> str:
    """kube-state-metrics exports label `cost-center` as `label_cost_center`."""
    return name[len("label_") :]


def _labels_by(samples: list[Sample], key_labels: tuple[str, ...]) -> dict[tuple, dict[str, str]]:
    found: dict[tuple, dict[str, str]] = {}
    for sample in sorted(samples, key=lambda s: sorted(s.labels.items())):
        key = tuple(sample.labels.get(label, "") for label in key_labels)
        values = {
            ksm_label_key(k): v for k, v in sample.labels.items() if k.startswith("label_") and v
        }
        found.setdefault(key, {}).update(values)
    return found


def _pod_metadata(record: dict) -> PodMetadata:
    chain: list[ObjectRef] = record.pop("chain")
    if chain:
        record.update(
            owner_kind=chain[0].kind,
            owner_name=chain[0].name,
            job_kind=chain[-1].kind,
            job_name=chain[-1].name,
        )
    else:
        record.update(job_kind="Pod", job_name=record["pod"])
    return PodMetadata(chain=tuple(ref.label for ref in chain), **record)


# ---------------------------------------------------------------- times
_RELATIVE = re.compile(r"now(?:\s*-\s*(\d+)\s*([smhd]))?$")


def parse_time(text: str, now: float | None = None) -> int:
    """Unix seconds from ISO 8601 (UTC unless it says otherwise), unix seconds, `now` or
    `now-6h`."""
    text = text.strip()
    now = time.time() if now is None else now
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = relative.groups()
        seconds = int(amount or 0) * {"s": 1, "m": 60, "h": 3600, "d": 86400}.get(unit or "s", 1)
        return int(now - seconds)
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise IngestError(
            f"cannot read the time {text!r}: use ISO 8601 (2024-05-01 or 2024-05-01T13:00Z), "
            "unix seconds, `now` or `now-6h`"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%MZ")


def floor_hour(ts: float) -> int:
    return int(ts) // HOUR * HOUR


def ceil_hour(ts: float) -> int:
    return -(-int(ts) // HOUR) * HOUR


def plan_range(
    ledger: Ledger,
    start: int | None,
    end: int | None,
    *,
    now: float | None = None,
    settle_seconds: int = 300,
) -> tuple[int, int]:
    """The hours to ingest: [start, end) on hour boundaries, only complete hours.

    Without a start: from the hour after the ledger's last, or the start of the month
    when the ledger is empty. Without an end: up to the last complete hour.
    """
    now = time.time() if now is None else now
    last_complete = floor_hour(now - settle_seconds)
    if start is None:
        last = ledger.last_hour()
        if last is not None:
            start = last + HOUR
        else:
            today = datetime.fromtimestamp(now, UTC)
            start = int(datetime(today.year, today.month, 1, tzinfo=UTC).timestamp())
    start = floor_hour(start)
    end = last_complete if end is None else ceil_hour(end)
    if end > last_complete:
        raise IngestError(
            f"--to {iso(end)} is not a complete hour yet: the last complete hour ends at "
            f"{iso(last_complete)} (hours settle {settle_seconds}s after they end)"
        )
    if end < start:
        raise IngestError(f"--from {iso(start)} is after --to {iso(end)}")
    return start, end
