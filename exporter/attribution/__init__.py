"""Attribution: which pod holds which GPU, and which pod owns which process.

- `podresources`: the kubelet PodResources v1 gRPC API (device -> pod, container).
- `cgroup`: /proc/<pid>/cgroup -> pod UID and container ID.
- `podwatch`: this node's pods from the API server (UID -> namespace, name; container
  ID -> container name).
- `resolver`: joins the three into one `Attribution` per collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PodRef:
    namespace: str
    pod: str
    container: str
    uid: str = ""


@dataclass(frozen=True)
class DeviceAssignment:
    """The kubelet says: this container holds this device (GPU UUID or MIG UUID)."""

    resource: str  # e.g. nvidia.com/gpu, nvidia.com/mig-1g.10gb
    device_id: str
    pod: PodRef


@dataclass(frozen=True)
class Attribution:
    """One collection's view of who holds what."""

    # device ID (GPU or MIG UUID) -> containers holding it (several: time-sliced or MPS)
    devices: dict[str, tuple[DeviceAssignment, ...]] = field(default_factory=dict)
    # pid -> container owning it, for processes seen on GPUs (resolved through cgroups)
    processes: dict[int, PodRef] = field(default_factory=dict)
    # source -> True while its last answer failed and the last good mapping is used
    stale: dict[str, bool] = field(default_factory=dict)
    # source -> seconds since its last good answer
    age_seconds: dict[str, float] = field(default_factory=dict)
