"""The committed generated code matches api.proto, and api.proto matches upstream."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from exporter.attribution.proto import api_pb2

ROOT = Path(__file__).resolve().parents[3]
PROTO_DIR = ROOT / "exporter" / "attribution" / "proto"
GENERATED = ("api_pb2.py", "api_pb2_grpc.py", "api_pb2.pyi")


def test_committed_generated_code_is_current(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(GENERATED)
    for name in GENERATED:
        fresh = (tmp_path / name).read_bytes()
        committed = (PROTO_DIR / name).read_bytes()
        assert fresh == committed, (
            f"exporter/attribution/proto/{name} is not what scripts/gen_proto.sh generates "
            f"from api.proto with the installed grpcio-tools {version('grpcio-tools')}; "
            "run scripts/gen_proto.sh and commit the result"
        )


def test_generated_import_is_package_relative() -> None:
    text = (PROTO_DIR / "api_pb2_grpc.py").read_text()
    assert "from . import api_pb2 as api__pb2" in text
    assert "\nimport api_pb2" not in text


def _fields(message: str) -> dict[str, int]:
    descriptor = api_pb2.DESCRIPTOR.message_types_by_name[message]
    return {field.name: field.number for field in descriptor.fields}


def test_wire_format_matches_the_kubelet() -> None:
    # Field numbers of kubernetes/kubernetes staging/src/k8s.io/kubelet/pkg/apis/podresources/v1.
    assert api_pb2.DESCRIPTOR.package == "v1"
    assert _fields("ListPodResourcesResponse") == {"pod_resources": 1}
    assert _fields("PodResources") == {"name": 1, "namespace": 2, "containers": 3}
    assert _fields("ContainerResources") == {
        "name": 1,
        "devices": 2,
        "cpu_ids": 3,
        "memory": 4,
        "dynamic_resources": 5,
    }
    assert _fields("ContainerDevices") == {"resource_name": 1, "device_ids": 2, "topology": 3}
    assert _fields("ContainerMemory") == {"memory_type": 1, "size": 2, "topology": 3}
    assert _fields("TopologyInfo") == {"nodes": 1}
    assert _fields("NUMANode") == {"ID": 1}
    assert _fields("DynamicResource") == {
        "claim_name": 2,
        "claim_namespace": 3,
        "claim_resources": 4,
    }
    assert _fields("ClaimResource") == {
        "cdi_devices": 1,
        "driver_name": 2,
        "pool_name": 3,
        "device_name": 4,
    }
    assert _fields("AllocatableResourcesResponse") == {"devices": 1, "cpu_ids": 2, "memory": 3}
    assert _fields("GetPodResourcesRequest") == {"pod_name": 1, "pod_namespace": 2}
    assert _fields("GetPodResourcesResponse") == {"pod_resources": 1}
    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == "v1.PodResourcesLister"
    assert [m.name for m in service.methods] == ["List", "GetAllocatableResources", "Get"]
