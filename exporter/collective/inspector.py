"""NCCL Inspector's Prometheus files, re-labelled with the pod that holds the GPU.

Jobs on NCCL 2.28 or newer load the Inspector profiler plugin with

    NCCL_PROFILER_PLUGIN=.../libnccl-profiler-inspector.so NCCL_INSPECTOR_ENABLE=1
    NCCL_INSPECTOR_PROM_DUMP=1 NCCL_INSPECTOR_DUMP_DIR=<hostPath the exporter reads>
    NCCL_INSPECTOR_DUMP_THREAD_INTERVAL_MICROSECONDS=30000000  # Inspector's minimum

and the plugin rewrites one file per GPU, `nccl_inspector_metrics_<device uuid>.prom`
(`..._job<id>_<uuid>.prom` when streaming), in the text format without TYPE lines:

    nccl_bus_bandwidth_gbs{comm_id="0x..",hostname="h",rank="0",...,collective="AllReduce",
        message_size="16.00MB"} 75.1                                        # NCCL 2.28
    nccl_bus_bandwidth_gbs{version="v5.2",...,gpu="GPU0",comm_name="DP Group 0",
        n_nodes="1",nranks="4",collective="AllReduce",message_size="4-5GB",...} 678.3
    nccl_collective_count{...} 12                                           # newer

The GPU is taken from the file name (the CUDA device UUID; the `gpu` label is a CUDA
ordinal that CUDA_VISIBLE_DEVICES renumbers) and mapped to pods through the kubelet's
device assignments. A GPU held by exactly one pod gets its namespace, pod and
container; a GPU with no holder or several (time-sliced: the file does not say whose
communicator is whose) keeps empty pod labels.

Kept: bus and algorithm bandwidth (GB/s -> bytes/s), execution time (us -> s) and
operation counts, by operation, communicator, ranks, nodes and message size. Labels
that change every dump (timestamp, sequence numbers) or name the rank are dropped;
series that then coincide are merged, weighted by their operation counts.

Files are rewritten in place, so only whole lines are read; files older than
`max_age_s` (a job that died without cleaning up) are not read, since their GPU may
belong to another pod by now.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter import catalogue as cat
from exporter.attribution import PodRef
from exporter.catalogue import MetricSpec

log = logging.getLogger(__name__)

_FILE = re.compile(
    r"nccl_inspector_metrics_(?:job.+_)?"
    r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\.prom"
)
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

# Inspector metric -> (catalogue family, scale to base units)
_METRICS: dict[str, tuple[MetricSpec, float]] = {
    "nccl_bus_bandwidth_gbs": (cat.NCCL_INSPECTOR_BUSBW, 1e9),
    "nccl_p2p_bus_bandwidth_gbs": (cat.NCCL_INSPECTOR_BUSBW, 1e9),
    "nccl_algorithm_bandwidth_gbs": (cat.NCCL_INSPECTOR_ALGBW, 1e9),
    "nccl_collective_exec_time_microseconds": (cat.NCCL_INSPECTOR_EXEC_TIME, 1e-6),
    "nccl_p2p_exec_time_microseconds": (cat.NCCL_INSPECTOR_EXEC_TIME, 1e-6),
    "nccl_collective_count": (cat.NCCL_INSPECTOR_OPERATIONS, 1.0),
    "nccl_p2p_count": (cat.NCCL_INSPECTOR_OPERATIONS, 1.0),
}
_AVERAGED = (cat.NCCL_INSPECTOR_BUSBW, cat.NCCL_INSPECTOR_ALGBW, cat.NCCL_INSPECTOR_EXEC_TIME)


@dataclass(frozen=True)
class InspectorSeries:
    """One re-labelled series: `labels` follow the catalogue's NCCL_INSPECTOR label set."""

    spec: MetricSpec
    pod: PodRef | None
    uuid: str
    operation: str
    comm: str
    nranks: str
    n_nodes: str
    message_size: str
    value: float


@dataclass(frozen=True)
class InspectorFile:
    uuid: str
    age_seconds: float
    read: bool  # False: older than max_age_s, or unreadable
    skipped_lines: int = 0


@dataclass(frozen=True)
class InspectorSnapshot:
    series: tuple[InspectorSeries, ...]
    files: tuple[InspectorFile, ...]


def parse_labels(text: str) -> dict[str, str]:
    """Label pairs of one sample; ValueError if the text is not `name="value",...`."""
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"bad label text at {text[pos : pos + 30]!r}")
        labels[m.group(1)] = re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e.group(0)], m.group(2))
        pos = m.end()
        if m.group(3) == "" and pos < len(text):
            raise ValueError("labels continue after the last one")
    return labels


def _snake(name: str) -> str:
    """AllReduce -> all_reduce, the probe's operation names."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


class InspectorReader:
    """Reads `directory` when asked; `gpu_to_pods` maps a device UUID to its holders."""

    def __init__(
        self,
        directory: str,
        gpu_to_pods: Callable[[str], list[PodRef]],
        max_age_s: float = 180.0,
        max_files: int = 1024,
        max_file_bytes: int = 8 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._gpu_to_pods = gpu_to_pods
        self.max_age_s = max_age_s
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self._clock = clock

    def read(self) -> InspectorSnapshot:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return InspectorSnapshot((), ())
        now = self._clock()
        series: list[InspectorSeries] = []
        files: list[InspectorFile] = []
        for name in names:
            m = _FILE.fullmatch(name)
            if m is None:
                continue
            if len(files) >= self.max_files:
                log.warning("more than %d NCCL Inspector files; the rest are ignored", len(files))
                break
            raw_uuid = m.group(1).lower()
            path = os.path.join(self.directory, name)
            try:
                st = os.stat(path)
                age = max(now - st.st_mtime, 0.0)
                if age > self.max_age_s:
                    files.append(InspectorFile(f"GPU-{raw_uuid}", age, False))
                    continue
                with open(path, "rb") as f:
                    data = f.read(self.max_file_bytes)
            except OSError as e:
                log.debug("NCCL Inspector file %s unreadable: %s", path, e)
                continue
            uuid, pods = self._holders(raw_uuid)
            pod = pods[0] if len(pods) == 1 else None
            file_series, skipped = self._parse(data, uuid, pod)
            series.extend(file_series)
            files.append(InspectorFile(uuid, age, True, skipped))
        return InspectorSnapshot(tuple(series), tuple(files))

    def _holders(self, raw_uuid: str) -> tuple[str, list[PodRef]]:
        # CUDA reports a MIG instance's own UUID; NVML spells it MIG-..., a GPU's GPU-...
        for prefix in ("GPU-", "MIG-"):
            pods = list(self._gpu_to_pods(prefix + raw_uuid) or [])
            if pods:
                return prefix + raw_uuid, pods
        return "GPU-" + raw_uuid, []

    def _parse(
        self, data: bytes, uuid: str, pod: PodRef | None
    ) -> tuple[list[InspectorSeries], int]:
        text = data.decode("utf-8", errors="replace")
        # The file is rewritten in place: a last line without its newline may be cut.
        lines = text.split("\n")[:-1]
        skipped = 0
        # original label set -> {family: value}: one Inspector bucket's numbers
        buckets: dict[frozenset, dict[MetricSpec, float]] = {}
        keys: dict[frozenset, tuple[str, str, str, str, str]] = {}
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = _SAMPLE.fullmatch(line)
            if m is None:
                skipped += 1
                continue
            target = _METRICS.get(m.group(1))
            if target is None:
                continue  # percentiles, slow events, ring statistics: not kept
            try:
                labels = parse_labels(m.group(2) or "")
                value = float(m.group(3))
            except ValueError:
                skipped += 1
                continue
            if value != value or value in (float("inf"), float("-inf")):
                skipped += 1
                continue
            operation = labels.get("collective") or labels.get("p2p_operation")
            if not operation:
                skipped += 1
                continue
            spec, scale = target
            ident = frozenset(labels.items())
            buckets.setdefault(ident, {})[spec] = value * scale
            comm = labels.get("comm_name", "")
            if comm in ("", "unknown"):
                comm = labels.get("comm_id", "")
            keys[ident] = (
                _snake(operation),
                comm,
                labels.get("nranks", ""),
                labels.get("n_nodes", ""),
                labels.get("message_size", ""),
            )
        return self._merge(buckets, keys, uuid, pod), skipped

    @staticmethod
    def _merge(
        buckets: dict[frozenset, dict[MetricSpec, float]],
        keys: dict[frozenset, tuple[str, str, str, str, str]],
        uuid: str,
        pod: PodRef | None,
    ) -> list[InspectorSeries]:
        # output key -> family -> [weighted sum, weight]
        merged: dict[tuple[str, str, str, str, str], dict[MetricSpec, list[float]]] = {}
        for ident, values in buckets.items():
            weight = values.get(cat.NCCL_INSPECTOR_OPERATIONS, 1.0)
            out = merged.setdefault(keys[ident], {})
            for spec, value in values.items():
                acc = out.setdefault(spec, [0.0, 0.0])
                if spec in _AVERAGED:
                    acc[0] += value * weight
                    acc[1] += weight
                else:
                    acc[0] += value
                    acc[1] = 1.0
        series = []
        for key, families in merged.items():
            for spec, (total, weight) in families.items():
                if weight <= 0:
                    continue
                series.append(InspectorSeries(spec, pod, uuid, *key, value=total / weight))
        return series
