"""PodWatch through the real kubernetes client against the fake API server."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from exporter.attribution.podwatch import (
    UNREACHABLE,
    WATCH_EXPIRED,
    PodWatch,
    pod_info_from_json,
    strip_runtime_scheme,
)
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod

NODE = "gpu-node-1"
OTHER = "gpu-node-2"
UID_A = "11111111-1111-4111-8111-111111111111"
UID_B = "22222222-2222-4222-8222-222222222222"
UID_C = "33333333-3333-4333-8333-333333333333"
UID_D = "44444444-4444-4444-8444-444444444444"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cid(char: str) -> str:
    return char * 64


def wait_until(condition: Callable[[], object], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.02)


@pytest.fixture
def api() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        server.add(
            make_pod(
                "trainer-0",
                "team-a",
                node=NODE,
                uid=UID_A,
                containers={"trainer": cid("a"), "sidecar": cid("b")},
            )
        )
        server.add(
            make_pod("elsewhere", "team-a", node=OTHER, uid=UID_B, containers={"x": cid("c")})
        )
        yield server


@pytest.fixture
def watch(api: FakeKubeApiServer) -> Iterator[PodWatch]:
    pod_watch = PodWatch(
        api.api_client(), NODE, watch_timeout_s=1, backoff_initial_s=0.05, backoff_max_s=0.2
    ).start()
    assert pod_watch.wait_synced(10)
    yield pod_watch
    pod_watch.stop()


def test_lists_only_this_nodes_pods(watch: PodWatch, api: FakeKubeApiServer) -> None:
    assert [p.name for p in watch.pods()] == ["trainer-0"]
    pod = watch.pod(UID_A)
    assert pod is not None and (pod.namespace, pod.name) == ("team-a", "trainer-0")
    assert watch.container_name(cid("a")) == "trainer"
    assert watch.container_name(cid("b")) == "sidecar"
    assert watch.pod(UID_B) is None and watch.container_name(cid("c")) is None
    assert watch.pod_by_name("team-a", "trainer-0") == pod
    assert not watch.stale and watch.age_seconds() < 60
    # the real client sent the node's field selector
    lists = [q for m, path, q in api.requests if path == "/api/v1/pods" and "watch" not in q]
    assert lists[0]["fieldSelector"] == [f"spec.nodeName={NODE}"]


def test_added_modified_deleted(watch: PodWatch, api: FakeKubeApiServer) -> None:
    api.add(
        make_pod(
            "trainer-1", "team-b", node=NODE, uid=UID_C, containers={"w": cid("d")}, runtime="cri-o"
        )
    )
    wait_until(lambda: watch.container_name(cid("d")) == "w")
    assert watch.pod(UID_C).namespace == "team-b"

    # The container restarted: a new runtime ID replaces the old one.
    restarted = make_pod("trainer-1", "team-b", node=NODE, uid=UID_C, containers={"w": cid("e")})
    api.modify(restarted)
    wait_until(lambda: watch.container_name(cid("e")) == "w")
    assert watch.container_name(cid("d")) is None

    api.delete("v1", "Pod", "trainer-0", namespace="team-a")
    wait_until(lambda: watch.pod(UID_A) is None)
    assert watch.container_name(cid("a")) is None
    assert {p.name for p in watch.pods()} == {"trainer-1"}
    assert watch.list_count == 1  # all of it through the watch, no relist


def test_expired_resource_version_relists(watch: PodWatch, api: FakeKubeApiServer) -> None:
    # A change on another node moves the store past our resourceVersion without an
    # event for us; compaction then makes our resourceVersion too old (410 Gone).
    api.add(make_pod("other", "team-a", node=OTHER, uid=UID_D, containers={"x": cid("f")}))
    api.compact()

    wait_until(lambda: watch.list_count >= 2)
    assert watch.errors.get(WATCH_EXPIRED, 0) >= 1
    assert not watch.stale
    # and it watches on from the new list: a new pod still arrives
    api.add(make_pod("late", "team-a", node=NODE, uid=UID_C, containers={"w": cid("d")}))
    wait_until(lambda: watch.pod(UID_C) is not None)


def test_api_server_down_keeps_last_known_then_catches_up(
    watch: PodWatch, api: FakeKubeApiServer
) -> None:
    api.stop()
    wait_until(lambda: watch.stale)
    assert watch.pod(UID_A) is not None  # last known kept
    assert watch.container_name(cid("a")) == "trainer"
    wait_until(lambda: watch.errors.get(UNREACHABLE, 0) >= 1)

    # While it is down the cluster changes.
    api.delete("v1", "Pod", "trainer-0", namespace="team-a")
    api.add(make_pod("trainer-2", "team-a", node=NODE, uid=UID_D, containers={"t": cid("9")}))
    api.start()

    wait_until(lambda: not watch.stale and watch.pod(UID_D) is not None)
    assert watch.pod(UID_A) is None
    assert watch.container_name(cid("9")) == "t"


def test_down_and_compacted_relists(watch: PodWatch, api: FakeKubeApiServer) -> None:
    api.stop()
    wait_until(lambda: watch.stale)
    api.add(make_pod("trainer-2", "team-a", node=NODE, uid=UID_D, containers={"t": cid("9")}))
    api.compact()
    api.start()

    wait_until(lambda: not watch.stale and watch.pod(UID_D) is not None)
    assert watch.list_count >= 2 and watch.errors.get(WATCH_EXPIRED, 0) >= 1


def test_server_errors_are_counted_and_stale(watch: PodWatch, api: FakeKubeApiServer) -> None:
    api.fail_with(503)
    wait_until(lambda: watch.stale, timeout_s=15)
    assert watch.errors.get("http_503", 0) >= 1
    assert watch.pod(UID_A) is not None
    api.fail_with(None)
    wait_until(lambda: not watch.stale, timeout_s=15)


def test_age_is_infinite_and_stale_before_the_first_list(api: FakeKubeApiServer) -> None:
    api.stop()
    pod_watch = PodWatch(api.api_client(), NODE, backoff_initial_s=0.05, backoff_max_s=0.1)
    pod_watch.start()
    try:
        assert not pod_watch.wait_synced(0.3)
        assert pod_watch.stale and pod_watch.age_seconds() == float("inf")
        assert pod_watch.pods() == []
        api.start()
        assert pod_watch.wait_synced(10)
        assert [p.name for p in pod_watch.pods()] == ["trainer-0"]
    finally:
        pod_watch.stop()


def test_stop_ends_the_thread_promptly(api: FakeKubeApiServer) -> None:
    # A long server-side watch timeout: stop() must cut the open watch itself.
    pod_watch = PodWatch(api.api_client(), NODE, watch_timeout_s=300).start()
    assert pod_watch.wait_synced(10) and pod_watch.running
    time.sleep(0.2)  # let it enter the watch
    pod_watch.stop(timeout_s=5)
    assert not pod_watch.running


def test_empty_node_name_is_refused(api: FakeKubeApiServer) -> None:
    with pytest.raises(ValueError, match="NODE_NAME"):
        PodWatch(api.api_client(), "")


@pytest.mark.parametrize(
    ("raw", "stripped"),
    [
        ("containerd://" + cid("a"), cid("a")),
        ("cri-o://" + cid("b"), cid("b")),
        ("docker://" + cid("c"), cid("c")),
        (cid("d"), cid("d")),
    ],
)
def test_runtime_scheme_is_stripped(raw: str, stripped: str) -> None:
    assert strip_runtime_scheme(raw) == stripped


def test_pod_json_without_identity_is_ignored() -> None:
    assert pod_info_from_json({"metadata": {"name": "x", "namespace": "y"}}) is None
    waiting = make_pod("p", "ns", uid=UID_A, containers={"init": ""})  # not started yet
    info = pod_info_from_json(waiting)
    assert info is not None and info.containers == {}


def test_age_is_zero_while_watching_and_grows_while_down(api: FakeKubeApiServer) -> None:
    clock = FakeClock()
    pod_watch = PodWatch(
        api.api_client(), NODE, clock=clock, backoff_initial_s=0.05, backoff_max_s=0.1
    ).start()
    try:
        assert pod_watch.wait_synced(10)
        clock.now += 600  # a quiet node: no events for ten minutes
        wait_until(lambda: pod_watch.age_seconds() == 0.0)  # connected: still current

        api.stop()
        wait_until(lambda: pod_watch.stale)
        clock.now += 42
        assert pod_watch.age_seconds() == 42.0
    finally:
        pod_watch.stop()
