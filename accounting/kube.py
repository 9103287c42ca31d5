"""Owner chains from the Kubernetes API: which job, queue and cohort a pod ran for.

kube-state-metrics says only who owns a pod directly (and a Job's or ReplicaSet's
owner). The API sees the whole chain: Pod -> Job -> JobSet, Pod -> PyTorchJob (and
the other Kubeflow training jobs), Pod -> RayCluster -> RayJob, Pod -> Workflow,
Pod -> ReplicaSet -> Deployment. The Kueue Workload owned by any object of the chain
gives the LocalQueue (spec.queueName), the ClusterQueue it was admitted to
(status.admission.clusterQueue) and that ClusterQueue's cohort.

Lookups go through the real `kubernetes` client (CoreV1Api for pods, CustomObjectsApi
for everything else) and are cached for the run: a JobSet of 512 pods is read once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client is imported only when the API is used
    import kubernetes

log = logging.getLogger(__name__)

# apiVersion of owner kinds that kube-state-metrics names without one.
DEFAULT_API_VERSIONS: dict[str, str] = {
    "ReplicaSet": "apps/v1",
    "Deployment": "apps/v1",
    "StatefulSet": "apps/v1",
    "DaemonSet": "apps/v1",
    "Job": "batch/v1",
    "CronJob": "batch/v1",
    "JobSet": "jobset.x-k8s.io/v1alpha2",
    "PyTorchJob": "kubeflow.org/v1",
    "TFJob": "kubeflow.org/v1",
    "MPIJob": "kubeflow.org/v1",
    "XGBoostJob": "kubeflow.org/v1",
    "PaddleJob": "kubeflow.org/v1",
    "JAXJob": "kubeflow.org/v1",
    "RayJob": "ray.io/v1",
    "RayCluster": "ray.io/v1",
    "RayService": "ray.io/v1",
    "Workflow": "argoproj.io/v1alpha1",
    "CronWorkflow": "argoproj.io/v1alpha1",
    "LeaderWorkerSet": "leaderworkerset.x-k8s.io/v1",
}

_IRREGULAR_PLURALS = {"Endpoints": "endpoints"}
KUEUE_GROUP, KUEUE_VERSION = "kueue.x-k8s.io", "v1beta1"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MAX_CHAIN = 12


class KubeUnavailable(RuntimeError):
    """The API server cannot be reached or refuses every request."""


@dataclass(frozen=True)
class ObjectRef:
    kind: str
    name: str
    api_version: str = ""
    uid: str = ""

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass
class Resolution:
    """What the API said about one pod."""

    chain: list[ObjectRef] = field(default_factory=list)  # direct owner first
    pod_labels: dict[str, str] | None = None  # None: the pod is gone
    uid: str = ""
    node: str = ""
    job_labels: dict[str, str] = field(default_factory=dict)
    queue: str = ""
    cluster_queue: str = ""
    cohort: str = ""
    owners_read: int = 0  # objects of the chain the API returned (not just named)

    @property
    def job(self) -> ObjectRef | None:
        return self.chain[-1] if self.chain else None


def plural(kind: str) -> str:
    """Resource name of a kind, as the API spells it in URLs."""
    if kind in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[kind]
    lower = kind.lower()
    if lower.endswith("s"):
        return lower + "es"
    if lower.endswith("y") and lower[-2:-1] not in ("a", "e", "i", "o", "u"):
        return lower[:-1] + "ies"
    return lower + "s"


def _split(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _controller(meta: Mapping[str, Any]) -> ObjectRef | None:
    refs = meta.get("ownerReferences") or []
    chosen = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if not chosen:
        return None
    return ObjectRef(
        kind=chosen.get("kind", ""),
        name=chosen.get("name", ""),
        api_version=chosen.get("apiVersion", ""),
        uid=chosen.get("uid", ""),
    )


class OwnerResolver:
    """Resolves pods' owner chains, Kueue queues and cohorts through the API."""

    def __init__(self, api_client: kubernetes.client.ApiClient) -> None:
        import kubernetes

        self.api_client = api_client
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.custom = kubernetes.client.CustomObjectsApi(api_client)
        self._objects: dict[tuple[str, str, str, str], dict[str, Any] | None] = {}
        self._workloads: dict[str, list[dict[str, Any]]] = {}
        self._cohorts: dict[str, str] = {}
        self._forbidden: set[str] = set()
        self.lookups = 0

    def resolve(self, namespace: str, pod: str, known_owner: ObjectRef | None = None) -> Resolution:
        """Walk the chain from the pod (or, when it is gone, from its known owner)."""
        resolution = Resolution()
        pod_obj = self._get("v1", "Pod", namespace, pod)
        objects: list[dict[str, Any]] = []
        if pod_obj is not None:
            meta = pod_obj.get("metadata", {})
            resolution.pod_labels = dict(meta.get("labels") or {})
            resolution.uid = meta.get("uid", "")
            resolution.node = (pod_obj.get("spec") or {}).get("nodeName", "") or ""
            objects.append(pod_obj)
            ref = _controller(meta)
        else:
            ref = known_owner
        while ref is not None and len(resolution.chain) < MAX_CHAIN:
            if any(r.kind == ref.kind and r.name == ref.name for r in resolution.chain):
                break  # a cycle: malformed ownerReferences
            api_version = ref.api_version or DEFAULT_API_VERSIONS.get(ref.kind, "")
            obj = self._get(api_version, ref.kind, namespace, ref.name) if api_version else None
            if obj is None:
                resolution.chain.append(ref)  # gone or unreadable: the chain ends here
                break
            meta = obj.get("metadata", {})
            resolution.chain.append(
                ObjectRef(ref.kind, ref.name, api_version, meta.get("uid", ref.uid))
            )
            objects.append(obj)
            resolution.owners_read += 1
            ref = _controller(meta)
        if objects and len(objects) > (1 if pod_obj is not None else 0):
            top = objects[-1]
            resolution.job_labels = dict(top.get("metadata", {}).get("labels") or {})
        self._kueue(namespace, objects, resolution)
        return resolution

    # ---------------------------------------------------------------- Kueue
    def _kueue(self, namespace: str, objects: list[dict[str, Any]], resolution: Resolution) -> None:
        uids = {o.get("metadata", {}).get("uid") for o in objects} | {
            r.uid for r in resolution.chain
        }
        uids.discard("")
        uids.discard(None)
        workload = None
        for candidate in self._namespace_workloads(namespace):
            owners = candidate.get("metadata", {}).get("ownerReferences") or []
            if any(o.get("uid") in uids for o in owners):
                workload = candidate
                break
        if workload is not None:
            resolution.queue = (workload.get("spec") or {}).get("queueName", "") or ""
            admission = (workload.get("status") or {}).get("admission") or {}
            resolution.cluster_queue = admission.get("clusterQueue", "") or ""
            if resolution.cluster_queue:
                resolution.cohort = self._cohort(resolution.cluster_queue)
        if not resolution.queue:
            for obj in objects:
                labels = obj.get("metadata", {}).get("labels") or {}
                if labels.get(QUEUE_LABEL):
                    resolution.queue = labels[QUEUE_LABEL]
                    break

    def _namespace_workloads(self, namespace: str) -> list[dict[str, Any]]:
        if namespace not in self._workloads:
            found = self._call(
                "workloads",
                lambda: self.custom.list_namespaced_custom_object(
                    KUEUE_GROUP, KUEUE_VERSION, namespace, "workloads"
                ),
            )
            self._workloads[namespace] = list((found or {}).get("items") or [])
        return self._workloads[namespace]

    def _cohort(self, cluster_queue: str) -> str:
        if cluster_queue not in self._cohorts:
            found = self._call(
                "clusterqueues",
                lambda: self.custom.get_cluster_custom_object(
                    KUEUE_GROUP, KUEUE_VERSION, "clusterqueues", cluster_queue
                ),
            )
            spec = (found or {}).get("spec") or {}
            # v1beta1 calls it cohort; later versions cohortName.
            self._cohorts[cluster_queue] = spec.get("cohort") or spec.get("cohortName") or ""
        return self._cohorts[cluster_queue]

    # ---------------------------------------------------------------- reads
    def _get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        key = (api_version, kind, namespace, name)
        if key not in self._objects:
            self._objects[key] = self._fetch(api_version, kind, namespace, name)
        return self._objects[key]

    def _fetch(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        if api_version == "v1" and kind == "Pod":
            pod = self._call("pods", lambda: self.core.read_namespaced_pod(name, namespace))
            return None if pod is None else self.api_client.sanitize_for_serialization(pod)
        group, version = _split(api_version)
        if not group:
            return None  # other core kinds never own pods
        resource = plural(kind)
        return self._call(
            f"{group}/{resource}",
            lambda: self.custom.get_namespaced_custom_object(
                group, version, namespace, resource, name
            ),
        )

    def _call(self, what: str, fetch: Any) -> Any:
        """One API read: None when missing or forbidden; KubeUnavailable when down."""
        from kubernetes.client.exceptions import ApiException

        if what in self._forbidden:
            return None
        self.lookups += 1
        try:
            return fetch()
        except ApiException as error:
            if error.status == 404:
                return None
            if error.status in (401, 403):
                self._forbidden.add(what)
                log.warning(
                    "the Kubernetes API refuses to read %s (HTTP %s): grant the accounting "
                    "service account get/list on it; owner chains stop there",
                    what,
                    error.status,
                )
                return None
            raise KubeUnavailable(
                f"Kubernetes API error reading {what}: HTTP {error.status}"
            ) from None
        except Exception as error:  # urllib3 connection and protocol errors
            raise KubeUnavailable(f"cannot reach the Kubernetes API: {error}") from None


def api_client_from_config(kubeconfig: str | None = None) -> kubernetes.client.ApiClient | None:
    """An ApiClient from the kubeconfig given, the in-cluster service account, or the
    default kubeconfig; None when none of them exists."""
    import kubernetes

    if kubeconfig:
        client = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
        client = kubernetes.client.ApiClient()
    else:
        path = os.path.expanduser(os.environ.get("KUBECONFIG", "~/.kube/config").split(":")[0])
        if not os.path.exists(path):
            return None
        client = kubernetes.config.new_client_from_config(config_file=path)
    # Fail fast when the server is down: ingestion falls back to kube-state-metrics.
    client.configuration.retries = 1
    return client
