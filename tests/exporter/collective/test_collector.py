"""The collector's whole exposition, against a committed golden file and the catalogue.

Regenerate the golden file after an intended change with
    UPDATE_GOLDEN=1 python -m pytest tests/exporter/collective/test_collector.py
and review the diff.
"""

import os
import shutil

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalogue as cat
from exporter.attribution import Attribution, DeviceAssignment, PodRef
from exporter.collective.aggregator import CollectiveAggregator
from exporter.collective.collector import CollectiveCollector
from exporter.collective.inspector import InspectorReader
from exporter.model import GpuReading
from gpuledger.probe_wire import OpReport, Report
from tests.exporter.collective.test_infiniband import make_port

HERE = os.path.dirname(__file__)
GOLDEN = os.path.join(HERE, "golden", "collective.prom")
NOW = 1_800_000_000.0

TRAIN = PodRef("ml", "llm-pretrain-0", "trainer", "uid-1")
# The same pod name recreated (new UID) while the old one is still known: merged.
TRAIN_AGAIN = PodRef("ml", "llm-pretrain-0", "trainer", "uid-2")
EVAL = PodRef("ml", "eval-7", "main", "uid-3")
GPU0 = "GPU-3f2a5b1c-0d4e-4f60-8a7b-9c0d1e2f3a4b"


class Clock:
    now = 500.0

    def __call__(self):
        return self.now


def _report(seq, uptime, nbytes, seconds, calls, world=4, op="all_reduce"):
    factor = 2 * (world - 1) / world
    return Report(
        instance="abc",
        seq=seq,
        uptime_s=uptime,
        ops={
            op: OpReport(nbytes, nbytes * factor, seconds, calls, world),
            "barrier": OpReport(0, 0.0, 0.002 * calls, calls, world),
        },
    )


@pytest.fixture
def collector(tmp_path):
    clock = Clock()
    aggregator = CollectiveAggregator(clock=clock)
    aggregator.ingest(11, TRAIN, _report(0, 10, 8 * 2**30, 4.0, 100))
    aggregator.ingest(12, TRAIN, _report(0, 10, 8 * 2**30, 4.0, 100))
    clock.now += 1
    aggregator.ingest(11, TRAIN, _report(1, 11, 9 * 2**30, 4.5, 110))
    aggregator.ingest(13, TRAIN_AGAIN, _report(0, 5, 2**30, 0.5, 10))
    aggregator.ingest(21, EVAL, _report(0, 3, 2**20, 0.01, 4, world=2, op="broadcast"))
    for reason in ("malformed", "malformed", "unattributed"):
        aggregator.reject(reason)
    aggregator.set_connections(3)

    inspector_dir = tmp_path / "inspector"
    shutil.copytree(os.path.join(HERE, "fixtures", "inspector"), inspector_dir)
    for name in os.listdir(inspector_dir):
        os.utime(inspector_dir / name, (NOW - 20, NOW - 20))
    holders = {GPU0: [TRAIN]}
    reader = InspectorReader(
        str(inspector_dir), lambda uuid: holders.get(uuid, []), clock=lambda: NOW
    )

    sys_root = str(tmp_path / "sys")
    make_port(sys_root, "mlx5_0", 1, xmit=1000, rcv=2000, pci="0000:3b:00.0")
    collector = CollectiveCollector(
        aggregator, "gpu-node-7", inspector=reader, infiniband_sys_root=sys_root
    )
    attribution = Attribution(
        devices={
            GPU0: (DeviceAssignment("nvidia.com/gpu", GPU0, TRAIN),),
            "0000:3b:00.0": (DeviceAssignment("nvidia.com/hostdev", "0000:3b:00.0", TRAIN),),
        }
    )
    reading = GpuReading(0, GPU0, "NVIDIA H100 80GB HBM3", nvlink_tx_bytes_total=10**9)
    collector.refresh([reading], attribution)
    make_port(sys_root, "mlx5_0", 1, xmit=1500, rcv=2100)
    reading = GpuReading(
        0, GPU0, "NVIDIA H100 80GB HBM3", nvlink_tx_bytes_total=10**9 + 4096, pcie_rx_bytes_total=7
    )
    collector.refresh([reading], attribution)
    return collector


def _exposition(collector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_the_exposition_matches_the_golden_file(collector):
    text = _exposition(collector)
    if os.environ.get("UPDATE_GOLDEN"):
        os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
        with open(GOLDEN, "w") as f:
            f.write(text)
    with open(GOLDEN) as f:
        assert text == f.read()


def test_every_series_has_exactly_the_catalogues_labels(collector):
    families = list(text_string_to_metric_families(_exposition(collector)))
    assert families
    for family in families:
        spec = cat.spec(family.name if family.type != "counter" else family.name + "_total")
        assert family.type == spec.type.value
        for sample in family.samples:
            assert sample.name in spec.exposed_names or sample.name.endswith("_created")
            extra = {"le"} if sample.name.endswith("_bucket") else set()
            assert set(sample.labels) == set(spec.labels) | extra, sample


def test_ranks_sum_and_a_recreated_pod_merges(collector):
    samples = {
        (s.name, s.labels.get("pod"), s.labels.get("operation")): s.value
        for f in text_string_to_metric_families(_exposition(collector))
        for s in f.samples
    }
    # Ranks 11 and 12 (9 + 8 GiB) and the recreated pod's rank 13 (1 GiB).
    assert samples[(cat.COLLECTIVE_BYTES.name, "llm-pretrain-0", "all_reduce")] == 18 * 2**30
    assert samples[(cat.COLLECTIVE_CALLS.name, "eval-7", "broadcast")] == 4
    assert (cat.COLLECTIVE_BUSBW.name, "eval-7", "barrier") not in samples


def test_refresh_survives_a_broken_inspector_directory(collector, tmp_path, monkeypatch):
    def broken():
        raise PermissionError("no access")

    monkeypatch.setattr(collector._inspector, "read", broken)
    collector.refresh([], None)
    text = _exposition(collector)
    assert cat.NCCL_INSPECTOR_BUSBW.name not in text
    assert cat.COLLECTIVE_BYTES.name in text  # the probe's families are unaffected
