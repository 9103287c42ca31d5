"""The Job and PyTorchJob manifests are valid and run a loadgen the CLI accepts."""

import argparse
from pathlib import Path

import pytest
import yaml

from loadgen import cli
from tests.deploy import schemas

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "loadgen"


def objects(name: str) -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / name).read_text()))


def containers(obj: dict) -> list[dict]:
    if obj["kind"] == "Job":
        return obj["spec"]["template"]["spec"]["containers"]
    return [
        c
        for s in obj["spec"]["pytorchReplicaSpecs"].values()
        for c in s["template"]["spec"]["containers"]
    ]


@pytest.mark.parametrize("name", ["job.yaml", "pytorchjob.yaml"])
def test_manifest_is_valid_and_its_arguments_parse(name: str) -> None:
    workloads = [o for o in objects(name) if o["kind"] in ("Job", "PyTorchJob")]
    assert len(workloads) == 1
    for obj in objects(name):
        schemas.validate(obj)
    parser = argparse.ArgumentParser()
    cli.register(parser)
    for container in containers(workloads[0]):
        assert container["image"].startswith("ghcr.io/gpuledger/loadgen:")
        args = parser.parse_args(container["args"])  # the image's entrypoint is gpuledger loadgen
        assert args.metrics_port == 9402 and "{rank}" in args.timeline
        assert args.nproc is None  # ranks come from the launcher, not the spawner
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_job_ranks_find_rank_zero_through_the_headless_service() -> None:
    service, job = objects("job.yaml")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    env = {e["name"]: e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert int(env["WORLD_SIZE"]) == spec["completions"]
    assert service["spec"]["clusterIP"] == "None"
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert env["MASTER_ADDR"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"


def test_pytorchjob_container_is_named_as_the_operator_requires() -> None:
    (job,) = objects("pytorchjob.yaml")
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"
