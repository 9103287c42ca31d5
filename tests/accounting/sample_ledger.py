"""A ledger with a month of plausible GPU usage, for the HTML report and the API tests.

Six nodes (four of 8 H100s, two of 8 A100s), five teams plus unlabelled work, jobs
of a few hours to a few days placed on free GPUs, each job with its own efficiency;
a little GPU time outside any pod on one node. Deterministic for a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from accounting.ledger import HOUR, Ledger, PodMetadata
from accounting.pricebook import parse_price_book

H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100-SXM4-80GB"
NODES = {"h1": H100, "h2": H100, "h3": H100, "h4": H100, "a1": A100, "a2": A100}
GPUS_PER_NODE = 8
# namespace -> team label on the namespace (None: no label, goes to __unlabelled__)
NAMESPACES = {
    "llm-research": "research",
    "vision": "research",
    "inference": "serving",
    "recsys": "ads",
    "data-eng": "data",
    "sandbox": None,
}
PRICE_BOOK = parse_price_book(
    {
        "currency": "USD",
        "provider": "test cluster",
        "price_per_kwh": 0.10,
        "gpu_models": {
            H100: {"price_per_gpu_hour": 2.00, "node_overhead_per_hour": 4.00},
            A100: {"price_per_gpu_hour": 1.00},
        },
    },
    "test-price-book.yaml",
)


@dataclass
class Job:
    namespace: str
    name: str
    node: str
    gpus: int
    start: int  # hour index
    end: int
    efficiency: float


def month_start(month: str) -> int:
    year, number = (int(p) for p in month.split("-"))
    return int(datetime(year, number, 1, tzinfo=UTC).timestamp())


def plan_jobs(hours: int, seed: int = 7) -> list[Job]:
    """Jobs placed greedily on free GPUs, hour by hour."""
    rng = random.Random(seed)
    free_at = {(node, gpu): 0 for node in NODES for gpu in range(GPUS_PER_NODE)}
    jobs: list[Job] = []
    namespaces = list(NAMESPACES)
    weights = [5, 2, 3, 2, 1, 1]
    count = 0
    for hour in range(hours):
        for node in NODES:
            free = [g for g in range(GPUS_PER_NODE) if free_at[(node, g)] <= hour]
            # Leave some capacity idle: start a job only some of the time.
            while free and rng.random() < 0.55:
                gpus = min(len(free), rng.choice([1, 2, 4, 8, 8]))
                length = rng.choice([3, 6, 12, 24, 48, 72])
                namespace = rng.choices(namespaces, weights)[0]
                count += 1
                job = Job(
                    namespace,
                    f"{namespace.split('-')[0]}-job-{count:04d}",
                    node,
                    gpus,
                    hour,
                    min(hours, hour + length),
                    round(rng.uniform(0.15, 0.95), 2),
                )
                jobs.append(job)
                for g in free[:gpus]:
                    free_at[(node, g)] = job.end + rng.choice([0, 1, 2, 4])
                free = free[gpus:]
    return jobs


def build_ledger(path: Path, month: str = "2026-11", days: int = 30, seed: int = 7) -> Ledger:
    """A ledger file at `path` with `days` days of `month`."""
    ledger = Ledger(str(path)).create()
    start = month_start(month)
    hours = days * 24
    jobs = plan_jobs(hours, seed)
    for index in range(hours):
        hour = start + index * HOUR
        usage, busy_by_node = [], {n: 0 for n in NODES}
        for job in jobs:
            if not job.start <= index < job.end:
                continue
            held_ms = job.gpus * 3_600_000
            busy_ms = round(held_ms * job.efficiency)
            busy_by_node[job.node] += busy_ms
            usage.append(
                {
                    "namespace": job.namespace,
                    "pod": f"{job.name}-worker-0",
                    "node": job.node,
                    "model": NODES[job.node],
                    "sharing": "exclusive",
                    "held_ms": held_ms,
                    "busy_ms": busy_ms,
                    "memory_byte_seconds": job.gpus * 40e9 * 3600,
                    "energy_mj": round(job.gpus * (0.15 + 0.5 * job.efficiency) * 3.6e9),
                }
            )
        # A process outside Kubernetes on h4, 30 GPU-minutes every hour.
        busy_by_node["h4"] += 1_800_000
        capacity = [
            {
                "node": node,
                "model": model,
                "gpus": GPUS_PER_NODE,
                "capacity_ms": GPUS_PER_NODE * 3_600_000,
                "busy_ms": busy_by_node[node],
                "energy_mj": round(GPUS_PER_NODE * 0.7 * 3.6e9),
            }
            for node, model in NODES.items()
        ]
        ledger.write_hour(hour, usage, capacity, "http://prometheus.test:9090")
    end = start + hours * HOUR
    ledger.merge_metadata(
        [
            PodMetadata(
                namespace=job.namespace,
                pod=f"{job.name}-worker-0",
                first_seen=start + job.start * HOUR,
                last_seen=start + job.end * HOUR,
                observed_at=end,
                node=job.node,
                owner_kind="PyTorchJob",
                owner_name=job.name,
                job_kind="PyTorchJob",
                job_name=job.name,
                chain=(f"PyTorchJob/{job.name}",),
                labels={"training.kubeflow.org/job-name": job.name},
                resolved_by="kube-api",
            )
            for job in jobs
        ],
        namespace_labels={
            ns: ({"team": team} if team else {}, end) for ns, team in NAMESPACES.items()
        },
    )
    return ledger
