"""The exporter DaemonSet's and the accounting Deployment's security and wiring."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.manifests import VARIANTS, container, env_value, find, of_kind, render, variant

LOCKED_DOWN = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def exporter(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "DaemonSet", "gpuledger-exporter")


def accounting(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "gpuledger-accounting")


def test_exporter_runs_as_root_with_nothing_else() -> None:
    """Root (the kubelet socket admits only root), explicitly; everything else dropped."""
    context = container(exporter(variant("plain")), "exporter")["securityContext"]
    assert context == {
        **LOCKED_DOWN,
        "runAsUser": 0,
        "runAsGroup": 0,
        "runAsNonRoot": False,
        "privileged": False,
    }


@pytest.mark.parametrize("name", VARIANTS)
def test_host_access_is_the_minimum(name: str) -> None:
    spec = exporter(variant(name))["spec"]["template"]["spec"]
    assert spec.get("hostPID", False) is ("shared-gpu" in name or name.endswith("+all"))
    assert "hostNetwork" not in spec and "hostIPC" not in spec
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    host_paths = {v["name"]: v["hostPath"] for v in spec["volumes"] if "hostPath" in v}
    assert host_paths == {
        "pod-resources": {"path": "/var/lib/kubelet/pod-resources", "type": "Directory"},
        "probe-socket": {"path": "/var/run/gpuledger", "type": "DirectoryOrCreate"},
        "host-proc": {"path": "/proc", "type": "Directory"},
    }
    mounts = {m["name"]: m for m in container(exporter(variant(name)), "exporter")["volumeMounts"]}
    assert mounts["pod-resources"]["readOnly"] is True
    assert mounts["host-proc"] == {"name": "host-proc", "mountPath": "/host/proc", "readOnly": True}
    # The probe socket is created here; it is the only host path written.
    assert not mounts["probe-socket"].get("readOnly", False)


@pytest.mark.parametrize("name", VARIANTS)
def test_no_other_workload_touches_the_host(name: str) -> None:
    for kind in ("Deployment", "DaemonSet"):
        for workload in of_kind(variant(name), kind):
            if workload["metadata"]["name"] == "gpuledger-exporter":
                continue
            spec = workload["spec"]["template"]["spec"]
            assert not any(spec.get(k) for k in ("hostPID", "hostNetwork", "hostIPC"))
            assert not any("hostPath" in v for v in spec.get("volumes", []))


def test_exporter_is_scheduled_on_gpu_nodes_and_knows_its_node() -> None:
    daemonset = exporter(variant("kube-prometheus-stack"))
    spec = daemonset["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    c = container(daemonset, "exporter")
    assert env_value(c, "NODE_NAME") == {
        "name": "NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
    }
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_node_selection_is_a_kustomize_patch_away() -> None:
    patch = """
patches:
  - target: {kind: DaemonSet, name: gpuledger-exporter}
    patch: |-
      - op: replace
        path: /spec/template/spec/nodeSelector
        value: {node-role.example.com/gpu: "yes"}
      - op: replace
        path: /spec/template/spec/tolerations
        value: [{key: dedicated, operator: Equal, value: gpu, effect: NoSchedule}]
"""
    spec = exporter(render("plain", patches=patch))["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"node-role.example.com/gpu": "yes"}
    assert spec["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
    ]


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.mark.parametrize("name", VARIANTS)
def test_every_container_has_requests_within_limits(name: str) -> None:
    for kind in ("Deployment", "DaemonSet"):
        for workload in of_kind(variant(name), kind):
            for c in workload["spec"]["template"]["spec"]["containers"]:
                resources = c["resources"]
                for resource in ("cpu", "memory"):
                    request = _quantity(resources["requests"][resource])
                    limit = _quantity(resources["limits"][resource])
                    assert 0 < request <= limit, f"{c['name']} {resource}"


def test_accounting_runs_as_non_root_with_one_writer() -> None:
    deployment = accounting(variant("plain"))
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (
        pod["runAsNonRoot"] is True
        and pod["runAsUser"] != 0
        and pod["fsGroup"] == pod["runAsGroup"]
    )
    assert container(deployment, "accounting")["securityContext"] == LOCKED_DOWN


def test_the_sqlite_ledger_lives_on_the_claim() -> None:
    objects = variant("plain")
    c = container(accounting(objects), "accounting")
    ledger = env_value(c, "GPULEDGER_LEDGER")["value"]
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "ledger"]
    assert ledger.startswith(mount["mountPath"] + "/")
    volumes = accounting(objects)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "ledger", "persistentVolumeClaim": {"claimName": "gpuledger-ledger"}} in volumes
    claim = find(objects, "PersistentVolumeClaim", "gpuledger-ledger")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_postgres_takes_the_ledger_url_from_a_secret_and_drops_the_claim() -> None:
    objects = variant("kube-prometheus-stack+postgres")
    deployment = accounting(objects)
    c = container(deployment, "accounting")
    assert env_value(c, "GPULEDGER_LEDGER") == {
        "name": "GPULEDGER_LEDGER",
        "valueFrom": {"secretKeyRef": {"name": "gpuledger-ledger", "key": "url"}},
    }
    assert not of_kind(objects, "PersistentVolumeClaim")
    assert "ledger" not in {v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "/var/lib/gpuledger" not in {m["mountPath"] for m in c["volumeMounts"]}
