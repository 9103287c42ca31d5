"""Link bytes attributed to the pods holding the GPU or the NIC."""

import pytest

from exporter import catalogue as cat
from exporter.attribution import Attribution, DeviceAssignment, PodRef
from exporter.collective.infiniband import IbPortCounters
from exporter.collective.links import LinkAttributor, devices_from_attribution
from exporter.model import GpuReading, MigReading

A = PodRef("ml", "a", "main", "ua")
B = PodRef("ml", "b", "main", "ub")
C = PodRef("ml", "c", "main", "uc")
GPU0 = "GPU-00000000-0000-4000-8000-000000000000"
MIG1, MIG2 = "MIG-11111111-1111-4111-8111-111111111111", "MIG-22222222-2222-4222-8222-222222222222"


def gpu(index, uuid, nvtx, nvrx=0, pcietx=0, pcierx=0, mig=()):
    return GpuReading(
        index=index,
        uuid=uuid,
        model="NVIDIA H100 80GB HBM3",
        nvlink_tx_bytes_total=nvtx,
        nvlink_rx_bytes_total=nvrx,
        pcie_tx_bytes_total=pcietx,
        pcie_rx_bytes_total=pcierx,
        mig=mig,
    )


def pods_bytes(snapshot):
    return {(e.spec.name, e.pod.pod, e.device, e.direction): e.bytes for e in snapshot.pods}


def test_a_pod_gets_the_bytes_moved_while_it_holds_the_gpu():
    links = LinkAttributor()
    holders = {GPU0: [A]}
    first = links.update([gpu(0, GPU0, nvtx=10**12, pcietx=500)], [], holders)
    # The bytes before the pod was seen were someone else's.
    assert pods_bytes(first)[(cat.POD_NVLINK_BYTES.name, "a", ("0", GPU0), "tx")] == 0
    second = links.update([gpu(0, GPU0, nvtx=10**12 + 4096, nvrx=0, pcietx=600)], [], holders)
    got = pods_bytes(second)
    assert got[(cat.POD_NVLINK_BYTES.name, "a", ("0", GPU0), "tx")] == 4096
    assert got[(cat.POD_PCIE_BYTES.name, "a", ("0", GPU0), "tx")] == 100
    assert got[(cat.POD_PCIE_BYTES.name, "a", ("0", GPU0), "rx")] == 0


def test_a_shared_gpu_splits_its_bytes_evenly():
    links = LinkAttributor()
    mig = (
        MigReading(MIG1, "3g.40gb", 1, 0, 3 / 7),
        MigReading(MIG2, "3g.40gb", 2, 0, 3 / 7),
    )
    links.update([gpu(0, GPU0, nvtx=0, mig=mig)], [], {MIG1: [A], MIG2: [B]})
    got = pods_bytes(links.update([gpu(0, GPU0, nvtx=1000, mig=mig)], [], {MIG1: [A], MIG2: [B]}))
    assert got[(cat.POD_NVLINK_BYTES.name, "a", ("0", GPU0), "tx")] == 500
    assert got[(cat.POD_NVLINK_BYTES.name, "b", ("0", GPU0), "tx")] == 500


def test_a_nic_is_matched_by_rdma_device_or_pci_address_and_shared():
    links = LinkAttributor()
    ports = lambda tx: [  # noqa: E731
        IbPortCounters("mlx5_0", 1, tx, 0, "InfiniBand", "0000:3b:00.0"),
        IbPortCounters("mlx5_1", 1, tx, 0, "Ethernet", "0000:86:00.0"),
    ]
    holders = {"mlx5_0": [A, B], "0000:3b:00.0": [C], "0000:86:00.0": [A]}
    links.update([], ports(0), holders)
    snapshot = links.update([], ports(3000), holders)
    got = pods_bytes(snapshot)
    for pod in ("a", "b", "c"):
        assert got[(cat.POD_IB_BYTES.name, pod, ("mlx5_0", "1"), "tx")] == pytest.approx(1000)
    assert got[(cat.POD_IB_BYTES.name, "a", ("mlx5_1", "1"), "tx")] == 3000
    assert [p.device for p in snapshot.ib_ports] == ["mlx5_0", "mlx5_1"]


def test_a_counter_reset_counts_from_zero_and_a_missed_read_keeps_the_totals():
    links = LinkAttributor()
    holders = {GPU0: [A]}
    key = (cat.POD_NVLINK_BYTES.name, "a", ("0", GPU0), "tx")
    links.update([gpu(0, GPU0, nvtx=1000)], [], holders)
    assert pods_bytes(links.update([gpu(0, GPU0, nvtx=1500)], [], holders))[key] == 500
    # The driver reloaded: the device counter restarted below its last value.
    assert pods_bytes(links.update([gpu(0, GPU0, nvtx=200)], [], holders))[key] == 700
    # NVML could not read the counter this time: the pod keeps what it had.
    assert pods_bytes(links.update([gpu(0, GPU0, nvtx=None)], [], holders))[key] == 700
    assert pods_bytes(links.update([gpu(0, GPU0, nvtx=300)], [], holders))[key] == 800


def test_a_pod_that_releases_the_device_loses_its_series():
    links = LinkAttributor()
    links.update([gpu(0, GPU0, nvtx=0)], [], {GPU0: [A]})
    links.update([gpu(0, GPU0, nvtx=100)], [], {GPU0: [A]})
    snapshot = links.update([gpu(0, GPU0, nvtx=900)], [], {GPU0: [B]})
    got = pods_bytes(snapshot)
    assert {k[1] for k in got} == {"b"}
    assert got[(cat.POD_NVLINK_BYTES.name, "b", ("0", GPU0), "tx")] == 800


def test_holders_come_from_the_kubelets_assignments():
    attribution = Attribution(
        devices={
            GPU0: (DeviceAssignment("nvidia.com/gpu", GPU0, A),),
            "mlx5_0": (
                DeviceAssignment("rdma/ib", "mlx5_0", A),
                DeviceAssignment("rdma/ib", "mlx5_0", B),
                DeviceAssignment("rdma/ib", "mlx5_0", A),
            ),
        }
    )
    assert devices_from_attribution(attribution) == {GPU0: (A,), "mlx5_0": (A, B)}
