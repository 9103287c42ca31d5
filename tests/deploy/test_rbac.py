"""RBAC at least privilege: read-only, only the kinds each part reads, exactly."""

from __future__ import annotations

from typing import Any

import pytest

from accounting import kube
from tests.deploy.manifests import VARIANTS, find, of_kind, variant

READ = ["get", "list", "watch"]

EXPORTER_GRANTS = {("", "pods")}
ACCOUNTING_GRANTS = {
    ("", "pods"),
    ("", "namespaces"),
    ("", "nodes"),
    ("batch", "jobs"),
    ("jobset.x-k8s.io", "jobsets"),
    *{
        ("kubeflow.org", kind)
        for kind in ("pytorchjobs", "tfjobs", "mpijobs", "xgboostjobs", "paddlejobs", "jaxjobs")
    },
    ("ray.io", "rayjobs"),
    ("ray.io", "rayclusters"),
    ("kueue.x-k8s.io", "workloads"),
    ("argoproj.io", "workflows"),
}


def grants(role: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(apiGroup, resource) -> verbs, failing on anything but plain resource rules."""
    found: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, (
            f"{role['metadata']['name']}: only apiGroups, resources and verbs "
            f"(no resourceNames, no nonResourceURLs): {rule}"
        )
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in found, f"{group}/{resource} granted twice"
                found[(group, resource)] = rule["verbs"]
    return found


def test_the_exporter_may_only_read_pods() -> None:
    role = find(variant("plain"), "ClusterRole", "gpuledger-exporter")
    assert grants(role) == {g: READ for g in EXPORTER_GRANTS}


def test_accounting_may_only_read_its_kinds() -> None:
    role = find(variant("plain"), "ClusterRole", "gpuledger-accounting")
    assert grants(role) == {g: READ for g in ACCOUNTING_GRANTS}


@pytest.mark.parametrize("name", VARIANTS)
def test_no_variant_grants_more_than_reading(name: str) -> None:
    objects = variant(name)
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")
    for role in of_kind(objects, "ClusterRole"):
        for (group, resource), verbs in grants(role).items():
            assert verbs == READ, f"{role['metadata']['name']}: {group}/{resource} {verbs}"
            assert "*" not in (group, resource)
            assert resource != "secrets" and "/" not in resource  # no subresources (exec, log)
    roles = {r["metadata"]["name"] for r in of_kind(objects, "ClusterRole")}
    for binding in of_kind(objects, "ClusterRoleBinding"):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": binding["roleRef"]["name"],
        }
        assert binding["roleRef"]["name"] in roles, "bound to a role we do not ship"


def test_each_service_account_is_bound_to_its_own_roles_only() -> None:
    objects = variant("kube-prometheus-stack+all")
    bound: dict[str, set[str]] = {}
    for binding in of_kind(objects, "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            assert subject["kind"] == "ServiceAccount"
            bound.setdefault(subject["name"], set()).add(binding["roleRef"]["name"])
    assert bound == {
        "gpuledger-exporter": {"gpuledger-exporter"},
        "gpuledger-accounting": {"gpuledger-accounting", "gpuledger-accounting-all-owners"},
    }


def _kinds_accounting_reads() -> set[tuple[str, str]]:
    """Every (group, resource) the owner resolver may ask the API for."""
    reads = {("", "pods"), (kube.KUEUE_GROUP, "workloads"), (kube.KUEUE_GROUP, "clusterqueues")}
    for kind, api_version in kube.DEFAULT_API_VERSIONS.items():
        group, _, _ = api_version.rpartition("/")
        if group:  # core kinds other than pods never own pods; the resolver skips them
            reads.add((group, kube.plural(kind)))
    return reads


def test_the_grants_cover_every_kind_accounting_reads() -> None:
    """A kind added to the resolver without a grant would silently end owner chains."""
    objects = variant("plain+accounting-all-owners")
    granted = set(grants(find(objects, "ClusterRole", "gpuledger-accounting")))
    extra = grants(find(objects, "ClusterRole", "gpuledger-accounting-all-owners"))
    assert not granted & set(extra), "the component repeats a base grant"
    missing = _kinds_accounting_reads() - granted - set(extra)
    assert not missing, f"accounting reads {sorted(missing)} but no role grants it"
    unused = set(extra) - _kinds_accounting_reads()
    assert not unused, (
        f"accounting-all-owners grants {sorted(unused)}, which accounting never reads"
    )


def test_the_coverage_check_notices_a_missing_grant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(kube.DEFAULT_API_VERSIONS, "NotebookJob", "example.org/v1")
    with pytest.raises(AssertionError, match="notebookjobs"):
        test_the_grants_cover_every_kind_accounting_reads()
