"""/proc/<pid>/cgroup -> pod UID and container ID, for every driver, runtime and version."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import pytest

from exporter.attribution import cgroup
from exporter.attribution.cgroup import (
    PERMISSION_DENIED,
    UNREADABLE,
    VANISHED,
    CgroupIdentity,
    parse_cgroup_file,
    pod_of_pid,
)
from tests.fakes.proc_tree import (
    DRIVERS,
    QOS_CLASSES,
    RUNTIMES,
    host_process,
    pod_process,
    write_cgroup,
)

UID = "0f6a2b8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b"
UID_ = UID.replace("-", "_")
STATIC_UID = "6b1d4a3c9e8f7a6b5c4d3e2f1a0b9c8d"  # static pods: a hash, no dashes
CID = "4f2a9c" + "0123456789abcdef" * 3 + "a1b2c3d4e5"
assert len(CID) == 64


@pytest.mark.parametrize(
    ("version", "driver", "runtime", "qos"),
    list(itertools.product((1, 2), DRIVERS, RUNTIMES, QOS_CLASSES)),
)
def test_every_layout_of_the_fixture_tree(
    tmp_path: Path, version: int, driver: str, runtime: str, qos: str
) -> None:
    pod_process(tmp_path, 4242, UID, CID, version=version, driver=driver, runtime=runtime, qos=qos)
    assert pod_of_pid(4242, str(tmp_path)) == CgroupIdentity(UID, CID)


# Files as the kernel writes them on real nodes (not built by the fixture helpers).
REAL_FILES = {
    "v2 systemd containerd burstable": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n",
        CgroupIdentity(UID, CID),
    ),
    "v2 systemd cri-o guaranteed": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-{CID}.scope\n",
        CgroupIdentity(UID, CID),
    ),
    "v2 crun nests a sub-cgroup under the scope": (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-{CID}.scope/container\n",
        CgroupIdentity(UID, CID),
    ),
    "v2 kind (kubelet.slice cgroup root)": (
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        CgroupIdentity(UID, CID),
    ),
    "v2 read from inside another cgroup namespace": (
        f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
        CgroupIdentity(UID, CID),
    ),
    "v1 systemd docker (dockershim)": (
        f"11:memory:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"docker-{CID}.scope\n"
        f"1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"docker-{CID}.scope\n",
        CgroupIdentity(UID, CID),
    ),
    "v1 cgroupfs containerd besteffort": (
        f"12:pids:/kubepods/besteffort/pod{UID}/{CID}\n11:memory:/kubepods/besteffort/pod{UID}/{CID}\n",
        CgroupIdentity(UID, CID),
    ),
    "v1 cgroupfs static pod": (
        f"4:memory:/kubepods/burstable/pod{STATIC_UID}/{CID}\n",
        CgroupIdentity(STATIC_UID, CID),
    ),
    "v1 hybrid: the v2 line is empty, the v1 lines name the pod": (
        f"4:memory:/kubepods/pod{UID}/crio-{CID}\n0::/\n",
        CgroupIdentity(UID, CID),
    ),
    "a process in the pod's own cgroup, not a container's": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice\n",
        CgroupIdentity(UID, ""),
    ),
    "CRI-O's conmon is not the container": (
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope\n",
        CgroupIdentity(UID, ""),
    ),
    "host service": ("0::/system.slice/nvidia-persistenced.service\n", None),
    "login session": ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    "root cgroup (v1 and v2)": ("4:memory:/\n0::/\n", None),
    "podman, not Kubernetes": (f"0::/machine.slice/libpod-{CID}.scope\n", None),
    "a pod-like folder outside the kubelet's tree": (f"0::/system.slice/pod{UID}/{CID}\n", None),
    "garbage": ("not a cgroup file\n\n", None),
    "empty (kernel thread)": ("", None),
}


@pytest.mark.parametrize(("text", "expected"), REAL_FILES.values(), ids=REAL_FILES.keys())
def test_real_cgroup_files(text: str, expected: CgroupIdentity | None) -> None:
    assert parse_cgroup_file(text) == expected


def test_host_process_is_not_in_a_pod(tmp_path: Path) -> None:
    host_process(tmp_path, 1)
    host_process(tmp_path, 2, version=1)
    reasons: Counter[str] = Counter()
    assert pod_of_pid(1, str(tmp_path), reasons) is None
    assert pod_of_pid(2, str(tmp_path), reasons) is None
    assert reasons == {}  # not in a pod is an answer, not an error


def test_vanished_pid_is_none_and_counted(tmp_path: Path) -> None:
    reasons: Counter[str] = Counter()
    assert pod_of_pid(999999, str(tmp_path), reasons) is None
    assert reasons == {VANISHED: 1}


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ProcessLookupError(3, "No such process"), VANISHED),
        (PermissionError(13, "Permission denied"), PERMISSION_DENIED),
        (OSError(5, "Input/output error"), UNREADABLE),
    ],
)
def test_read_errors_are_none_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, reason: str
) -> None:
    pod_process(tmp_path, 7, UID, CID)

    def failing_open(*args: object, **kwargs: object) -> None:
        raise error

    # Only the cgroup module's `open`: the process exits mid-read, or /proc denies us.
    monkeypatch.setattr(cgroup, "open", failing_open, raising=False)
    reasons: Counter[str] = Counter()
    assert pod_of_pid(7, str(tmp_path), reasons) is None
    assert reasons == {reason: 1}


def test_unreadable_entry_is_none_and_counted(tmp_path: Path) -> None:
    (tmp_path / "8" / "cgroup").mkdir(parents=True)  # a folder where a file should be
    reasons: Counter[str] = Counter()
    assert pod_of_pid(8, str(tmp_path), reasons) is None
    assert reasons == {UNREADABLE: 1}


def test_counter_is_optional(tmp_path: Path) -> None:
    assert pod_of_pid(12345, str(tmp_path)) is None
    write_cgroup(
        tmp_path, 9, f"0::/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
    )
    assert pod_of_pid(9, str(tmp_path)) == CgroupIdentity(UID, CID)


def test_bad_fixture_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="driver must be one of"):
        pod_process(tmp_path, 1, UID, CID, driver="openrc")
    with pytest.raises(ValueError, match="cgroup version must be 1 or 2"):
        pod_process(tmp_path, 1, UID, CID, version=3)
