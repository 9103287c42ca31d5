"""AttributionResolver end to end: fake kubelet (gRPC), fake API server, fixture /proc."""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter.attribution import DeviceAssignment, PodRef
from exporter.attribution import resolver as resolver_module
from exporter.attribution.cgroup import VANISHED
from exporter.attribution.podresources import PodResourcesClient
from exporter.attribution.podwatch import PodWatch
from exporter.attribution.resolver import (
    CONTAINER_UNKNOWN,
    POD_UNKNOWN,
    UNEXPECTED,
    AttributionResolver,
)
from tests.fakes.fake_kubelet import MALFORMED_SKIPS, FakeKubelet, pod_resources
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod
from tests.fakes.proc_tree import host_process, pod_process

NODE = "gpu-node-1"
GPU0 = "GPU-0b5d2c1e-7a3f-4c1b-9e8d-6f5a4b3c2d10"
GPU1 = "GPU-1c6e3d2f-8b4a-4d2c-8f9e-7a6b5c4d3e21"
MIG = "MIG-5f4e3d2c-1b0a-4998-8776-655443322110"
UID_TRAIN = "11111111-1111-4111-8111-111111111111"
UID_NB0 = "22222222-2222-4222-8222-222222222222"
UID_NB1 = "33333333-3333-4333-8333-333333333333"
UID_NEW = "44444444-4444-4444-8444-444444444444"


def cid(char: str) -> str:
    return char * 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


KUBELET_PODS = [
    pod_resources("trainer-0", "team-a", {"trainer": {"nvidia.com/gpu": [GPU0]}}),
    pod_resources("nb-0", "team-b", {"lab": {"nvidia.com/gpu.shared": [f"{GPU1}::0"]}}),
    pod_resources("nb-1", "team-b", {"lab": {"nvidia.com/gpu.shared": [f"{GPU1}::1"]}}),
    pod_resources("infer-0", "team-c", {"server": {"nvidia.com/mig-1g.10gb": [MIG]}}),
]


@dataclass
class Cluster:
    kubelet: FakeKubelet
    api: FakeKubeApiServer
    watch: PodWatch
    proc: Path
    clock: FakeClock

    def resolver(self, **kwargs: object) -> AttributionResolver:
        client = PodResourcesClient(socket_path=self.kubelet.socket_path, timeout_s=0.5)
        return AttributionResolver(client, self.watch, str(self.proc), self.clock, **kwargs)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    folder = Path(tempfile.mkdtemp(prefix="kl-", dir="/tmp"))  # short unix socket path
    proc = tmp_path / "proc"
    pod_process(proc, 100, UID_TRAIN, cid("a"))  # v2, systemd, containerd
    pod_process(proc, 101, UID_NB0, cid("b"), version=1, driver="cgroupfs", runtime="crio")
    pod_process(proc, 102, UID_NB1, cid("c"), qos="besteffort")
    host_process(proc, 103)  # nvidia-persistenced: not in a pod
    pod_process(proc, 104, UID_NEW, cid("d"))  # its pod is not known to the API yet
    pod_process(proc, 105, UID_TRAIN, cid("e"))  # a container the API has no status for
    with FakeKubelet(folder, delay_s=3.0) as kubelet, FakeKubeApiServer() as api:
        kubelet.set_pods(KUBELET_PODS)
        api.add(
            make_pod(
                "trainer-0", "team-a", node=NODE, uid=UID_TRAIN, containers={"trainer": cid("a")}
            )
        )
        api.add(
            make_pod(
                "nb-0",
                "team-b",
                node=NODE,
                uid=UID_NB0,
                containers={"lab": cid("b")},
                runtime="cri-o",
            )
        )
        api.add(make_pod("nb-1", "team-b", node=NODE, uid=UID_NB1, containers={"lab": cid("c")}))
        watch = PodWatch(
            api.api_client(), NODE, watch_timeout_s=1, backoff_initial_s=0.05, backoff_max_s=0.2
        )
        watch.start()
        assert watch.wait_synced(10)
        try:
            yield Cluster(kubelet, api, watch, proc, FakeClock())
        finally:
            watch.stop()
    shutil.rmtree(folder, ignore_errors=True)


def test_end_to_end(cluster: Cluster) -> None:
    resolver = cluster.resolver()

    result = resolver.resolve([100, 101, 102, 103, 104, 105, 106, 100])

    trainer = PodRef("team-a", "trainer-0", "trainer", UID_TRAIN)
    assert result.devices == {
        GPU0: (DeviceAssignment("nvidia.com/gpu", GPU0, trainer),),
        GPU1: (
            DeviceAssignment(
                "nvidia.com/gpu.shared", GPU1, PodRef("team-b", "nb-0", "lab", UID_NB0)
            ),
            DeviceAssignment(
                "nvidia.com/gpu.shared", GPU1, PodRef("team-b", "nb-1", "lab", UID_NB1)
            ),
        ),
        # the API server does not know infer-0: the kubelet's view stands, without a UID
        MIG: (
            DeviceAssignment("nvidia.com/mig-1g.10gb", MIG, PodRef("team-c", "infer-0", "server")),
        ),
    }
    assert result.processes == {
        100: trainer,
        101: PodRef("team-b", "nb-0", "lab", UID_NB0),
        102: PodRef("team-b", "nb-1", "lab", UID_NB1),
        105: PodRef("team-a", "trainer-0", "", UID_TRAIN),  # pod known, container not
    }
    assert result.stale == {"kubelet": False, "apiserver": False}
    assert result.age_seconds["kubelet"] == 0.0
    assert resolver.errors == {
        ("cgroup", VANISHED): 1,  # 106 has no /proc entry
        ("apiserver", POD_UNKNOWN): 1,  # 104
        ("apiserver", CONTAINER_UNKNOWN): 1,  # 105
    }


def test_pod_watch_catches_up_with_a_new_pod(cluster: Cluster) -> None:
    resolver = cluster.resolver()
    assert 104 not in resolver.resolve([104]).processes

    cluster.api.add(
        make_pod("late-0", "team-d", node=NODE, uid=UID_NEW, containers={"main": cid("d")})
    )
    wait_until(lambda: cluster.watch.pod(UID_NEW) is not None)

    assert resolver.resolve([104]).processes == {104: PodRef("team-d", "late-0", "main", UID_NEW)}


def test_slow_kubelet_keeps_the_last_mapping_stale(cluster: Cluster) -> None:
    resolver = cluster.resolver()
    good = resolver.resolve([100])

    cluster.kubelet.mode = "slow"
    cluster.kubelet.set_pods([])  # would empty the mapping, if it were answered
    cluster.clock.now += 30
    slow = resolver.resolve([100])

    assert slow.devices == good.devices
    assert slow.stale["kubelet"] is True
    assert slow.age_seconds["kubelet"] == 30.0
    assert slow.processes == good.processes  # cgroups and the pod watch are unaffected
    assert resolver.errors[("kubelet", "deadline")] == 1

    cluster.kubelet.mode = "normal"
    cluster.clock.now += 5
    back = resolver.resolve([100])
    assert back.devices == {} and back.stale["kubelet"] is False
    assert back.age_seconds["kubelet"] == 0.0


def test_kubelet_missing_from_the_start(cluster: Cluster) -> None:
    cluster.kubelet.stop()
    resolver = cluster.resolver()

    result = resolver.resolve([100])

    assert result.devices == {}
    assert result.stale["kubelet"] is True and math.isinf(result.age_seconds["kubelet"])
    assert result.processes[100].pod == "trainer-0"
    assert resolver.errors[("kubelet", "unavailable")] == 1

    cluster.kubelet.start()
    assert GPU0 in resolver.resolve([]).devices


def test_malformed_kubelet_answers_are_counted(cluster: Cluster) -> None:
    cluster.kubelet.mode = "malformed"
    resolver = cluster.resolver()

    result = resolver.resolve([])

    assert set(result.devices) == {GPU0, GPU1, MIG}
    assert result.stale["kubelet"] is False
    assert {r: n for (s, r), n in resolver.errors.items() if s == "kubelet"} == MALFORMED_SKIPS


def test_kubelet_interval(cluster: Cluster) -> None:
    resolver = cluster.resolver(kubelet_interval_s=10.0)
    resolver.resolve([])
    cluster.clock.now += 5
    resolver.resolve([])
    assert cluster.kubelet.calls == 1
    cluster.clock.now += 5
    resolver.resolve([])
    assert cluster.kubelet.calls == 2


def test_api_server_down_keeps_names_and_reports_stale(cluster: Cluster) -> None:
    resolver = cluster.resolver()
    cluster.api.stop()
    wait_until(lambda: cluster.watch.stale)

    result = resolver.resolve([100])

    assert result.processes[100] == PodRef("team-a", "trainer-0", "trainer", UID_TRAIN)
    assert result.stale["apiserver"] is True
    assert resolver.errors[("apiserver", "unreachable")] >= 1


class Exploding:
    """A source that fails in a way no one planned for."""

    last_skipped: dict[str, int] = {}
    stale = False
    errors: dict[str, int] = {}

    def list_assignments(self) -> list[DeviceAssignment]:
        raise RuntimeError("boom")

    def age_seconds(self) -> float:
        raise RuntimeError("boom")

    def pod(self, uid: str) -> None:
        raise RuntimeError("boom")

    def pod_by_name(self, namespace: str, name: str) -> None:
        raise RuntimeError("boom")


def test_never_raises(tmp_path: Path) -> None:
    pod_process(tmp_path, 100, UID_TRAIN, cid("a"))
    resolver = AttributionResolver(Exploding(), Exploding(), str(tmp_path), FakeClock())

    result = resolver.resolve([100])

    assert result.devices == {} and result.processes == {}
    assert result.stale == {"kubelet": True, "apiserver": True}
    # the lookup of pid 100's pod and the pod watch's age both failed
    assert resolver.errors == {("kubelet", UNEXPECTED): 1, ("apiserver", UNEXPECTED): 2}


def test_a_cgroup_reader_bug_is_counted_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise TypeError("bug")

    monkeypatch.setattr(resolver_module, "pod_of_pid", broken)
    resolver = AttributionResolver(None, Exploding(), str(tmp_path), FakeClock())
    assert resolver.resolve([1, 2]).processes == {}
    assert resolver.errors[("cgroup", UNEXPECTED)] == 2

    def broken_pids() -> Iterator[int]:
        yield 1
        raise OSError("listing processes failed")

    assert resolver.resolve(broken_pids()).processes == {}
    assert resolver.errors[("cgroup", UNEXPECTED)] == 3  # one more, for the failed listing


def test_without_sources(tmp_path: Path) -> None:
    pod_process(tmp_path, 100, UID_TRAIN, cid("a"))
    result = AttributionResolver(None, None, str(tmp_path)).resolve([100])
    assert result.devices == {} and result.processes == {}
    assert result.stale == {} and result.age_seconds == {}
