"""Hourly ingestion: Prometheus counters and Kubernetes metadata into the ledger.

For each UTC hour, the `increase()` of the exporter's counters over that hour, summed
per pod and device class (namespace, pod, node, GPU model, sharing) and per node and
GPU model for capacity. `increase()` handles counter resets (exporter restarts) and
missed scrapes. Queries go out in chunks of hours, each a `query_range` with a one-hour
step, so a month is never asked for at once; answers are read into numpy columns and
joined there, and a chunk's hours are written in one transaction.

The GPUs' device source (the exporter's `source` label: nvml, or simulated) is recorded
per hour, so that every report made from simulated GPUs says so.

`Ingestor.run_until` also ingests the hour in progress: its rows are written as a
provisional hour (in reports, marked so; not done), which the next run replaces.

Guarantees (docs/cost-model.md, section 8):
- an hour's rows and its "done" mark are one transaction: re-running replaces it;
- a crash at any point loses nothing and counts nothing twice (`resume=True` skips
  done hours; metadata merges are order-free);
- a chunk with partial data (warnings, a node's capacity missing, a whole hour missing
  between hours with data) or an unpriced GPU model writes nothing;
- an hour that Prometheus no longer has is never overwritten with nothing;
- a provisional hour is never marked done: the next run that covers it ingests it again.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import queue
import re
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import requests

from accounting.kube import KubeUnavailable, ObjectRef, OwnerResolver
from accounting.ledger import (
    CAPACITY_COLUMNS,
    GPU_SOURCE_COLUMNS,
    HOUR,
    USAGE_COLUMNS,
    Ledger,
    PodMetadata,
)
from accounting.pricebook import PriceBook
from accounting.prometheus import (
    MAX_POINTS_PER_SERIES,
    ClientStats,
    PartialDataError,
    PrometheusClient,
    Sample,
    SeriesColumns,
)
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
    """The PromQL ingestion runs. `{window}` is one hour (or the part of an hour that a
    provisional hour holds); `{range}` the chunk.

    Replace them (e.g. with recording rules) to make large clusters cheaper to ask;
    the result labels must stay the same. `gpus` counts GPUs by (node, model, source):
    `source` is the exporter's device source (nvml, simulated); an answer without it
    records the GPUs' source as unknown. `pod_owner`, `pod_labels` and `pod_requests`
    are instant vectors keyed by (namespace, pod), filtered by `gpu_pods` when asked.
    """

    held: str = _pod_sum(_ALLOC)
    busy: str = _pod_sum(catalogue.POD_GPU_BUSY_SECONDS.name)
    memory: str = _pod_sum(catalogue.POD_GPU_MEMORY_BYTE_SECONDS.name)
    energy: str = _pod_sum(catalogue.POD_GPU_ENERGY.name)
    capacity: str = _gpu_sum(_SAMPLED)
    gpus: str = (
        "count by (node, model, source) "
        f"(group by (node, model, uuid, source) (increase({_SAMPLED}[{{window}}])))"
    )
    gpu_busy: str = _gpu_sum(catalogue.GPU_BUSY_SECONDS.name)
    gpu_energy: str = _gpu_sum(catalogue.GPU_ENERGY.name)
    # kube-state-metrics, for the pods and nodes that used GPUs in the chunk. The three
    # per-pod queries are asked as one, filtered once by `gpu_pods` (see pod_metadata).
    pod_owner: str = "last_over_time(kube_pod_owner[{range}])"
    pod_labels: str = "last_over_time(kube_pod_labels[{range}])"
    pod_requests: str = (
        "sum by (namespace, pod) (last_over_time(kube_pod_container_resource_requests"
        '{{resource=~"nvidia.com/.+|nvidia_com_.+"}}[{range}]))'
    )
    gpu_pods: str = _GPU_PODS  # the (namespace, pod) pairs that held a GPU in the chunk
    job_owner: str = 'last_over_time(kube_job_owner{{owner_kind!="<none>"}}[{range}])'
    replicaset_owner: str = 'last_over_time(kube_replicaset_owner{{owner_kind!="<none>"}}[{range}])'
    namespace_labels: str = "last_over_time(kube_namespace_labels[{range}])"
    node_labels: str = f"last_over_time(kube_node_labels[{{range}}]) and on (node) {_GPU_NODES}"

    @classmethod
    def recorded(cls) -> IngestQueries:
        """The same questions asked of gpuledger's accounting recording rules
        (alerts/rules, group gpuledger.accounting.rules): one summed series per pod
        instead of one per device, and the GPU count already grouped by uuid (it also
        says which nodes' labels to read), so Prometheus evaluates several times fewer
        series. The rules must have run over the whole range ingested, evaluated at the
        exporter's scrape interval (their group's `interval`). The ledger is then the raw
        queries' (increase() of a sum of counters that reset together is the sum of
        their increases) but for each pod's first hour, which lacks the rule's
        evaluation lag after the pod's first scrape: less than one scrape interval of
        its usage (tests/accounting/test_recorded_queries.py measures it)."""
        from alerts.config import RulesConfig
        from alerts.rules import RecordingNames

        names = RecordingNames(RulesConfig())
        pods = names.pod_counter_sums
        held = pods[catalogue.POD_GPU_ALLOCATED_SECONDS.name]
        return cls(
            held=_pod_sum(held),
            busy=_pod_sum(pods[catalogue.POD_GPU_BUSY_SECONDS.name]),
            memory=_pod_sum(pods[catalogue.POD_GPU_MEMORY_BYTE_SECONDS.name]),
            energy=_pod_sum(pods[catalogue.POD_GPU_ENERGY.name]),
            gpus=(
                f"sum by (node, model, source) (max_over_time({names.node_model_gpus}[{{window}}]))"
            ),
            gpu_pods=f"group by (namespace, pod) (last_over_time({held}[{{range}}]))",
            node_labels=(
                "last_over_time(kube_node_labels[{range}]) and on (node) group by (node) "
                f"(last_over_time({names.node_model_gpus}[{{range}}]))"
            ),
        )


_USAGE_QUERIES = ("held", "busy", "memory", "energy")
_CAPACITY_QUERIES = ("capacity", "gpus", "gpu_busy", "gpu_energy")
_POD_METADATA_QUERIES = ("pod_owner", "pod_labels", "pod_requests")
_OTHER_METADATA_QUERIES = ("job_owner", "replicaset_owner", "namespace_labels", "node_labels")
# Tags each part of the combined per-pod metadata query (a name kube-state-metrics
# does not use).
PART_LABEL = "gpuledger_query"


def metadata_promql(queries: IngestQueries, rng: str) -> dict[str, str]:
    """A chunk's instant metadata queries, by name, for the range `rng` before their time.

    The per-pod ones go as one query, `pods`: each part tagged with PART_LABEL, joined
    with `or`, and filtered once to the pods that held GPUs. Asked apart, each would
    evaluate that filter over every GPU series of the chunk again (on a month of 8,000
    GPUs, half of Prometheus's time for metadata).
    """
    parts = " or ".join(
        f'label_replace({getattr(queries, name).format(range=rng)}, "{PART_LABEL}", '
        f'"{name}", "", "")'
        for name in _POD_METADATA_QUERIES
    )
    combined = f"({parts}) and on (namespace, pod) {queries.gpu_pods.format(range=rng)}"
    return {
        "pods": combined,
        **{name: getattr(queries, name).format(range=rng) for name in _OTHER_METADATA_QUERIES},
    }


def split_pod_metadata(samples: list[Sample]) -> dict[str, list[Sample]]:
    """The combined per-pod answer back into its parts, without the tag (taken out of
    the samples' labels in place: they are the answer's own)."""
    parts: dict[str, list[Sample]] = {name: [] for name in _POD_METADATA_QUERIES}
    for sample in samples:
        part = parts.get(sample.labels.pop(PART_LABEL, ""))
        if part is not None:
            part.append(sample)
    return parts


def chunk_requests(queries: IngestQueries, hours: list[int]) -> list[tuple[str, dict[str, str]]]:
    """Every API request (endpoint, parameters) that ingesting these whole hours makes."""
    end = hours[-1] + HOUR
    requests = [
        ("query_range", _range_params(getattr(queries, name), hours))
        for name in (*_USAGE_QUERIES, *_CAPACITY_QUERIES)
    ]
    requests += [
        ("query", {"query": promql, "time": str(end)})
        for promql in metadata_promql(queries, f"{end - hours[0]}s").values()
    ]
    return requests


class IngestError(RuntimeError):
    """Ingestion cannot go on; the message says what to fix."""


@dataclass
class IngestResult:
    hours_written: int = 0
    hours_skipped: int = 0  # done already (resume)
    hours_kept: list[int] = field(default_factory=list)  # Prometheus had nothing; ledger kept
    hours_provisional: list[int] = field(default_factory=list)  # written, not done
    usage_rows: int = 0
    pods_resolved_by_api: int = 0
    seconds_total: float = 0.0
    # Waiting for Prometheus's answers (with prefetch, only what did not overlap work).
    seconds_prometheus: float = 0.0
    # The requests' own time, overlapped or not.
    seconds_requests: float = 0.0
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
    """Everything one chunk of hours puts in the ledger, checked, before any write.

    The frames have the ledger's columns (USAGE_COLUMNS, CAPACITY_COLUMNS,
    GPU_SOURCE_COLUMNS), sorted by key. `provisional_through`: the chunk is one hour
    whose data runs to that time (see `Ingestor.run_until`).
    """

    hours: list[int]
    usage: pd.DataFrame
    capacity: pd.DataFrame
    gpu_sources: pd.DataFrame
    pods: list[PodMetadata]
    namespaces: dict[str, tuple[dict[str, str], int]]
    nodes: dict[str, tuple[dict[str, str], int]]
    provisional_through: int | None = None


@dataclass
class _Answer:
    """One query's answer as columns: each point's series, hour and value."""

    labels: list[dict[str, str]]  # per series
    series: np.ndarray  # per point: index into labels
    hours: np.ndarray  # per point: the hour the value is of
    values: np.ndarray  # per point


@dataclass
class _Download:
    """A chunk's answers: usage and capacity as columns, metadata as samples."""

    answers: dict[str, _Answer]
    metadata: dict[str, list[Sample]]


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
        chunk_hours: int = 72,
        progress: Progress | None = None,
        allow_gaps: bool = False,
        concurrency: int = 2,
    ) -> None:
        if not 1 <= chunk_hours < MAX_POINTS_PER_SERIES:
            raise ValueError(f"chunk_hours must be from 1 to {MAX_POINTS_PER_SERIES - 1}")
        self.client = client
        self.ledger = ledger
        self.price_book = price_book
        self.resolver = resolver
        self.queries = queries or IngestQueries()
        self.chunk_hours = chunk_hours
        self.progress = progress
        self.allow_gaps = allow_gaps
        if concurrency < 0:
            raise ValueError("concurrency must be 0 (no threads) or more")
        # Chunks asked for at once, ahead of the one being joined and written.
        self.concurrency = concurrency
        self._kube_seconds = 0.0

    # ---------------------------------------------------------------- the run
    def run(self, start: int, end: int, *, resume: bool = False) -> IngestResult:
        """Ingest the hours in [start, end) (both on hour boundaries)."""
        if start % HOUR or end % HOUR:
            raise ValueError("start and end must be on hour boundaries")
        return self._run(start, end, resume=resume, provisional={})

    def run_until(
        self,
        start: int,
        until: float,
        *,
        now: float | None = None,
        settle_seconds: int = 300,
        resume: bool = False,
    ) -> IngestResult:
        """Ingest from `start` (on an hour) up to `until`, which may be inside an hour.

        Hours that ended `settle_seconds` or more before `now` (default: the clock) are
        ingested as usual and marked done. The rest are written provisional: the hour
        that `until` falls in, with its data up to `until`, and hours that ended too
        recently for every scrape to have arrived. A provisional hour's rows are in
        reports, which say so; it is not done, so the next run that covers it (`resume`,
        `plan_range`, the schedule) ingests it again and marks it done.
        """
        now = time.time() if now is None else now
        if start % HOUR:
            raise ValueError("start must be on an hour boundary")
        if until > now:
            raise IngestError(
                f"cannot ingest up to {iso(int(until))}: it is in the future (now {iso(int(now))})"
            )
        until = int(until)
        if until <= start:
            raise IngestError(f"--from {iso(start)} is not before {iso(until)}")
        settled = min(floor_hour(until), floor_hour(now - settle_seconds))
        settled = max(settled, start)
        provisional = {hour: min(until, hour + HOUR) for hour in range(settled, until, HOUR)}
        return self._run(start, settled, resume=resume, provisional=provisional)

    def _run(
        self, start: int, end: int, *, resume: bool, provisional: Mapping[int, int]
    ) -> IngestResult:
        started = time.monotonic()
        requests_before = self.client.stats.seconds_waiting
        result = IngestResult()
        hours = list(range(start, end, HOUR))
        if resume:
            done = self.ledger.done_hours(start, end)
            result.hours_skipped = len(done)
            hours = [h for h in hours if h not in done]
        jobs: list[tuple[list[int], int | None]] = [
            (chunk, None) for chunk in _chunks(hours, self.chunk_hours)
        ]
        jobs += [([hour], through) for hour, through in sorted(provisional.items())]
        total = len(hours) + result.hours_skipped + len(provisional)
        finished = result.hours_skipped
        for chunk, through, download in self._downloads(jobs, result):
            data = self._assemble(chunk, through, download)
            ledger_started = time.monotonic()
            self._write(data, result)
            result.seconds_ledger += time.monotonic() - ledger_started
            finished += len(chunk)
            if self.progress:
                self.progress(finished, total, chunk[-1])
        result.seconds_total = time.monotonic() - started
        result.seconds_requests = self.client.stats.seconds_waiting - requests_before
        result.seconds_kube = self._kube_seconds
        return result

    def fetch(self, hours: list[int], *, through: int | None = None) -> ChunkData:
        """Query one chunk of contiguous hours and check it; writes nothing.

        With `through`: `hours` is one hour, read up to that time (a provisional hour).
        """
        return self._assemble(hours, through, self._download(hours, through, self.client))

    def _download(
        self, hours: list[int], through: int | None, client: PrometheusClient
    ) -> _Download:
        """Every answer a chunk needs from Prometheus; nothing else is touched, so it can
        run in a thread while an earlier chunk is joined and written."""
        if through is not None and (len(hours) != 1 or not hours[0] < through <= hours[0] + HOUR):
            raise ValueError("a provisional fetch is of one hour, through a time inside it")
        answers = {
            name: _answer(client, getattr(self.queries, name), hours, through)
            for name in (*_USAGE_QUERIES, *_CAPACITY_QUERIES)
        }
        end = hours[-1] + HOUR if through is None else through
        metadata = {
            name: client.query_vector(promql, end)
            for name, promql in metadata_promql(self.queries, f"{end - hours[0]}s").items()
        }
        metadata.update(split_pod_metadata(metadata.pop("pods")))
        return _Download(answers, metadata)

    def _assemble(self, hours: list[int], through: int | None, download: _Download) -> ChunkData:
        """Join, check and resolve one chunk's answers into what the ledger gets."""
        usage = _usage_frame(download.answers, hours)
        capacity, gpu_sources = _capacity_frames(download.answers, hours)
        self._check(hours, usage, capacity)
        end = hours[-1] + HOUR if through is None else through
        pods, namespaces, nodes = self._metadata(end, usage, download.metadata)
        return ChunkData(hours, usage, capacity, gpu_sources, pods, namespaces, nodes, through)

    def _downloads(
        self, jobs: list[tuple[list[int], int | None]], result: IngestResult
    ) -> Iterator[tuple[list[int], int | None, _Download]]:
        """Each job's answers, in order. With `concurrency` n > 0, n jobs are asked for
        at once, ahead of the caller, while it joins and writes the one before: Prometheus
        and gpuledger then keep both cores busy. Each thread has a client of its own.

        `result.seconds_prometheus`: without threads, the requests' time; with them, the
        time the caller waited for answers (the threads' parsing of them included).
        """
        if self.concurrency < 1 or len(jobs) < 2:
            for hours, through in jobs:
                before = self.client.stats.seconds_waiting
                download = self._download(hours, through, self.client)
                result.seconds_prometheus += self.client.stats.seconds_waiting - before
                yield hours, through, download
            return
        clients: queue.SimpleQueue[PrometheusClient] = queue.SimpleQueue()
        own = [_own_client(self.client) for _ in range(self.concurrency)]
        for client in own:
            clients.put(client)

        def download(hours: list[int], through: int | None) -> _Download:
            client = clients.get()
            try:
                return self._download(hours, through, client)
            finally:
                clients.put(client)

        pending: deque[Future[_Download]] = deque()
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="ingest-fetch") as pool:
                try:
                    ahead = iter(jobs)
                    for job in itertools.islice(ahead, self.concurrency):
                        pending.append(pool.submit(download, *job))
                    for hours, through in jobs:
                        started = time.monotonic()
                        answers = pending.popleft().result()
                        result.seconds_prometheus += time.monotonic() - started
                        for job in itertools.islice(ahead, 1):
                            pending.append(pool.submit(download, *job))
                        yield hours, through, answers
                finally:
                    for future in pending:  # after a failure, later answers are not wanted
                        future.cancel()
        finally:
            for client in own:
                _add_stats(self.client.stats, client.stats)

    # ---------------------------------------------------------------- checks
    def _check(self, hours: list[int], usage: pd.DataFrame, capacity: pd.DataFrame) -> None:
        with_data = set(capacity["hour"].tolist())
        if with_data and not self.allow_gaps:
            first, last = min(with_data), max(with_data)
            holes = [h for h in hours if first < h < last and h not in with_data]
            if holes:
                raise PartialDataError(
                    f"Prometheus has no GPU data at all for {iso(holes[0])}"
                    f"{f' and {len(holes) - 1} more hours' if len(holes) > 1 else ''}, between "
                    "hours that have data: a scrape outage or a store that did not answer. "
                    "Nothing was written for this chunk; ingest it again when the data is "
                    "back, or pass --allow-gaps to record those hours as empty"
                )
        uncounted = capacity[capacity["gpus"] <= 0]
        if not uncounted.empty:
            hour, nodes = _first_hour_nodes(uncounted)
            raise PartialDataError(
                f"partial data for the hour {iso(hour)}: the GPUs of {nodes} "
                "reported, but the GPU count query "
                "answered nothing for them. With --queries recorded: the accounting "
                "recording rules (gpuledger.accounting.rules) were not running then; "
                "ingest the hours before they were installed with --queries raw. Nothing "
                "was written for this chunk"
            )
        used = usage[["hour", "node"]].drop_duplicates()
        held = capacity[["hour", "node"]].drop_duplicates()
        lacking = used.merge(held, how="left", indicator=True)
        lacking = lacking[lacking["_merge"] == "left_only"]
        if not lacking.empty:
            hour, nodes = _first_hour_nodes(lacking)
            raise PartialDataError(
                f"partial data for the hour {iso(hour)}: pods used GPUs on {nodes} but "
                f"{catalogue.GPU_SAMPLED_SECONDS.name} has no capacity there. A store or "
                "shard did not answer, or the exporter's GPU series are missing; nothing "
                "was written for this chunk"
            )
        # Where each GPU model was first seen, for the price book's message.
        seen = pd.concat(
            [
                capacity[["hour", "node", "model"]].assign(order=0),
                usage[["hour", "node", "model"]].assign(order=1),
            ],
            ignore_index=True,
        )
        seen = seen.sort_values(["hour", "order"], kind="stable").drop_duplicates("model")
        self.price_book.check(
            (model, f"node {node} at {iso(hour)}")
            for hour, node, model in zip(
                seen["hour"].tolist(), seen["node"].tolist(), seen["model"].tolist(), strict=True
            )
        )

    # ---------------------------------------------------------------- metadata
    def _metadata(
        self, end: int, usage: pd.DataFrame, answers: Mapping[str, list[Sample]]
    ) -> tuple[list[PodMetadata], dict, dict]:
        named = usage[(usage["namespace"] != "") & (usage["pod"] != "")]
        if named.empty:
            return [], {}, {}
        # Rows are in (hour, key) order: a pod's node is the one of its last row.
        spans = named.groupby(["namespace", "pod"], sort=True).agg(
            first=("hour", "min"), last=("hour", "max"), node=("node", "last")
        )
        keys = list(spans.index)
        seen = set(keys)

        owners: dict[tuple[str, str], ObjectRef] = {}
        for sample in sorted(
            answers["pod_owner"], key=lambda s: s.labels.get("owner_is_controller") != "true"
        ):
            key = (sample.labels.get("namespace", ""), sample.labels.get("pod", ""))
            kind = sample.labels.get("owner_kind", "")
            if key in seen and kind and kind != "<none>" and key not in owners:
                owners[key] = ObjectRef(kind, sample.labels.get("owner_name", ""))
        labels = _labels_by(answers["pod_labels"], ("namespace", "pod"), keys_in_label_order=False)
        requests = {
            (s.labels.get("namespace", ""), s.labels.get("pod", "")): s.points[0][1]
            for s in answers["pod_requests"]
        }
        parents: dict[tuple[str, str, str], ObjectRef] = {}
        for query, kind, name_label in (
            ("job_owner", "Job", "job_name"),
            ("replicaset_owner", "ReplicaSet", "replicaset"),
        ):
            for s in answers[query]:
                parents[(s.labels.get("namespace", ""), kind, s.labels.get(name_label, ""))] = (
                    ObjectRef(s.labels.get("owner_kind", ""), s.labels.get("owner_name", ""))
                )
        namespaces = {
            ns: (values, end)
            for (ns,), values in _labels_by(answers["namespace_labels"], ("namespace",)).items()
        }
        nodes = {
            node: (values, end)
            for (node,), values in _labels_by(answers["node_labels"], ("node",)).items()
        }

        resolutions = self.ledger.pod_resolutions(keys) if self.resolver else {}
        pods = []
        for key, first_hour, last_hour, node in zip(
            keys,
            spans["first"].tolist(),
            spans["last"].tolist(),
            spans["node"].tolist(),
            strict=True,
        ):
            namespace, pod = key
            owner = owners.get(key)
            chain = [owner] if owner else []
            while chain and len(chain) < 4:
                parent = parents.get((namespace, chain[-1].kind, chain[-1].name))
                if parent is None or not parent.kind:
                    break
                chain.append(parent)
            # As of the pod's last hour in the chunk (the end of the data for a
            # provisional hour): the same whatever the chunking, so a resumed run merges
            # to the same ledger as an uninterrupted one.
            last_seen = min(int(last_hour) + HOUR, end)
            record = dict(
                namespace=namespace,
                pod=pod,
                first_seen=int(first_hour),
                last_seen=last_seen,
                observed_at=last_seen,
                node=node,
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
        with_rows = set(data.usage["hour"].tolist()) | set(data.capacity["hour"].tolist())
        empty = [h for h in data.hours if h not in with_rows]
        keep = self.ledger.hours_with_capacity(empty)
        for hour in sorted(keep):
            log.warning(
                "Prometheus has no GPU data for %s (beyond its retention?); "
                "the ledger keeps what it has for that hour",
                iso(hour),
            )
        result.hours_kept.extend(sorted(keep))
        hours = [h for h in data.hours if h not in keep]
        if not hours:
            return
        # Every hour of the chunk in one transaction: done completely or not at all.
        self.ledger.write_hours(
            hours,
            _tuples(data.usage, USAGE_COLUMNS),
            _tuples(data.capacity, CAPACITY_COLUMNS),
            self.client.url,
            gpu_source_rows=_tuples(data.gpu_sources, GPU_SOURCE_COLUMNS),
            provisional_through=data.provisional_through,
        )
        if data.provisional_through is None:
            result.hours_written += len(hours)
        else:
            result.hours_provisional.extend(hours)
        result.usage_rows += len(data.usage)


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


def _answer(
    client: PrometheusClient, template: str, hours: list[int], through: int | None
) -> _Answer:
    """One usage or capacity query over the chunk: a range query whose value at
    h + 1h is the increase over the hour that starts at h; for a provisional hour,
    an instant query at `through` over the part of the hour up to it."""
    if through is None:
        params = _range_params(template, hours)
        # Columns straight from the JSON: no Python object per point.
        # (chunk_hours < MAX_POINTS_PER_SERIES: one request is enough.)
        answer = _columns(client.call_series("query_range", params))
        answer.hours = np.rint(answer.hours).astype(np.int64) - HOUR
        return answer
    promql = template.format(window=f"{through - hours[0]}s")
    answer = _columns(client.call_series("query", {"query": promql, "time": str(through)}))
    answer.hours = np.full(len(answer.values), hours[0], dtype=np.int64)
    return answer


def _first_hour_nodes(rows: pd.DataFrame) -> tuple[int, str]:
    """The earliest hour of these (hour, node) rows, and its nodes for a message."""
    hour = int(rows["hour"].min())
    nodes = sorted(rows.loc[rows["hour"] == hour, "node"].tolist())
    return hour, ", ".join(nodes[:5]) + (" ..." if len(nodes) > 5 else "")


def _range_params(template: str, hours: list[int]) -> dict[str, str]:
    """A range query whose point at h + 1h is the increase over the hour from h."""
    return {
        "query": template.format(window="1h"),
        "start": str(hours[0] + HOUR),
        "end": str(hours[-1] + HOUR),
        "step": str(HOUR),
    }


def _columns(columns: SeriesColumns) -> _Answer:
    """An answer's columns; hours still hold the points' times."""
    return _Answer(
        labels=columns.labels,
        series=np.repeat(np.arange(len(columns.labels), dtype=np.int64), columns.counts),
        hours=columns.times,
        values=columns.values,
    )


@dataclass
class _Joined:
    """Several answers summed into cells of (key, hour)."""

    keys: list[tuple[str, ...]]  # per distinct key
    key: np.ndarray  # per cell: index into keys
    hour: np.ndarray  # per cell
    sums: dict[str, np.ndarray]  # per query name: per cell


def _join(
    answers: Mapping[str, _Answer],
    names: tuple[str, ...],
    key_labels: tuple[str, ...],
    hours: list[int],
) -> _Joined:
    """Sum each named answer into cells of (key labels, hour), for the chunk's hours.

    Cells are in (hour, key) order; a cell exists when any answer has a point in it.
    """
    ids: dict[tuple[str, ...], int] = {}
    hour_array = np.asarray(hours, dtype=np.int64)
    cells_of: dict[str, np.ndarray] = {}
    blanks = ("",) * len(key_labels)  # a label Prometheus left out is empty
    for name in names:
        answer = answers[name]
        series_key = np.fromiter(
            (
                ids.setdefault(tuple(map(labels.get, key_labels, blanks)), len(ids))
                for labels in answer.labels
            ),
            dtype=np.int64,
            count=len(answer.labels),
        )
        position = np.searchsorted(hour_array, answer.hours)
        inside = position < len(hour_array)
        inside[inside] = hour_array[position[inside]] == answer.hours[inside]
        cells_of[name] = np.where(
            inside, series_key[answer.series] * len(hour_array) + position, -1
        )
    keys = list(ids)
    # Cells in (hour, key) order, keys by their label values.
    rank = np.empty(len(keys), dtype=np.int64)
    rank[sorted(range(len(keys)), key=keys.__getitem__)] = np.arange(len(keys))
    every = np.concatenate(
        [cells[cells >= 0] for cells in cells_of.values()] or [np.empty(0, np.int64)]
    )
    every.sort()
    present = every[np.concatenate([every[:1] == every[:1], every[1:] != every[:-1]])]
    key, position = present // len(hour_array), present % len(hour_array)
    order = np.lexsort((rank[key], position))
    # where[i]: the place in the (hour, key) order of the i-th cell in numeric order
    where_sorted = np.empty(len(order), dtype=np.int64)
    where_sorted[order] = np.arange(len(order))
    key, position = key[order], position[order]
    sums = {}
    for name in names:
        cells = cells_of[name]
        inside = cells >= 0
        where = where_sorted[np.searchsorted(present, cells[inside])]
        sums[name] = np.bincount(
            where, weights=answers[name].values[inside], minlength=len(present)
        )
    return _Joined(keys, key, hour_array[position], sums)


def _milli(values: np.ndarray) -> np.ndarray:
    # Milli-units, rounded once here so that every later sum is exact.
    ok = np.isfinite(values) & (values > 0)
    return np.where(ok, np.rint(np.where(ok, values, 0.0) * 1000), 0).astype(np.int64)


def _key_columns(
    joined: _Joined, key_labels: tuple[str, ...], mask: np.ndarray
) -> dict[str, pd.Series]:
    # Object columns: the rows go to the ledger as Python strings, and pandas's Arrow
    # strings would be made from them and turned back, at a cost, for nothing.
    labels = np.array(joined.keys, dtype=object).reshape(len(joined.keys), len(key_labels))
    picked = labels[joined.key[mask]]
    return {label: pd.Series(picked[:, i], dtype=object) for i, label in enumerate(key_labels)}


def _usage_frame(answers: Mapping[str, _Answer], hours: list[int]) -> pd.DataFrame:
    joined = _join(answers, _USAGE_QUERIES, POD_KEY, hours)
    memory = joined.sums["memory"]
    row = {
        "held_ms": _milli(joined.sums["held"]),
        "busy_ms": _milli(joined.sums["busy"]),
        "memory_byte_seconds": np.where(np.isfinite(memory), np.maximum(memory, 0.0), 0.0),
        "energy_mj": _milli(joined.sums["energy"]),
    }
    # A series that lingered after its pod ended has nothing in any column.
    keep = (row["held_ms"] != 0) | (row["busy_ms"] != 0) | (row["energy_mj"] != 0)
    keep |= row["memory_byte_seconds"] != 0
    columns = {"hour": joined.hour[keep], **_key_columns(joined, POD_KEY, keep)}
    columns |= {name: values[keep] for name, values in row.items()}
    return pd.DataFrame(columns, columns=list(USAGE_COLUMNS))


def _capacity_frames(
    answers: Mapping[str, _Answer], hours: list[int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Capacity rows, and GPUs and nodes per (hour, device source)."""
    joined = _join(answers, _CAPACITY_QUERIES, CAPACITY_KEY, hours)
    gpus = joined.sums["gpus"]
    row = {
        "gpus": np.where(
            np.isfinite(gpus), np.trunc(np.where(np.isfinite(gpus), gpus, 0)), 0
        ).astype(np.int64),
        "capacity_ms": _milli(joined.sums["capacity"]),
        "busy_ms": _milli(joined.sums["gpu_busy"]),
        "energy_mj": _milli(joined.sums["gpu_energy"]),
    }
    keep = row["capacity_ms"] != 0
    columns = {"hour": joined.hour[keep], **_key_columns(joined, CAPACITY_KEY, keep)}
    columns |= {name: values[keep] for name, values in row.items()}
    capacity = pd.DataFrame(columns, columns=list(CAPACITY_COLUMNS))

    # The device source of those GPUs, from the `gpus` answer's `source` label.
    answer = answers["gpus"]
    label_columns = {
        label: pd.Series(
            np.array([labels.get(label, "") for labels in answer.labels], dtype=object)[
                answer.series
            ],
            dtype=object,
        )
        for label in ("node", "model", "source")
    }
    points = pd.DataFrame({"hour": answer.hours, **label_columns, "gpus": answer.values})
    points = points[np.isfinite(points["gpus"]) & (points["gpus"] > 0)]
    points = points.merge(capacity[["hour", "node", "model"]], on=["hour", "node", "model"])
    sources = (
        points.groupby(["hour", "source"], sort=True)
        .agg(gpus=("gpus", "sum"), nodes=("node", "nunique"))
        .reset_index()
    )
    sources["gpus"] = np.trunc(sources["gpus"]).astype(np.int64)
    return capacity, sources[list(GPU_SOURCE_COLUMNS)]


def _own_client(client: PrometheusClient) -> PrometheusClient:
    """The client's copy for one thread: a requests.Session must not be shared between
    threads (psf/requests#2766), nor the sums in `stats`. The session's settings
    (headers such as a bearer token, auth, TLS) are copied; mounted adapters are not."""
    own = copy.copy(client)
    own.session = requests.Session()
    # .copy(): copy.copy of requests' CaseInsensitiveDict would share its contents.
    own.session.headers = client.session.headers.copy()
    for name in ("auth", "verify", "cert", "proxies", "params", "trust_env"):
        setattr(own.session, name, copy.copy(getattr(client.session, name)))
    own.stats = ClientStats()
    return own


def _add_stats(total: ClientStats, part: ClientStats) -> None:
    for item in dataclasses.fields(ClientStats):
        setattr(total, item.name, getattr(total, item.name) + getattr(part, item.name))


def _tuples(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[tuple]:
    """The frame's rows as tuples of plain Python values, for the ledger's executemany."""
    return list(zip(*(frame[c].tolist() for c in columns), strict=True))


def ksm_label_key(name: str) -> str:
    """kube-state-metrics exports label `cost-center` as `label_cost_center`."""
    return name[len("label_") :]


def _labels_by(
    samples: list[Sample], key_labels: tuple[str, ...], *, keys_in_label_order: bool = True
) -> dict[tuple, dict[str, str]]:
    """The `label_*` values of each key's samples (prefix taken off). A key's samples are
    merged in the order of their sorted labels: the same whatever order they come in.

    With `keys_in_label_order`, the keys come in that order too (namespaces' and nodes'
    rows are written in it); without, in the order of the samples, and only the labels
    of keys with several samples are sorted (a chunk's 50,000 pods' are only looked up).
    """
    if keys_in_label_order:
        found: dict[tuple, dict[str, str]] = {}
        for sample in sorted(samples, key=lambda s: sorted(s.labels.items())):
            key = tuple(sample.labels.get(label, "") for label in key_labels)
            found.setdefault(key, {}).update(_label_values(sample.labels))
        return found
    blanks = ("",) * len(key_labels)
    by_key: dict[tuple, list[Sample]] = {}
    for sample in samples:
        by_key.setdefault(tuple(map(sample.labels.get, key_labels, blanks)), []).append(sample)
    found = {}
    for key, group in by_key.items():
        if len(group) > 1:
            group.sort(key=lambda s: sorted(s.labels.items()))
        found[key] = values = {}
        for sample in group:
            values.update(_label_values(sample.labels))
    return found


def _label_values(labels: Mapping[str, str]) -> dict[str, str]:
    return {ksm_label_key(k): v for k, v in labels.items() if k.startswith("label_") and v}


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
