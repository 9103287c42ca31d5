"""The worked example of docs/cost-model.md (section 7), written into a ledger.

Ten hours from `start`: node h1 with 8 H100s, node a1 with 4 A100s, five pods of three
teams (time-sliced and MIG sharing among them), and GPU work outside Kubernetes.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from accounting.ledger import HOUR, Ledger, PodMetadata
from accounting.pricebook import PriceBook, parse_price_book

DOC = Path(__file__).resolve().parents[2] / "docs" / "cost-model.md"
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
MS, MJ = 3_600_000, 3_600_000_000  # one GPU-hour in ms, one kWh in mJ
START = 1714521600  # 2024-05-01T00:00Z


def doc_price_book() -> PriceBook:
    """The price book shown in the document's section 2."""
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/cost-model.md lost its price book example"
    return parse_price_book(yaml.safe_load(block.group(1)), str(DOC))


def _usage(ns: str, pod: str, node: str, model: str, sharing: str, held, busy, kwh) -> dict:
    return {
        "namespace": ns,
        "pod": pod,
        "node": node,
        "model": model,
        "sharing": sharing,
        "held_ms": round(held * MS),
        "busy_ms": round(busy * MS),
        "memory_byte_seconds": 40e9 * 3600 * held,
        "energy_mj": round(kwh * MJ),
    }


def build(ledger: Ledger, start: int = START) -> None:
    for i in range(10):
        hour = start + i * HOUR
        rows = [
            _usage("ml-b", "tune-head", "a1", A100, "exclusive", 2, 0.5, 0.4),
            _usage("ml-b", "notebook-b", "a1", A100, "shared", 0.5, 0.2, 0.15),
            _usage("ml-c", "notebook-c", "a1", A100, "shared", 0.5, 0.1, 0.1),
        ]
        if i < 6:
            rows.append(_usage("ml-a", "llama-worker-0", "h1", H100, "exclusive", 8, 6, 5))
        if i < 7:
            rows.append(_usage("ml-c", "infer-c", "a1", A100, "mig", 3 / 7, 1.5 / 7, 0.5 / 7))
        a1_busy = sum(r["busy_ms"] for r in rows if r["node"] == "a1")
        capacity = [
            {
                "node": "h1",
                "model": H100,
                "gpus": 8,
                "capacity_ms": 8 * MS,
                "busy_ms": 6 * MS if i < 6 else MS // 2,  # outside Kubernetes after hour 6
                # 40 kWh in all: 5 kWh an hour while training, 2.5 after.
                "energy_mj": 5 * MJ if i < 6 else MJ * 5 // 2,
            },
            {
                "node": "a1",
                "model": A100,
                "gpus": 4,
                "capacity_ms": 4 * MS,
                "busy_ms": a1_busy,
                "energy_mj": 1 * MJ,
            },
        ]
        ledger.write_hour(hour, rows, capacity, "worked-example")
    end = start + 10 * HOUR
    pods = [
        ("ml-a", "llama-worker-0", "PyTorchJob", "llama", {}),
        ("ml-b", "tune-head", "RayJob", "tune", {"team": "team-b"}),
        ("ml-b", "notebook-b", "", "", {}),
        ("ml-c", "notebook-c", "", "", {}),
        ("ml-c", "infer-c", "Deployment", "infer", {}),
    ]
    ledger.merge_metadata(
        [
            PodMetadata(
                namespace=ns,
                pod=pod,
                first_seen=start,
                last_seen=end,
                observed_at=end,
                job_kind=kind or "Pod",
                job_name=name or pod,
                labels=labels,
                resolved_by="kube-api" if kind else "none",
            )
            for ns, pod, kind, name, labels in pods
        ],
        namespace_labels={
            "ml-a": ({"team": "team-a"}, end),
            "ml-b": ({}, end),
            # kube-state-metrics spells cost-center as cost_center: both must match.
            "ml-c": ({"cost_center": "team-c"}, end),
        },
    )
    # notebook-b has no team label of its own: its namespace has none either, so the
    # test gives it one on the pod through a second observation (newer wins).
    ledger.merge_metadata(
        [
            PodMetadata(
                namespace="ml-b",
                pod="notebook-b",
                first_seen=start,
                last_seen=end,
                observed_at=end + HOUR,
                job_kind="Pod",
                job_name="notebook-b",
                labels={"team": "team-b"},
            )
        ]
    )
