"""Every overlay and component renders, validates offline, and hangs together."""

from __future__ import annotations

from typing import Any

import pytest

import gpuledger
from tests.deploy import schemas
from tests.deploy.manifests import (
    OVERLAYS,
    VARIANTS,
    container,
    find,
    of_kind,
    render,
    variant,
)

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
WORKLOAD_KINDS = ("DaemonSet", "Deployment")


def test_the_overlays_the_docs_name_exist() -> None:
    assert set(OVERLAYS) == {"plain", "kube-prometheus-stack"}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_renders_and_every_object_is_valid(name: str) -> None:
    objects = variant(name)
    assert len(objects) >= 12
    for obj in objects:
        schemas.validate(obj)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"duplicate objects in {name}"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == "gpuledger", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "gpuledger"


def test_strict_validation_rejects_a_misspelt_field() -> None:
    daemonset = find(variant("plain"), "DaemonSet", "gpuledger-exporter")
    container(daemonset, "exporter")["securityContxt"] = {"runAsUser": 0}
    with pytest.raises(schemas.InvalidObject, match="securityContxt"):
        schemas.validate(daemonset)


@pytest.mark.parametrize(
    ("kind", "change", "message"),
    [
        ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(interval="15 s"), "interval"),
        (
            "ServiceMonitor",
            lambda o: o["spec"]["endpoints"][0].update(honourLabels=True),
            "honourLabels",
        ),
        (
            "PrometheusRule",
            lambda o: o["spec"]["groups"][0]["rules"][0].update(record="x", alert="Y"),
            "valid",
        ),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update(expr=""), "expr"),
    ],
)
def test_custom_resource_schemas_reject_bad_objects(kind: str, change: Any, message: str) -> None:
    obj = of_kind(variant("kube-prometheus-stack"), kind)[0]
    schemas.validate(obj)
    change(obj)
    with pytest.raises(schemas.InvalidObject, match=message):
        schemas.validate(obj)


def _pod_specs(objects: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, w["spec"]["template"]) for kind in WORKLOAD_KINDS for w in of_kind(objects, kind)]


@pytest.mark.parametrize("name", VARIANTS)
def test_references_between_objects_resolve(name: str) -> None:
    objects = variant(name)
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for workload, template in _pod_specs(objects):
        where = workload["metadata"]["name"]
        spec = template["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in names, where
        assert (
            workload["spec"]["selector"]["matchLabels"].items()
            <= template["metadata"]["labels"].items()
        )
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            ports = {p["name"] for p in c.get("ports", [])}
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, (
                    f"{where}: mount of undefined volume {mount['name']}"
                )
            for probe in ("livenessProbe", "readinessProbe"):
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert action["port"] in ports, f"{where}: {probe} on unknown port"
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ("ConfigMap", ref["name"]) in names, f"{where}: {ref['name']}"
                secret = env.get("valueFrom", {}).get("secretKeyRef")
                if secret:  # created by the operator (docs/install.md), never committed
                    assert "postgres" in name or name.endswith("+all")
                    assert (secret["name"], secret["key"]) == ("gpuledger-ledger", "url")
        for volume in volumes.values():
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, where
            if "secret" in volume:  # created by the operator (docs/install.md)
                assert volume["secret"]["secretName"] == "gpuledger-accounting-api", where
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, where
    for service in of_kind(objects, "Service"):
        backing = [
            (w, t)
            for w, t in _pod_specs(objects)
            if service["spec"]["selector"].items() <= t["metadata"]["labels"].items()
        ]
        assert len(backing) == 1, (
            f"Service {service['metadata']['name']} selects {len(backing)} workloads"
        )
        container_ports = {
            p["name"] for c in backing[0][1]["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
    for binding in of_kind(objects, "ClusterRoleBinding"):
        assert ("ClusterRole", binding["roleRef"]["name"]) in names
        for subject in binding["subjects"]:
            assert subject["namespace"] == "gpuledger"
            assert ("ServiceAccount", subject["name"]) in names
    for monitor in of_kind(objects, "ServiceMonitor"):
        selected = [
            s
            for s in of_kind(objects, "Service")
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, monitor["metadata"]["name"]
        port_names = {p["name"] for p in selected[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["gpuledger"]


def test_plain_has_scrape_annotations_and_no_operator_objects() -> None:
    objects = variant("plain")
    assert not of_kind(objects, "ServiceMonitor")
    assert not of_kind(objects, "PrometheusRule")
    for workload, template in _pod_specs(objects):
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = [p["containerPort"] for c in template["spec"]["containers"] for p in c["ports"]]
        assert int(annotations["prometheus.io/port"]) in ports, workload["metadata"]["name"]


def test_kube_prometheus_stack_has_monitors_and_rules_for_its_release() -> None:
    objects = variant("kube-prometheus-stack")
    monitors = {o["metadata"]["name"] for o in of_kind(objects, "ServiceMonitor")}
    assert monitors == {"gpuledger-exporter", "gpuledger-accounting"}
    rules = of_kind(objects, "PrometheusRule")
    assert {r["metadata"]["name"] for r in rules} == {"gpuledger-alerts", "gpuledger-recording"}
    for obj in [*of_kind(objects, "ServiceMonitor"), *rules]:
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for _, template in _pod_specs(objects):
        assert "prometheus.io/scrape" not in template["metadata"].get("annotations", {})


def test_accounting_points_at_each_overlays_prometheus() -> None:
    def url(objects: list[dict[str, Any]]) -> str:
        [config] = [
            c
            for c in of_kind(objects, "ConfigMap")
            if c["metadata"]["name"].startswith("gpuledger-accounting-")
        ]
        return config["data"]["prometheus-url"]

    assert url(variant("kube-prometheus-stack")) == (
        "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    )
    assert url(variant("plain")) == "http://prometheus-server.monitoring.svc:80"


def test_images_are_tagged_with_the_package_version() -> None:
    for name in VARIANTS:
        for _, template in _pod_specs(variant(name)):
            for c in template["spec"]["containers"]:
                repository, _, tag = c["image"].rpartition(":")
                assert repository.startswith("ghcr.io/gpuledger/")
                assert tag == gpuledger.__version__


def test_a_broken_overlay_fails_with_kustomizes_message() -> None:
    from tests.deploy.manifests import RenderError

    with pytest.raises(RenderError, match="no-such-component"):
        render("plain", ["no-such-component"])
