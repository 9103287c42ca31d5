"""The fake API server answers the real kubernetes client like a real API server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException

from tests.fakes.kube_apiserver import (
    FakeKubeApiServer,
    make_object,
    make_pod,
    owner_reference,
    parse_label_selector,
)


@pytest.fixture
def api() -> Iterator[FakeKubeApiServer]:
    with FakeKubeApiServer() as server:
        yield server


def raw(api: FakeKubeApiServer, path: str) -> tuple[int, list[dict]]:
    """GET a path; returns the status and the newline-delimited JSON documents."""
    try:
        with urllib.request.urlopen(api.url + path, timeout=10) as response:
            body, status = response.read().decode(), response.status
    except urllib.error.HTTPError as error:
        body, status = error.read().decode(), error.code
    return status, [json.loads(line) for line in body.splitlines() if line.strip()]


def test_selectors_through_the_typed_client(api: FakeKubeApiServer) -> None:
    api.add(make_pod("a", "ns1", node="n1", labels={"app": "train", "tier": "gpu"}))
    api.add(make_pod("b", "ns1", node="n2", labels={"app": "train"}))
    api.add(make_pod("c", "ns2", node="n1", labels={"app": "serve"}))
    core = kubernetes.client.CoreV1Api(api.api_client())

    def names(**kwargs: str) -> list[str]:
        return [p.metadata.name for p in core.list_pod_for_all_namespaces(**kwargs).items]

    assert names(field_selector="spec.nodeName=n1") == ["a", "c"]
    assert names(field_selector="spec.nodeName!=n1") == ["b"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(label_selector="app=train") == ["a", "b"]
    assert names(label_selector="app=train,tier") == ["a"]
    assert names(label_selector="app in (serve, batch)") == ["c"]
    assert names(label_selector="!tier,app!=serve") == ["b"]
    assert [p.metadata.name for p in core.list_namespaced_pod("ns2").items] == ["c"]
    assert core.read_namespaced_pod("a", "ns1").spec.node_name == "n1"


def test_objects_get_identity_and_resource_versions(api: FakeKubeApiServer) -> None:
    first = api.add(make_pod("a", "ns1"))
    second = api.add(make_pod("b", "ns1", uid="fixed-uid"))
    assert first["metadata"]["uid"] and second["metadata"]["uid"] == "fixed-uid"
    assert (
        int(second["metadata"]["resourceVersion"]) == int(first["metadata"]["resourceVersion"]) + 1
    )
    modified = api.modify(make_pod("a", "ns1", node="n9"))
    assert modified["metadata"]["uid"] == first["metadata"]["uid"]  # kept across updates
    listed = kubernetes.client.CoreV1Api(api.api_client()).list_pod_for_all_namespaces()
    assert listed.metadata.resource_version == modified["metadata"]["resourceVersion"]


def test_custom_resources_and_owner_chains(api: FakeKubeApiServer) -> None:
    jobset = api.add(
        make_object(
            "jobset.x-k8s.io/v1alpha2", "JobSet", "llm", "team-a", spec={"replicatedJobs": []}
        )
    )
    job = api.add(
        make_object("batch/v1", "Job", "llm-workers-0", "team-a", owner=owner_reference(jobset))
    )
    api.add(make_pod("llm-workers-0-0", "team-a", owner=owner_reference(job)))
    api.add(
        make_object(
            "kueue.x-k8s.io/v1beta1", "Workload", "jobset-llm", "team-a", labels={"q": "gpu"}
        )
    )
    api.add(make_object("ray.io/v1", "RayCluster", "rc", "team-b"))
    custom = kubernetes.client.CustomObjectsApi(api.api_client())

    pod = kubernetes.client.CoreV1Api(api.api_client()).read_namespaced_pod(
        "llm-workers-0-0", "team-a"
    )
    (owner,) = pod.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Job", "llm-workers-0", job["metadata"]["uid"])
    read_job = kubernetes.client.BatchV1Api(api.api_client()).read_namespaced_job(
        "llm-workers-0", "team-a"
    )
    assert read_job.metadata.owner_references[0].uid == jobset["metadata"]["uid"]
    fetched = custom.get_namespaced_custom_object(
        "jobset.x-k8s.io", "v1alpha2", "team-a", "jobsets", "llm"
    )
    assert fetched["metadata"]["uid"] == jobset["metadata"]["uid"]
    workloads = custom.list_cluster_custom_object(
        "kueue.x-k8s.io", "v1beta1", "workloads", label_selector="q=gpu"
    )
    assert [w["metadata"]["name"] for w in workloads["items"]] == ["jobset-llm"]
    assert (
        custom.list_namespaced_custom_object("ray.io", "v1", "team-a", "rayclusters")["items"] == []
    )


def test_cluster_scoped_resources_and_discovery(api: FakeKubeApiServer) -> None:
    api.add(make_object("v1", "Node", "gpu-1", labels={"nvidia.com/gpu.product": "H100"}))
    api.add(make_object("v1", "Namespace", "team-a", labels={"team": "a"}))
    core = kubernetes.client.CoreV1Api(api.api_client())
    assert [n.metadata.name for n in core.list_node().items] == ["gpu-1"]
    assert core.read_namespace("team-a").metadata.labels == {"team": "a"}
    dynamic = kubernetes.dynamic.DynamicClient(api.api_client())
    jobs = dynamic.resources.get(api_version="kubeflow.org/v1", kind="PyTorchJob")
    assert jobs.namespaced and jobs.get(namespace="x").items == []


def test_paging(api: FakeKubeApiServer) -> None:
    for i in range(5):
        api.add(make_pod(f"p{i}", "ns"))
    core = kubernetes.client.CoreV1Api(api.api_client())
    seen, token = [], None
    while True:
        page = core.list_namespaced_pod("ns", limit=2, _continue=token)
        seen += [p.metadata.name for p in page.items]
        token = page.metadata._continue
        if not token:
            break
    assert seen == [f"p{i}" for i in range(5)]


def test_errors_are_kubernetes_status_objects(api: FakeKubeApiServer) -> None:
    core = kubernetes.client.CoreV1Api(api.api_client())
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod("nope", "ns")
    assert missing.value.status == 404
    status, (body,) = raw(api, "/apis/example.com/v1/widgets")
    assert status == 404 and body["kind"] == "Status" and body["reason"] == "NotFound"
    status, (body,) = raw(api, "/api/v1/pods?labelSelector=a%20%3E%203")
    assert status == 400 and "invalid label selector" in body["message"]
    with pytest.raises(ApiException) as refused:
        core.delete_namespaced_pod("a", "ns")
    assert refused.value.status == 405
    api.fail_with(500)
    with pytest.raises(ApiException) as injected:
        core.list_node()
    assert injected.value.status == 500
    api.fail_with(None)
    assert core.list_node().items == []


def test_watch_events_selectors_and_expiry(api: FakeKubeApiServer) -> None:
    api.add(make_pod("a", "ns", node="n1"))
    start = api.resource_version
    api.add(make_pod("b", "ns", node="n1"))
    api.modify(make_pod("a", "ns", node="n2"))  # leaves the n1 selector
    api.delete("v1", "Pod", "b", namespace="ns")

    status, events = raw(
        api,
        f"/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dn1&resourceVersion={start}&timeoutSeconds=1",
    )
    assert status == 200
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "b"),
        ("DELETED", "a"),  # moved away from n1
        ("DELETED", "b"),
    ]

    api.compact()
    _, (expired,) = raw(api, f"/api/v1/pods?watch=true&resourceVersion={start}&timeoutSeconds=1")
    assert expired["type"] == "ERROR" and expired["object"]["code"] == 410
    _, current = raw(api, "/api/v1/pods?watch=true&timeoutSeconds=1")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in current] == [("ADDED", "a")]


def test_watch_through_the_client_sees_live_changes(api: FakeKubeApiServer) -> None:
    core = kubernetes.client.CoreV1Api(api.api_client())
    listed = core.list_namespaced_pod("ns")
    watch = kubernetes.watch.Watch()
    api.add(make_pod("live", "ns"))  # after the list: arrives as an event
    events = list(
        watch.stream(
            core.list_namespaced_pod,
            "ns",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=1,
        )
    )
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "live")]


def test_stopped_server_refuses_and_restarts_on_the_same_port(api: FakeKubeApiServer) -> None:
    url = api.url
    api.add(make_object("v1", "Namespace", "kept"))
    api.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/api/v1/namespaces", timeout=5)
    api.start()
    assert api.url == url
    _, (listing,) = raw(api, "/api/v1/namespaces")
    assert [n["metadata"]["name"] for n in listing["items"]] == ["kept"]


def test_bad_test_input_is_refused(api: FakeKubeApiServer) -> None:
    with pytest.raises(KeyError, match="register_resource"):
        api.add({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    with pytest.raises(ValueError, match="needs metadata.namespace"):
        api.add({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}})
    api.add(make_pod("p", "ns"))
    with pytest.raises(KeyError, match="already exists"):
        api.add(make_pod("p", "ns"))
    with pytest.raises(KeyError, match="does not exist"):
        api.modify(make_pod("q", "ns"))
    with pytest.raises(ValueError, match="no uid"):
        owner_reference(make_pod("r", "ns"))


@pytest.mark.parametrize(
    ("text", "terms"),
    [
        ("a=b", [("a", "=", ("b",))]),
        ("a==b,c!=d", [("a", "=", ("b",)), ("c", "!=", ("d",))]),
        ("k in (x, y),!z", [("k", "in", ("x", "y")), ("z", "!exists", ())]),
        ("app.kubernetes.io/name notin (a)", [("app.kubernetes.io/name", "notin", ("a",))]),
    ],
)
def test_label_selector_grammar(text: str, terms: list) -> None:
    assert parse_label_selector(text) == terms
