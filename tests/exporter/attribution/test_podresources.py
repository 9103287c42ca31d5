"""PodResourcesClient over real gRPC on a unix socket, against the fake kubelet."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from exporter.attribution import DeviceAssignment, PodRef
from exporter.attribution.podresources import (
    KubeletDeadlineExceeded,
    KubeletError,
    KubeletUnavailable,
    PodResourcesClient,
    shared_device_base,
)
from tests.fakes.fake_kubelet import MALFORMED_SKIPS, FakeKubelet, pod_resources

GPU0 = "GPU-0b5d2c1e-7a3f-4c1b-9e8d-6f5a4b3c2d10"
GPU1 = "GPU-1c6e3d2f-8b4a-4d2c-8f9e-7a6b5c4d3e21"
MIG = "MIG-5f4e3d2c-1b0a-4998-8776-655443322110"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can exceed that.
    folder = Path(tempfile.mkdtemp(prefix="kl-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def kubelet(short_dir: Path) -> Iterator[FakeKubelet]:
    with FakeKubelet(short_dir, delay_s=3.0) as fake:
        yield fake


def ref(pod: str, container: str, namespace: str = "team-a") -> PodRef:
    return PodRef(namespace=namespace, pod=pod, container=container)


def test_whole_gpus_mig_and_shared_replicas(kubelet: FakeKubelet) -> None:
    kubelet.set_pods(
        [
            pod_resources("trainer-0", "team-a", {"trainer": {"nvidia.com/gpu": [GPU0]}}),
            pod_resources("infer-0", "team-a", {"server": {"nvidia.com/mig-1g.10gb": [MIG]}}),
            # time-sliced: two replicas of GPU1 to one container, one to another
            pod_resources(
                "notebook-0",
                "team-b",
                {"lab": {"nvidia.com/gpu.shared": [f"{GPU1}::0", f"{GPU1}::3"]}},
            ),
            pod_resources(
                "notebook-1", "team-b", {"lab": {"nvidia.com/gpu.shared": [f"{GPU1}::1"]}}
            ),
            # a sidecar without devices and a CPU-pinned container: no assignments
            pod_resources("trainer-1", "team-a", {"sidecar": {}, "main": {"cpu": ["3"]}}),
        ]
    )
    client = PodResourcesClient(socket_path=kubelet.socket_path)

    assignments = client.list_assignments()

    assert sorted(assignments, key=repr) == sorted(
        [
            DeviceAssignment("nvidia.com/gpu", GPU0, ref("trainer-0", "trainer")),
            DeviceAssignment("nvidia.com/mig-1g.10gb", MIG, ref("infer-0", "server")),
            DeviceAssignment("nvidia.com/gpu.shared", GPU1, ref("notebook-0", "lab", "team-b")),
            DeviceAssignment("nvidia.com/gpu.shared", GPU1, ref("notebook-1", "lab", "team-b")),
        ],
        key=repr,
    )
    assert client.last_skipped == {}
    assert kubelet.calls == 1


def test_extra_resource_names_are_configurable(kubelet: FakeKubelet) -> None:
    kubelet.set_pods(
        [pod_resources("p", "ns", {"c": {"example.com/gpu": [GPU0], "nvidia.com/gpu": [GPU1]}})]
    )
    default = PodResourcesClient(socket_path=kubelet.socket_path)
    extra = PodResourcesClient(
        socket_path=kubelet.socket_path,
        resource_names=("nvidia.com/gpu", "example.com/gpu"),
        resource_prefixes=(),
    )

    assert {a.device_id for a in default.list_assignments()} == {GPU1}
    assert {a.device_id for a in extra.list_assignments()} == {GPU0, GPU1}


def test_slow_kubelet_hits_the_deadline(kubelet: FakeKubelet) -> None:
    kubelet.set_pods([pod_resources("p", "ns", {"c": {"nvidia.com/gpu": [GPU0]}})])
    kubelet.mode = "slow"
    client = PodResourcesClient(socket_path=kubelet.socket_path, timeout_s=0.3)

    started = time.monotonic()
    with pytest.raises(KubeletDeadlineExceeded) as raised:
        client.list_assignments()

    # The deadline, not the kubelet's 3 s delay, ended the call.
    assert time.monotonic() - started < kubelet.delay_s
    assert raised.value.reason == "deadline"
    assert "0.3 s" in str(raised.value)


def test_malformed_entries_are_skipped_and_counted(kubelet: FakeKubelet) -> None:
    kubelet.set_pods([pod_resources("good-0", "team-a", {"main": {"nvidia.com/gpu": [GPU0]}})])
    kubelet.mode = "malformed"
    client = PodResourcesClient(socket_path=kubelet.socket_path)

    assignments = client.list_assignments()
    client.list_assignments()

    # The good pod survives; the bad entries and the non-GPU NIC do not.
    assert assignments == [DeviceAssignment("nvidia.com/gpu", GPU0, ref("good-0", "main"))]
    assert client.last_skipped == MALFORMED_SKIPS
    assert client.skipped_total == {k: 2 * v for k, v in MALFORMED_SKIPS.items()}


def test_missing_socket_says_what_to_check_then_recovers(short_dir: Path) -> None:
    kubelet = FakeKubelet(short_dir)
    kubelet.set_pods([pod_resources("p", "ns", {"c": {"nvidia.com/gpu": [GPU0]}})])
    client = PodResourcesClient(socket_path=kubelet.socket_path)

    with pytest.raises(KubeletUnavailable) as raised:
        client.list_assignments()
    message = str(raised.value)
    assert kubelet.socket_path in message
    assert "hostPath" in message and str(short_dir) in message
    assert raised.value.reason == "unavailable"

    with kubelet:
        assert [a.device_id for a in client.list_assignments()] == [GPU0]


def test_kubelet_going_away_is_unavailable(kubelet: FakeKubelet) -> None:
    client = PodResourcesClient(socket_path=kubelet.socket_path)
    assert client.list_assignments() == []

    kubelet.stop()
    with pytest.raises(KubeletUnavailable):
        client.list_assignments()

    kubelet.set_pods([pod_resources("p", "ns", {"c": {"nvidia.com/gpu": [GPU1]}})])
    kubelet.start()
    assert [a.device_id for a in client.list_assignments()] == [GPU1]


def test_a_path_that_is_not_a_socket_is_unavailable(short_dir: Path) -> None:
    path = short_dir / "kubelet.sock"
    path.write_text("not a socket")
    with pytest.raises(KubeletUnavailable, match="is not a unix socket"):
        PodResourcesClient(socket_path=str(path)).list_assignments()


def test_a_socket_nobody_listens_on_is_unavailable(short_dir: Path) -> None:
    path = str(short_dir / "kubelet.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)  # bound, never listening: what a crashed kubelet leaves behind
    try:
        with pytest.raises(KubeletUnavailable, match="unavailable"):
            PodResourcesClient(socket_path=path, timeout_s=1.0).list_assignments()
    finally:
        stale.close()


def test_a_server_without_podresources_is_reported(short_dir: Path) -> None:
    path = str(short_dir / "other.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    server.add_insecure_port(f"unix://{path}")
    server.start()
    try:
        with pytest.raises(KubeletError) as raised:
            PodResourcesClient(socket_path=path).list_assignments()
        assert raised.value.reason == "unimplemented"
        assert not isinstance(raised.value, KubeletUnavailable)
    finally:
        server.stop(None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_s": 0}, "timeout_s must be positive"),
        ({"resource_names": (), "resource_prefixes": ()}, "at least one resource name"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PodResourcesClient(**kwargs)


@pytest.mark.parametrize(
    ("device_id", "base"),
    [
        (f"{GPU0}::2", GPU0),
        (GPU0, GPU0),
        (MIG, MIG),
        ("GPU-x::replica", "GPU-x::replica"),  # not a replica number: left alone
        ("::3", "::3"),
    ],
)
def test_shared_replica_ids_map_to_their_gpu(device_id: str, base: str) -> None:
    assert shared_device_base(device_id) == base
