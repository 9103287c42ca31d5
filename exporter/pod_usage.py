"""Split each device's readings between the pods that hold it.

The rules (docs/cost-model.md uses the same ones for money):
- A whole GPU held by one container: it holds 1 GPU-equivalent; its utilisation and
  used memory are the GPU's.
- A GPU shared by n containers (time-slicing, MPS): each holds 1/n. Utilisation is split
  by each container's share of the processes' SM samples (nvmlDeviceGetProcessUtilization);
  when no process has samples, equally. Memory is each container's processes' used memory.
- A MIG instance: it holds the instance's compute fraction (slices / 7 on an H100), split
  as above between containers that share the instance.
- Energy follows busy share on shared devices and held share otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from exporter.attribution import Attribution, DeviceAssignment, PodRef
from exporter.model import GpuReading, MigReading, ProcessReading

EXCLUSIVE, SHARED, MIG = "exclusive", "shared", "mig"


@dataclass(frozen=True)
class PodDeviceKey:
    """Identity of one pod-on-device series: the label values, in catalogue order."""

    namespace: str
    pod: str
    container: str
    gpu: str
    uuid: str
    model: str
    mig_profile: str
    gpu_instance: str
    sharing: str


@dataclass(frozen=True)
class PodDeviceUsage:
    key: PodDeviceKey
    resource: str
    allocated: float  # GPU-equivalents held
    utilization: float | None  # busy GPU-equivalents (0..allocated); None: unknown
    memory_used_bytes: int | None
    energy_share: float  # fraction of the GPU's energy in this period


def device_id(raw: str) -> str:
    """Time-sliced replicas are advertised as `<uuid>::<replica>`: the device is the uuid."""
    return raw.split("::", 1)[0]


def assignments_by_device(attribution: Attribution) -> dict[str, list[DeviceAssignment]]:
    by_device: dict[str, list[DeviceAssignment]] = defaultdict(list)
    for raw_id, assignments in attribution.devices.items():
        by_device[device_id(raw_id)].extend(assignments)
    return by_device


def _holders(assignments: list[DeviceAssignment]) -> dict[PodRef, str]:
    """Distinct containers holding a device, with the resource name they hold it by."""
    holders: dict[PodRef, str] = {}
    for assignment in assignments:
        holders.setdefault(_container_key(assignment.pod), assignment.resource)
    return holders


def _container_key(pod: PodRef) -> PodRef:
    # The kubelet's view carries no pod UID; the cgroup view does. Compare without it.
    return PodRef(pod.namespace, pod.pod, pod.container)


def _split_by_processes(
    holders: list[PodRef], processes: tuple[ProcessReading, ...], owners: dict[int, PodRef]
) -> tuple[dict[PodRef, float], dict[PodRef, int | None]]:
    """Each holder's share of SM samples, and its processes' used memory."""
    sm: dict[PodRef, float] = dict.fromkeys(holders, 0.0)
    memory: dict[PodRef, int | None] = dict.fromkeys(holders)
    for process in processes:
        owner = owners.get(process.pid)
        if owner is None:
            continue
        owner = _container_key(owner)
        if owner not in sm:
            continue
        if process.sm_utilization is not None:
            sm[owner] += process.sm_utilization
        if process.used_memory_bytes is not None:
            memory[owner] = (memory[owner] or 0) + process.used_memory_bytes
    total = sum(sm.values())
    if total > 0:
        shares = {pod: value / total for pod, value in sm.items()}
    else:
        shares = dict.fromkeys(holders, 1.0 / len(holders))
    return shares, memory


def _usages_for_device(
    gpu: GpuReading,
    assignments: list[DeviceAssignment],
    owners: dict[int, PodRef],
    *,
    fraction: float,
    utilization: float | None,
    memory_used: int | None,
    processes: tuple[ProcessReading, ...],
    mig: MigReading | None,
) -> list[PodDeviceUsage]:
    holders = _holders(assignments)
    if not holders:
        return []
    pods = list(holders)
    sharing = MIG if mig is not None else EXCLUSIVE if len(pods) == 1 else SHARED
    if len(pods) == 1:
        busy_shares = {pods[0]: 1.0}
        memory = {pods[0]: memory_used}
    else:
        busy_shares, memory = _split_by_processes(pods, processes, owners)
    held = fraction / len(pods)
    usages = []
    for pod in pods:
        busy = None if utilization is None else utilization * fraction * busy_shares[pod]
        energy_share = fraction * busy_shares[pod] if len(pods) > 1 and utilization else held
        usages.append(
            PodDeviceUsage(
                key=PodDeviceKey(
                    namespace=pod.namespace,
                    pod=pod.pod,
                    container=pod.container,
                    gpu=str(gpu.index),
                    uuid=gpu.uuid,
                    model=gpu.model,
                    mig_profile=mig.profile if mig else "",
                    gpu_instance=str(mig.gpu_instance_id) if mig else "",
                    sharing=sharing,
                ),
                resource=holders[pod],
                allocated=held,
                utilization=busy,
                memory_used_bytes=memory[pod],
                energy_share=energy_share,
            )
        )
    return usages


def split_by_pod(gpus: tuple[GpuReading, ...], attribution: Attribution) -> list[PodDeviceUsage]:
    """Every pod's share of every device it holds, for one collection."""
    by_device = assignments_by_device(attribution)
    owners = attribution.processes
    usages: list[PodDeviceUsage] = []
    for gpu in gpus:
        if not gpu.up:
            continue
        if gpu.mig:
            for mig in gpu.mig:
                usages.extend(
                    _usages_for_device(
                        gpu,
                        by_device.get(mig.uuid, []),
                        owners,
                        fraction=mig.compute_fraction,
                        utilization=mig.utilization,
                        memory_used=mig.memory_used_bytes,
                        processes=mig.processes,
                        mig=mig,
                    )
                )
        else:
            usages.extend(
                _usages_for_device(
                    gpu,
                    by_device.get(gpu.uuid, []),
                    owners,
                    fraction=1.0,
                    utilization=gpu.utilization,
                    memory_used=gpu.memory_used_bytes,
                    processes=gpu.processes,
                    mig=None,
                )
            )
    return usages
