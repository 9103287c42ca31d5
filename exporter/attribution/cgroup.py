"""/proc/<pid>/cgroup -> the pod UID and container ID that own a process.

The kubelet puts every container in a cgroup under `kubepods`, whatever the driver:

- systemd driver (cgroup v1 or v2):
  /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/
  cri-containerd-<id>.scope (CRI-O: crio-<id>.scope, dockershim: docker-<id>.scope)
- cgroupfs driver: /kubepods/burstable/pod<uid>/<id> (CRI-O: .../crio-<id>)

Guaranteed pods have no QoS level (kubepods-pod<uid>.slice, /kubepods/pod<uid>).
We match path segments rather than whole paths, so cgroup namespaces (paths that
start with /.. when read from inside a container), kind's kubelet.slice prefix and
runtimes that nest a sub-cgroup under the container's scope all parse the same.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass

# Reasons `pod_of_pid` returns None for a process it could not read.
VANISHED = "pid_vanished"
PERMISSION_DENIED = "permission_denied"
UNREADABLE = "unreadable"

# A pod UID: a dashed UUID (systemd writes the dashes as _) or, for static pods,
# 32 hex digits (the hash of the manifest).
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}"
# A custom --cgroup-root (kind: kubelet.slice) prefixes the unit names: kubelet-kubepods-...
_SYSTEMD_POD = re.compile(rf"^(?:[a-z0-9_.]+-)*kubepods(?:-[a-z]+)*-pod(?P<uid>{_UID})\.slice$")
_CGROUPFS_POD = re.compile(rf"^pod(?P<uid>{_UID})$")
_CGROUPFS_PARENTS = frozenset({"kubepods", "burstable", "besteffort", ".."})
_CONTAINER = re.compile(
    r"^(?:(?:cri-containerd|crio|docker|cri-o|containerd)-)?(?P<id>[0-9a-f]{64})(?:\.scope)?$"
)


@dataclass(frozen=True)
class CgroupIdentity:
    """The pod and container a process runs in. container_id is "" when the process
    sits in the pod's own cgroup rather than one of its containers'."""

    pod_uid: str
    container_id: str


def parse_cgroup_file(text: str) -> CgroupIdentity | None:
    """The pod identity in the text of a /proc/<pid>/cgroup file; None outside pods."""
    best: CgroupIdentity | None = None
    for line in text.splitlines():
        # hierarchy-ID:controllers:path; the path itself may contain ':'.
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        identity = parse_cgroup_path(parts[2])
        if identity is None:
            continue
        if identity.container_id:
            return identity
        best = best or identity
    return best


def parse_cgroup_path(path: str) -> CgroupIdentity | None:
    """The pod identity in one cgroup path; None when the path is not in a pod."""
    segments = [s for s in path.strip().split("/") if s]
    for index, segment in enumerate(segments):
        match = _SYSTEMD_POD.match(segment)
        if match is None:
            match = _CGROUPFS_POD.match(segment)
            # A bare "pod<uid>" folder counts only under the kubelet's tree (or above
            # our cgroup namespace's root, shown as ".."), not anywhere on the host.
            if match is None or not any(s in _CGROUPFS_PARENTS for s in segments[:index]):
                continue
        uid = match.group("uid").replace("_", "-")
        container_id = ""
        if index + 1 < len(segments):
            container = _CONTAINER.match(segments[index + 1])
            if container is not None:
                container_id = container.group("id")
        return CgroupIdentity(pod_uid=uid, container_id=container_id)
    return None


def pod_of_pid(
    pid: int, proc_root: str = "/proc", reasons: Counter[str] | None = None
) -> CgroupIdentity | None:
    """The pod and container of a process, from <proc_root>/<pid>/cgroup.

    None when the process is not in a pod or cannot be read; in the second case the
    reason (VANISHED, PERMISSION_DENIED, UNREADABLE) is added to `reasons`.
    """
    path = os.path.join(proc_root, str(pid), "cgroup")
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        # The process exited between NVML listing it and us reading /proc.
        _count(reasons, VANISHED)
        return None
    except PermissionError:
        _count(reasons, PERMISSION_DENIED)
        return None
    except OSError:
        _count(reasons, UNREADABLE)
        return None
    return parse_cgroup_file(text)


def _count(reasons: Counter[str] | None, reason: str) -> None:
    if reasons is not None:
        reasons[reason] += 1
