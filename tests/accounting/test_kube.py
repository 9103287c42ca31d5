"""Owner chains, Kueue queues and cohorts through the real kubernetes client, served
by the fake API server in the shapes the operators' APIs define."""

from __future__ import annotations

import logging

import pytest

from accounting.kube import KubeUnavailable, ObjectRef, OwnerResolver, plural
from tests.fakes.kube_apiserver import (
    FakeKubeApiServer,
    Resource,
    make_object,
    make_pod,
    owner_reference,
)

NS = "ml"
CLUSTER_QUEUE = Resource("kueue.x-k8s.io", "v1beta1", "clusterqueues", "ClusterQueue", False)


def workload(api, name: str, owner: dict, queue: str, cluster_queue: str) -> dict:
    """A Kueue Workload as Kueue creates it for a job: owned by the job, admitted."""
    return api.add(
        make_object(
            "kueue.x-k8s.io/v1beta1",
            "Workload",
            name,
            NS,
            owner=owner_reference(owner),
            spec={
                "queueName": queue,
                "podSets": [{"name": "main", "count": 2, "template": {"spec": {"containers": []}}}],
            },
            status={
                "admission": {
                    "clusterQueue": cluster_queue,
                    "podSetAssignments": [
                        {"name": "main", "flavors": {"nvidia.com/gpu": "h100"}, "count": 2}
                    ],
                },
                "conditions": [{"type": "Admitted", "status": "True"}],
            },
        )
    )


@pytest.fixture
def api():
    with FakeKubeApiServer() as server:
        server.register_resource(CLUSTER_QUEUE)
        server.add(
            make_object(
                "kueue.x-k8s.io/v1beta1",
                "ClusterQueue",
                "gpu-h100",
                spec={"cohort": "research", "namespaceSelector": {}},
            )
        )
        yield server


@pytest.fixture
def resolver(api):
    return OwnerResolver(api.api_client())


def test_pytorchjob_pods_resolve_to_the_job_with_its_kueue_queue_and_cohort(api, resolver):
    job = api.add(
        make_object(
            "kubeflow.org/v1",
            "PyTorchJob",
            "llama-pretrain",
            NS,
            labels={"team": "language", "kueue.x-k8s.io/queue-name": "language-queue"},
            spec={
                "pytorchReplicaSpecs": {
                    "Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": {}},
                    "Worker": {"replicas": 3, "restartPolicy": "OnFailure", "template": {}},
                }
            },
        )
    )
    workload(api, "pytorchjob-llama-pretrain-3f2a1", job, "language-queue", "gpu-h100")
    api.add(
        make_pod(
            "llama-pretrain-worker-0",
            NS,
            node="gpu-1",
            labels={
                "training.kubeflow.org/job-name": "llama-pretrain",
                "training.kubeflow.org/replica-type": "worker",
            },
            owner=owner_reference(job),
        )
    )
    found = resolver.resolve(NS, "llama-pretrain-worker-0")
    assert [r.label for r in found.chain] == ["PyTorchJob/llama-pretrain"]
    assert found.job == ObjectRef(
        "PyTorchJob", "llama-pretrain", "kubeflow.org/v1", job["metadata"]["uid"]
    )
    assert found.job_labels["team"] == "language"
    assert (found.queue, found.cluster_queue, found.cohort) == (
        "language-queue",
        "gpu-h100",
        "research",
    )
    assert found.node == "gpu-1"
    assert found.pod_labels["training.kubeflow.org/replica-type"] == "worker"


def test_jobset_pods_resolve_through_their_job_and_the_jobset_is_read_once(api, resolver):
    jobset = api.add(
        make_object(
            "jobset.x-k8s.io/v1alpha2",
            "JobSet",
            "mixtral",
            NS,
            labels={"kueue.x-k8s.io/queue-name": "lq"},
            spec={"replicatedJobs": [{"name": "workers", "replicas": 2, "template": {}}]},
        )
    )
    workload(api, "jobset-mixtral-9c1e0", jobset, "lq", "gpu-h100")
    for j in range(2):
        job = api.add(
            make_object(
                "batch/v1",
                "Job",
                f"mixtral-workers-{j}",
                NS,
                labels={"jobset.sigs.k8s.io/jobset-name": "mixtral"},
                owner=owner_reference(jobset),
                spec={"parallelism": 2, "completions": 2, "completionMode": "Indexed"},
            )
        )
        for p in range(2):
            api.add(make_pod(f"mixtral-workers-{j}-{p}", NS, owner=owner_reference(job)))
    results = [resolver.resolve(NS, f"mixtral-workers-{j}-{p}") for j in range(2) for p in range(2)]
    assert [r.label for r in results[3].chain] == ["Job/mixtral-workers-1", "JobSet/mixtral"]
    assert {r.job.label for r in results} == {"JobSet/mixtral"}
    assert {(r.queue, r.cohort) for r in results} == {("lq", "research")}
    jobset_reads = [path for _, path, _ in api.requests if "/jobsets/" in path]
    assert len(jobset_reads) == 1


def test_rayjob_pods_resolve_through_the_raycluster(api, resolver):
    rayjob = api.add(
        make_object(
            "ray.io/v1",
            "RayJob",
            "tune-sweep",
            NS,
            spec={"entrypoint": "python tune.py", "shutdownAfterJobFinishes": True},
            status={"rayClusterName": "tune-sweep-raycluster-x7k2p", "jobStatus": "RUNNING"},
        )
    )
    cluster = api.add(
        make_object(
            "ray.io/v1",
            "RayCluster",
            "tune-sweep-raycluster-x7k2p",
            NS,
            owner=owner_reference(rayjob),
            spec={"headGroupSpec": {}, "workerGroupSpecs": [{"groupName": "gpu", "replicas": 2}]},
        )
    )
    workload(api, "rayjob-tune-sweep-1b2c3", rayjob, "ray-queue", "gpu-h100")
    api.add(
        make_pod(
            "tune-sweep-raycluster-x7k2p-gpu-worker-abcde",
            NS,
            labels={"ray.io/cluster": cluster["metadata"]["name"], "ray.io/node-type": "worker"},
            owner=owner_reference(cluster),
        )
    )
    found = resolver.resolve(NS, "tune-sweep-raycluster-x7k2p-gpu-worker-abcde")
    assert [r.label for r in found.chain] == [
        "RayCluster/tune-sweep-raycluster-x7k2p",
        "RayJob/tune-sweep",
    ]
    assert (found.queue, found.cohort) == ("ray-queue", "research")


def test_argo_workflow_and_deployment_chains(api, resolver):
    workflow = api.add(
        make_object(
            "argoproj.io/v1alpha1",
            "Workflow",
            "eval-nightly-8h2kq",
            NS,
            labels={"team": "evals"},
            spec={"entrypoint": "main", "templates": [{"name": "main"}]},
        )
    )
    api.add(
        make_pod(
            "eval-nightly-8h2kq-main-123",
            NS,
            labels={"workflows.argoproj.io/workflow": "eval-nightly-8h2kq"},
            owner=owner_reference(workflow),
        )
    )
    deployment = api.add(make_object("apps/v1", "Deployment", "vllm", NS))
    replicaset = api.add(
        make_object("apps/v1", "ReplicaSet", "vllm-6d5c7", NS, owner=owner_reference(deployment))
    )
    api.add(make_pod("vllm-6d5c7-q2x9z", NS, owner=owner_reference(replicaset)))
    argo = resolver.resolve(NS, "eval-nightly-8h2kq-main-123")
    assert argo.job.label == "Workflow/eval-nightly-8h2kq"
    assert argo.job_labels == {"team": "evals"}
    assert argo.queue == ""  # no Kueue workload: no queue
    served = resolver.resolve(NS, "vllm-6d5c7-q2x9z")
    assert [r.label for r in served.chain] == ["ReplicaSet/vllm-6d5c7", "Deployment/vllm"]


def test_a_pod_that_is_gone_resolves_from_its_known_owner(api, resolver):
    jobset = api.add(make_object("jobset.x-k8s.io/v1alpha2", "JobSet", "sft", NS))
    api.add(make_object("batch/v1", "Job", "sft-workers-0", NS, owner=owner_reference(jobset)))
    found = resolver.resolve(NS, "sft-workers-0-abcde", ObjectRef("Job", "sft-workers-0"))
    assert found.pod_labels is None
    assert [r.label for r in found.chain] == ["Job/sft-workers-0", "JobSet/sft"]
    gone = resolver.resolve(NS, "old-pod", ObjectRef("Job", "deleted-job"))
    assert [r.label for r in gone.chain] == ["Job/deleted-job"]


def test_an_unreachable_api_raises_and_a_forbidden_one_degrades(api, resolver, caplog):
    api.add(make_pod("p", NS))
    api.fail_with(403)
    with caplog.at_level(logging.WARNING):
        found = resolver.resolve(NS, "p", ObjectRef("Job", "j"))
    assert found.pod_labels is None and [r.label for r in found.chain] == ["Job/j"]
    assert "refuses to read pods" in caplog.text
    api.fail_with(None)
    api.stop()
    with pytest.raises(KubeUnavailable, match="cannot reach the Kubernetes API"):
        OwnerResolver(api.api_client()).resolve(NS, "p")


def test_plural_names_follow_the_api_conventions():
    assert [plural(k) for k in ("PyTorchJob", "RayCluster", "Workflow", "Policy", "Gateway")] == [
        "pytorchjobs",
        "rayclusters",
        "workflows",
        "policies",
        "gateways",
    ]
