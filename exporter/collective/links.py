"""Link bytes per pod: NVLink and PCIe of the GPUs a pod holds, InfiniBand of its NICs.

The devices count bytes since the driver loaded, whoever used them. A pod gets only the
bytes moved while it held the device: each update adds the counters' increase since the
last update to the pods holding the device now, split evenly when several hold it (a
time-sliced GPU, MIG instances of one GPU, a NIC under the RDMA shared device plugin).
So the pod counters start at 0 and only grow; a device counter that goes backwards
(driver reload) counts from 0 again.

Who holds what comes from the kubelet's PodResources: GPUs by UUID (or their MIG
instances' UUIDs), NICs by RDMA device name (rdma/...) or PCI address
(nvidia.com/hostdev, SR-IOV). `devices_from_attribution` builds that mapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from exporter import catalogue as cat
from exporter.attribution import Attribution, PodRef
from exporter.catalogue import MetricSpec
from exporter.collective.infiniband import IbPortCounters
from exporter.model import GpuReading


@dataclass(frozen=True)
class PodLinkBytes:
    spec: MetricSpec  # POD_NVLINK_BYTES, POD_PCIE_BYTES or POD_IB_BYTES
    pod: PodRef
    device: tuple[str, str]  # (gpu index, uuid) or (RDMA device, port)
    direction: str  # tx or rx
    bytes: float


@dataclass(frozen=True)
class LinkSnapshot:
    ib_ports: tuple[IbPortCounters, ...]
    pods: tuple[PodLinkBytes, ...]


def devices_from_attribution(attribution: Attribution) -> dict[str, tuple[PodRef, ...]]:
    """Device ID (GPU or MIG UUID, RDMA device, PCI address) -> containers holding it."""
    return {
        device: tuple(dict.fromkeys(a.pod for a in assignments))
        for device, assignments in attribution.devices.items()
    }


def _union(*groups: Sequence[PodRef] | None) -> tuple[PodRef, ...]:
    return tuple(dict.fromkeys(p for g in groups if g for p in g))


class LinkAttributor:
    """Keeps each device's last counter values and each pod's accumulated bytes."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str, str, str], int] = {}
        self._pods: dict[tuple[MetricSpec, PodRef, tuple[str, str], str], float] = {}

    def update(
        self,
        gpus: Sequence[GpuReading],
        ib_ports: Sequence[IbPortCounters],
        holders: Mapping[str, Sequence[PodRef]],
    ) -> LinkSnapshot:
        seen_last: dict[tuple[str, str, str, str], int] = {}
        held: set[tuple[MetricSpec, PodRef, tuple[str, str], str]] = set()

        def advance(
            spec: MetricSpec, device: tuple[str, str], direction: str, value: int | None, pods
        ) -> None:
            key = (spec.name, device[0], device[1], direction)
            previous = self._last.get(key)
            if value is None:
                # Not read this time (a failed NVML call): keep what the pods have so far.
                if previous is not None:
                    seen_last[key] = previous
                held.update((spec, pod, device, direction) for pod in pods)
                return
            seen_last[key] = value
            if previous is None:
                previous = value  # first sight: the bytes so far were someone else's
            delta = value - previous if value >= previous else value
            for pod in pods:
                entry = (spec, pod, device, direction)
                held.add(entry)
                self._pods[entry] = self._pods.get(entry, 0.0) + delta / len(pods)

        for gpu in gpus:
            pods = _union(holders.get(gpu.uuid), *(holders.get(m.uuid) for m in gpu.mig))
            device = (str(gpu.index), gpu.uuid)
            advance(cat.POD_NVLINK_BYTES, device, "tx", gpu.nvlink_tx_bytes_total, pods)
            advance(cat.POD_NVLINK_BYTES, device, "rx", gpu.nvlink_rx_bytes_total, pods)
            advance(cat.POD_PCIE_BYTES, device, "tx", gpu.pcie_tx_bytes_total, pods)
            advance(cat.POD_PCIE_BYTES, device, "rx", gpu.pcie_rx_bytes_total, pods)
        for port in ib_ports:
            pods = _union(holders.get(port.device), holders.get(port.pci_address or "\0"))
            device = (port.device, str(port.port))
            advance(cat.POD_IB_BYTES, device, "tx", port.xmit_bytes, pods)
            advance(cat.POD_IB_BYTES, device, "rx", port.rcv_bytes, pods)

        self._last = seen_last
        # A pod that no longer holds the device is gone (devices are held for a pod's life).
        for entry in [e for e in self._pods if e not in held]:
            del self._pods[entry]
        return LinkSnapshot(
            ib_ports=tuple(ib_ports),
            pods=tuple(
                PodLinkBytes(spec, pod, device, direction, value)
                for (spec, pod, device, direction), value in self._pods.items()
            ),
        )
