"""Build fixture /proc trees: /proc/<pid>/cgroup files as the kernel writes them.

    from tests.fakes.proc_tree import pod_process, host_process

    pod_process(proc_root, 4242, POD_UID, CONTAINER_ID)            # v2, systemd, containerd
    pod_process(proc_root, 4243, POD_UID, CONTAINER_ID, version=1, driver="cgroupfs",
                runtime="crio", qos="guaranteed")
    host_process(proc_root, 1)                                      # not in a pod

Variants: cgroup version 1 (one line per controller) or 2 (one `0::` line); systemd
or cgroupfs driver; containerd, crio or docker runtime; guaranteed, burstable or
besteffort QoS. `cgroup_path` gives the path alone for table tests.
"""

from __future__ import annotations

import os
from pathlib import Path

DRIVERS = ("systemd", "cgroupfs")
RUNTIMES = ("containerd", "crio", "docker")
QOS_CLASSES = ("guaranteed", "burstable", "besteffort")

# The controllers of a typical cgroup v1 host, in /proc/<pid>/cgroup's order.
V1_CONTROLLERS = (
    "12:hugetlb",
    "11:memory",
    "10:devices",
    "9:pids",
    "8:cpu,cpuacct",
    "7:blkio",
    "6:freezer",
    "5:net_cls,net_prio",
    "4:cpuset",
    "3:perf_event",
    "2:rdma",
    "1:name=systemd",
)

_SYSTEMD_SCOPE = {"containerd": "cri-containerd", "crio": "crio", "docker": "docker"}


def cgroup_path(
    pod_uid: str,
    container_id: str,
    *,
    driver: str = "systemd",
    runtime: str = "containerd",
    qos: str = "burstable",
) -> str:
    """The cgroup path of a container as the kubelet and the runtime name it."""
    if driver not in DRIVERS or runtime not in RUNTIMES or qos not in QOS_CLASSES:
        raise ValueError(
            f"driver must be one of {DRIVERS}, runtime one of {RUNTIMES}, qos one of "
            f"{QOS_CLASSES}; got {driver!r}, {runtime!r}, {qos!r}"
        )
    if driver == "systemd":
        uid = pod_uid.replace("-", "_")
        if qos == "guaranteed":
            pod = f"/kubepods.slice/kubepods-pod{uid}.slice"
        else:
            pod = f"/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice"
        return f"{pod}/{_SYSTEMD_SCOPE[runtime]}-{container_id}.scope" if container_id else pod
    pod = f"/kubepods/pod{pod_uid}" if qos == "guaranteed" else f"/kubepods/{qos}/pod{pod_uid}"
    if not container_id:
        return pod
    return f"{pod}/crio-{container_id}" if runtime == "crio" else f"{pod}/{container_id}"


def cgroup_file(path: str, *, version: int = 2) -> str:
    """The text of /proc/<pid>/cgroup for a process in `path`."""
    if version == 2:
        return f"0::{path}\n"
    if version == 1:
        return "".join(f"{controller}:{path}\n" for controller in V1_CONTROLLERS)
    raise ValueError(f"cgroup version must be 1 or 2, got {version}")


def write_cgroup(proc_root: str | os.PathLike[str], pid: int, text: str) -> Path:
    """Write <proc_root>/<pid>/cgroup with `text`; returns its path."""
    folder = Path(proc_root) / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cgroup"
    path.write_text(text)
    return path


def pod_process(
    proc_root: str | os.PathLike[str],
    pid: int,
    pod_uid: str,
    container_id: str,
    *,
    version: int = 2,
    driver: str = "systemd",
    runtime: str = "containerd",
    qos: str = "burstable",
) -> Path:
    """A process in a pod's container."""
    path = cgroup_path(pod_uid, container_id, driver=driver, runtime=runtime, qos=qos)
    return write_cgroup(proc_root, pid, cgroup_file(path, version=version))


def host_process(
    proc_root: str | os.PathLike[str], pid: int, *, version: int = 2, path: str = ""
) -> Path:
    """A process outside Kubernetes (a system service by default)."""
    path = path or "/system.slice/nvidia-persistenced.service"
    return write_cgroup(proc_root, pid, cgroup_file(path, version=version))
