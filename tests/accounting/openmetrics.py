"""Synthetic history of a GPU cluster as the exporter and kube-state-metrics expose it.

`generate(nodes, gpus, pods, days, step)` plans pods on GPUs (whole GPUs, time-sliced
and MIG shares in explicit plans), and `Generated.write(out)` streams the counters
(`gpuledger_pod_gpu_*_total`, `gpuledger_gpu_*_total`) and kube-state-metrics series
as OpenMetrics text for `promtool tsdb create-blocks-from openmetrics`, or as
Prometheus text with millisecond timestamps for VictoriaMetrics' import API.

Counters integrate constant rates over each step; exporter restarts reset a node's
counters to 0; scrape gaps drop samples (the counters keep integrating). `Generated`
also holds the ground truth per hour: what `increase()` over each hour must give
(usage in the step that ends at a restart is lost, as it is for a real exporter).

The 30-day benchmark uses the same function at scale, so the per-series work is numpy.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from exporter import catalogue

HOUR = 3600
MODEL = "NVIDIA H100 80GB HBM3"
IDLE_WATTS, MAX_WATTS = 70.0, 700.0
MEMORY_BYTES = 60e9  # per whole GPU held


@dataclass(frozen=True)
class PodPlan:
    """One pod holding `fraction` of each GPU in `gpus` (indices on `node`) in [start, end)."""

    namespace: str
    pod: str
    node: str
    gpus: tuple[int, ...]
    start: int
    end: int
    utilization: float = 0.8  # busy share of what it holds
    fraction: float = 1.0  # 1 whole GPU; 1/n time-sliced; compute fraction for MIG
    sharing: str = "exclusive"  # exclusive, shared or mig (exporter/pod_usage.py)
    mig_profile: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    owner: tuple[str, str] | None = None  # kind, name (kube_pod_owner)
    owner_owner: tuple[str, str] | None = None  # the owner's owner (Job/ReplicaSet only)
    container: str = "main"


@dataclass(frozen=True)
class OutsideBusy:
    """GPU work no pod holds (a process outside Kubernetes) on one GPU in [start, end)."""

    node: str
    gpu: int
    start: int
    end: int
    utilization: float


@dataclass
class Generated:
    start: int
    end: int
    step: int
    nodes: list[str]
    gpus_per_node: int
    model: str
    pods: list[PodPlan]
    outside: list[OutsideBusy] = field(default_factory=list)
    restarts: list[tuple[str, int]] = field(default_factory=list)  # (node, time)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # samples in (a, b) dropped
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    node_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    ksm_every: int = 900
    source: str = "simulated"  # the exporter's device source label: simulated or nvml

    def __post_init__(self) -> None:
        if HOUR % self.step or self.start % HOUR or self.end % HOUR:
            raise ValueError("step must divide an hour; start and end must be on hours")
        self.times = np.arange(self.start, self.end + self.step, self.step, dtype=np.int64)
        dropped = np.zeros(len(self.times), dtype=bool)
        for a, b in self.gaps:
            dropped |= (self.times > a) & (self.times < b)
        self.kept = ~dropped
        self._check_sharing()

    @property
    def hours(self) -> list[int]:
        return list(range(self.start, self.end, HOUR))

    # ---------------------------------------------------------------- series
    def _index(self, t: int) -> int:
        return (t - self.start) // self.step

    def _resets(self, node: str) -> list[int]:
        return sorted(self._index(t) for n, t in self.restarts if n == node)

    def _counter(self, rates: np.ndarray, first: int, node: str) -> np.ndarray:
        """Counter values at samples first..first+len(rates), given per-step rates."""
        increments = rates * self.step
        values = np.concatenate([[0.0], np.cumsum(increments)])
        for reset in self._resets(node):
            k = reset - first
            if 0 < k < len(values):
                values[k:] -= values[k]  # back to 0 at the restart
        return values

    def _lost(self, first: int, length: int, node: str) -> np.ndarray:
        """1 for steps whose usage is lost: those that end at a restart."""
        lost = np.zeros(length, dtype=bool)
        for reset in self._resets(node):
            k = reset - first - 1
            if 0 <= k < length:
                lost[k] = True
        return lost

    def _pod_rates(self, plan: PodPlan) -> dict[str, float]:
        watts = IDLE_WATTS + (MAX_WATTS - IDLE_WATTS) * plan.utilization
        return {
            catalogue.POD_GPU_ALLOCATED_SECONDS.name: plan.fraction,
            catalogue.POD_GPU_BUSY_SECONDS.name: plan.fraction * plan.utilization,
            catalogue.POD_GPU_MEMORY_BYTE_SECONDS.name: MEMORY_BYTES * plan.fraction,
            catalogue.POD_GPU_ENERGY.name: watts * plan.fraction,
        }

    def _gpu_rates(self, node: str, gpu: int) -> dict[str, np.ndarray]:
        steps = len(self.times) - 1
        mid = self.times[:-1]
        busy = np.zeros(steps)
        held_watts = np.zeros(steps)
        held = np.zeros(steps)
        for plan in self.pods:
            if plan.node != node or gpu not in plan.gpus:
                continue
            active = (mid >= plan.start) & (mid < plan.end)
            busy += active * plan.fraction * plan.utilization
            held += active * plan.fraction
            watts = IDLE_WATTS + (MAX_WATTS - IDLE_WATTS) * plan.utilization
            held_watts += active * plan.fraction * watts
        for work in self.outside:
            if work.node == node and work.gpu == gpu:
                active = (mid >= work.start) & (mid < work.end)
                busy += active * work.utilization
                held_watts += active * (MAX_WATTS - IDLE_WATTS) * work.utilization
        # The board draws idle power for the share nobody holds.
        energy = held_watts + (1 - np.minimum(held, 1)) * IDLE_WATTS
        return {
            catalogue.GPU_SAMPLED_SECONDS.name: np.ones(steps),
            catalogue.GPU_BUSY_SECONDS.name: np.minimum(busy, 1.0),
            catalogue.GPU_ENERGY.name: energy,
        }

    def _check_sharing(self) -> None:
        held: dict[tuple[str, int], list[PodPlan]] = defaultdict(list)
        for plan in self.pods:
            if plan.start % self.step or plan.end % self.step or plan.end <= plan.start:
                raise ValueError(f"{plan.pod}: start and end must be on the step grid")
            for gpu in plan.gpus:
                held[(plan.node, gpu)].append(plan)
        for (node, gpu), plans in held.items():
            for t in {p.start for p in plans}:
                total = sum(p.fraction for p in plans if p.start <= t < p.end)
                if total > 1 + 1e-9:
                    raise ValueError(f"{node} GPU {gpu} is held {total:.2f} times at {t}")

    # ---------------------------------------------------------------- ground truth
    def truth(self) -> tuple[dict, dict]:
        """What hourly increase() must give: usage per (hour, namespace, pod, node, model,
        sharing) as {held, busy, memory, energy} (seconds, byte-seconds, joules) and
        capacity per (hour, node, model) as {capacity, busy, energy, gpus}."""
        usage: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        names = {
            catalogue.POD_GPU_ALLOCATED_SECONDS.name: "held",
            catalogue.POD_GPU_BUSY_SECONDS.name: "busy",
            catalogue.POD_GPU_MEMORY_BYTE_SECONDS.name: "memory",
            catalogue.POD_GPU_ENERGY.name: "energy",
        }
        for plan in self.pods:
            first, last = self._index(plan.start), self._index(plan.end)
            lost = self._lost(first, last - first, plan.node)
            step_hours = self.times[first:last] // HOUR * HOUR
            for metric, rate in self._pod_rates(plan).items():
                amounts = np.where(lost, 0.0, rate * self.step) * len(plan.gpus)
                for hour, amount in _by_hour(step_hours, amounts):
                    key = (hour, plan.namespace, plan.pod, plan.node, self.model, plan.sharing)
                    usage[key][names[metric]] += amount
        capacity: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        gpu_names = {
            catalogue.GPU_SAMPLED_SECONDS.name: "capacity",
            catalogue.GPU_BUSY_SECONDS.name: "busy",
            catalogue.GPU_ENERGY.name: "energy",
        }
        steps = len(self.times) - 1
        step_hours = self.times[:-1] // HOUR * HOUR
        for node in self.nodes:
            lost = self._lost(0, steps, node)
            for gpu in range(self.gpus_per_node):
                for metric, rates in self._gpu_rates(node, gpu).items():
                    amounts = np.where(lost, 0.0, rates * self.step)
                    for hour, amount in _by_hour(step_hours, amounts):
                        capacity[(hour, node, self.model)][gpu_names[metric]] += amount
            for hour in self.hours:
                capacity[(hour, node, self.model)]["gpus"] = self.gpus_per_node
        return {k: dict(v) for k, v in usage.items()}, {k: dict(v) for k, v in capacity.items()}

    # ---------------------------------------------------------------- exposition
    def write(self, out: TextIO, flavour: str = "openmetrics") -> None:
        """Stream the history: `openmetrics` (seconds, `# EOF`) or `prometheus` (ms)."""
        if flavour not in ("openmetrics", "prometheus"):
            raise ValueError("flavour is openmetrics or prometheus")
        scale = 1 if flavour == "openmetrics" else 1000
        families: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = defaultdict(list)
        for node in self.nodes:
            for gpu in range(self.gpus_per_node):
                labels = _labels(
                    node=node,
                    gpu=str(gpu),
                    uuid=_uuid(node, gpu),
                    model=self.model,
                    source=self.source,
                )
                for metric, rates in self._gpu_rates(node, gpu).items():
                    values = self._counter(rates, 0, node)
                    families[metric].append((labels, self.times, values))
        for plan in self.pods:
            first, last = self._index(plan.start), self._index(plan.end)
            for gpu in plan.gpus:
                labels = _labels(
                    namespace=plan.namespace,
                    pod=plan.pod,
                    container=plan.container,
                    node=plan.node,
                    gpu=str(gpu),
                    uuid=_uuid(plan.node, gpu),
                    model=self.model,
                    mig_profile=plan.mig_profile,
                    gpu_instance="1" if plan.mig_profile else "",
                    sharing=plan.sharing,
                    source=self.source,
                )
                for metric, rate in self._pod_rates(plan).items():
                    values = self._counter(np.full(last - first, rate), first, plan.node)
                    families[metric].append((labels, self.times[first : last + 1], values))
        for metric, series in families.items():
            self._family(out, metric, "counter", series, scale, flavour, counters=True)
        for metric, series in self._ksm().items():
            self._family(out, metric, "gauge", series, scale, flavour, counters=False)
        if flavour == "openmetrics":
            out.write("# EOF\n")

    def _family(
        self,
        out: TextIO,
        metric: str,
        kind: str,
        series: list[tuple[str, np.ndarray, np.ndarray]],
        scale: int,
        flavour: str,
        counters: bool,
    ) -> None:
        family = metric[: -len("_total")] if counters and flavour == "openmetrics" else metric
        out.write(f"# TYPE {family} {kind}\n")
        for labels, times, values in series:
            keep = self.kept[(times - self.start) // self.step] if counters else slice(None)
            prefix = f"{metric}{{{labels}}} "
            out.write(
                "".join(
                    f"{prefix}{v:.6f} {t * scale}\n"
                    for t, v in zip(times[keep].tolist(), values[keep].tolist(), strict=True)
                )
            )

    def _ksm(self) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
        """kube-state-metrics series (value 1) every ksm_every seconds of each life."""
        every = self.ksm_every

        def samples(start: int, end: int) -> np.ndarray:
            times = np.arange(math.ceil(start / every) * every, end, every, dtype=np.int64)
            return np.unique(np.concatenate([[start], times, [end]]))

        series: dict[str, list] = defaultdict(list)

        def add(metric: str, times: np.ndarray, value: float = 1.0, **labels: str) -> None:
            series[metric].append((_labels(**labels), times, np.full(len(times), value)))

        owned: dict[tuple[str, str, str], tuple[str, str, np.ndarray]] = {}
        for plan in self.pods:
            times = samples(plan.start, plan.end)
            uid = f"uid-{plan.namespace}-{plan.pod}"
            if plan.owner:
                add(
                    "kube_pod_owner",
                    times,
                    namespace=plan.namespace,
                    pod=plan.pod,
                    uid=uid,
                    owner_kind=plan.owner[0],
                    owner_name=plan.owner[1],
                    owner_is_controller="true",
                )
                if plan.owner_owner:
                    key = (plan.namespace, *plan.owner)
                    previous = owned.get(key)
                    merged = times if previous is None else np.union1d(previous[2], times)
                    owned[key] = (*plan.owner_owner, merged)
            label_values = {f"label_{_sanitise(k)}": v for k, v in plan.labels}
            add(
                "kube_pod_labels",
                times,
                namespace=plan.namespace,
                pod=plan.pod,
                uid=uid,
                **label_values,
            )
            add(
                "kube_pod_container_resource_requests",
                times,
                float(len(plan.gpus)),
                namespace=plan.namespace,
                pod=plan.pod,
                container=plan.container,
                node=plan.node,
                resource="nvidia_com_gpu",
                unit="integer",
            )
        for (namespace, kind, name), (owner_kind, owner_name, times) in owned.items():
            metric, name_label = {
                "Job": ("kube_job_owner", "job_name"),
                "ReplicaSet": ("kube_replicaset_owner", "replicaset"),
            }[kind]
            add(
                metric,
                times,
                namespace=namespace,
                owner_kind=owner_kind,
                owner_name=owner_name,
                owner_is_controller="true",
                **{name_label: name},
            )
        whole = samples(self.start, self.end)
        for namespace, labels in self.namespace_labels.items():
            extra = {f"label_{_sanitise(k)}": v for k, v in labels.items()}
            add("kube_namespace_labels", whole, namespace=namespace, **extra)
        for node, labels in self.node_labels.items():
            extra = {f"label_{_sanitise(k)}": v for k, v in labels.items()}
            add("kube_node_labels", whole, node=node, **extra)
        return series


def _by_hour(step_hours: np.ndarray, amounts: np.ndarray) -> Iterable[tuple[int, float]]:
    hours, inverse = np.unique(step_hours, return_inverse=True)
    sums = np.bincount(inverse, weights=amounts, minlength=len(hours))
    return zip(hours.tolist(), sums.tolist(), strict=True)


def _sanitise(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def _uuid(node: str, gpu: int) -> str:
    return f"GPU-{node}-{gpu:02d}"


# ---------------------------------------------------------------- the default cluster
TEAMS = ("vision", "language", "speech", "research")
OWNERS = (
    (("Job", "{job}"), ("JobSet", "{job}")),
    (("PyTorchJob", "{job}"), None),
    (("RayCluster", "{job}"), None),
    (("ReplicaSet", "{job}-7d9f8"), ("Deployment", "{job}")),
    (None, None),
)


def generate(
    nodes: int = 2,
    gpus: int = 8,
    pods: int = 6,
    days: float = 1,
    step: int = 300,
    *,
    start: int,
    seed: int = 0,
    model: str = MODEL,
    align: str = "hour",
    extra_nodes: Sequence[str] = (),
    extra_pods: Sequence[PodPlan] = (),
    outside: Sequence[OutsideBusy] = (),
    restarts: Sequence[tuple[str, int]] = (),
    gaps: Sequence[tuple[int, int]] = (),
) -> Generated:
    """A cluster of `nodes` x `gpus` GPUs with `pods` pods over `days` from `start`.

    Pods run one after another on each node, each on the first 1, 2, 4 or all GPUs,
    with idle time between them; their start and end fall on whole hours
    (align="hour") or anywhere on the step grid (align="step"). Owners cycle through
    Job of a JobSet, PyTorchJob, RayCluster, ReplicaSet of a Deployment and none;
    teams come from pod labels, namespace labels, or nowhere (`__unlabelled__`).
    `extra_nodes` get no default pods: room for `extra_pods` (shared GPUs, MIG).
    """
    rng = random.Random(seed)
    end = start + int(days * 24) * HOUR
    grain = HOUR if align == "hour" else step
    node_names = [f"gpu-node-{i:04d}" for i in range(nodes)]
    per_node = math.ceil(pods / nodes) if pods else 0
    plans: list[PodPlan] = []
    for i in range(pods):
        node, slot = i % nodes, i // nodes
        length = (end - start) // per_node // grain * grain
        if length < 2 * grain:
            raise ValueError("too many pods for the time: lengthen days or shorten align")
        slot_start = start + slot * length
        begin = slot_start + rng.randrange(0, length // 4 // grain + 1) * grain
        finish = slot_start + length - rng.randrange(0, length // 4 // grain + 1) * grain
        finish = max(finish, begin + grain)
        held = sorted({gpus, max(1, gpus // 2), max(1, gpus // 4), 1})
        count = rng.choice(held)
        team = TEAMS[i % len(TEAMS)]
        job = f"{team}-job-{i:05d}"
        owner, owner_owner = OWNERS[i % len(OWNERS)]
        labels = (("team", team),) if i % 3 == 0 else (("app", "trainer"),)
        plans.append(
            PodPlan(
                namespace=f"ns-{team}",
                pod=f"{job}-worker-0",
                node=node_names[node],
                gpus=tuple(range(count)),
                start=begin,
                end=finish,
                utilization=round(rng.uniform(0.2, 0.95), 3),
                labels=labels,
                owner=(owner[0], owner[1].format(job=job)) if owner else None,
                owner_owner=(
                    (owner_owner[0], owner_owner[1].format(job=job)) if owner_owner else None
                ),
            )
        )
    plans.extend(extra_pods)
    namespace_labels = {f"ns-{t}": {"team": t} for t in TEAMS[:3]}
    namespace_labels[f"ns-{TEAMS[3]}"] = {}  # research labels only some pods
    for plan in extra_pods:
        namespace_labels.setdefault(plan.namespace, {})
    return Generated(
        start=start,
        end=end,
        step=step,
        nodes=node_names + list(extra_nodes),
        gpus_per_node=gpus,
        model=model,
        pods=plans,
        outside=list(outside),
        restarts=list(restarts),
        gaps=list(gaps),
        namespace_labels=namespace_labels,
        node_labels={
            n: {"topology.kubernetes.io/region": "eu-west-1", "nvidia.com/gpu.product": model}
            for n in node_names + list(extra_nodes)
        },
    )
