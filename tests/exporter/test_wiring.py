"""The real-GPU exporter end to end: fake NVML, a real gRPC kubelet on a unix socket,
the Kubernetes API over HTTP, and a fixture /proc tree."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.wiring import nvml_exporter
from tests.fakes.fake_kubelet import FakeKubelet, pod_resources
from tests.fakes.fake_pynvml import FakeProcess, fake_gpu, make_fake_pynvml
from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod
from tests.fakes.proc_tree import pod_process

NODE = "gpu-node-1"
GIB = 1024**3
POD_A_UID, POD_B_UID = (
    "11111111-2222-3333-4444-555555555555",
    "66666666-7777-8888-9999-000000000000",
)
CID_A, CID_B = "a" * 64, "b" * 64


def samples(text, name):
    for family in text_string_to_metric_families(text):
        if family.name == name.removesuffix("_total"):
            return family.samples
    return []


@pytest.fixture
def node(tmp_path):
    proc = tmp_path / "proc"
    pod_process(proc, 101, POD_A_UID, CID_A)
    pod_process(proc, 202, POD_B_UID, CID_B, version=1, driver="cgroupfs", runtime="crio")
    nvml = make_fake_pynvml(
        [
            fake_gpu(0, utilization_gpu=80, memory_used=20 * GIB),
            fake_gpu(
                1,
                utilization_gpu=60,
                memory_used=9 * GIB,
                processes=[FakeProcess(101, 6 * GIB), FakeProcess(202, 3 * GIB)],
            ),
        ]
    )
    gpu0, gpu1 = nvml.gpus[0].uuid, nvml.gpus[1].uuid
    with FakeKubelet(tmp_path) as kubelet, FakeKubeApiServer() as api:
        kubelet.set_pods(
            [
                pod_resources("trainer-0", "team-a", {"trainer": {"nvidia.com/gpu": [gpu0]}}),
                pod_resources("nb-a", "team-a", {"lab": {"nvidia.com/gpu.shared": [f"{gpu1}::0"]}}),
                pod_resources("nb-b", "team-b", {"lab": {"nvidia.com/gpu.shared": [f"{gpu1}::1"]}}),
            ]
        )
        api.add(make_pod("nb-a", "team-a", node=NODE, uid=POD_A_UID, containers={"lab": CID_A}))
        api.add(
            make_pod(
                "nb-b",
                "team-b",
                node=NODE,
                uid=POD_B_UID,
                containers={"lab": CID_B},
                runtime="cri-o",
            )
        )
        api.add(make_pod("elsewhere", "team-a", node="other-node", containers={"x": "c" * 64}))
        exporter = nvml_exporter(
            NODE,
            kubelet_socket=kubelet.socket_path,
            proc_root=str(proc),
            nvml=nvml,
            api_client=api.api_client(),
            sys_root=None,
        )
        yield exporter, nvml, kubelet, api
        exporter.stop()


def collect(exporter, nvml, times=3):
    for _ in range(times):
        nvml.add_process_sample(1, 101, sm=45, mem=10)
        nvml.add_process_sample(1, 202, sm=15, mem=5)
        nvml.advance(1.0)
        exporter.loop.collect_once()
    return exporter.renderer.render().decode()


def wait_synced(exporter):
    watch = exporter._on_stop[0].__self__  # the PodWatch's stop method
    assert watch.wait_synced(10)


def test_pods_get_their_gpus_and_shared_gpus_are_split(node):
    exporter, nvml, kubelet, api = node
    wait_synced(exporter)
    text = collect(exporter, nvml)
    util = {s.labels["pod"]: s.value for s in samples(text, "gpuledger_pod_gpu_utilization_ratio")}
    assert util["trainer-0"] == pytest.approx(0.8)
    # nb-a's process had 45 of the 60 SM sample points on GPU 1.
    assert util["nb-a"] == pytest.approx(0.6 * 0.75)
    assert util["nb-b"] == pytest.approx(0.6 * 0.25)
    memory = {
        s.labels["pod"]: s.value for s in samples(text, "gpuledger_pod_gpu_memory_used_bytes")
    }
    assert memory == {"trainer-0": 20 * GIB, "nb-a": 6 * GIB, "nb-b": 3 * GIB}
    held = {s.labels["pod"]: s.labels for s in samples(text, "gpuledger_pod_gpu_allocated")}
    assert (
        held["nb-b"]["resource"] == "nvidia.com/gpu.shared" and held["nb-b"]["sharing"] == "shared"
    )
    assert held["nb-b"]["namespace"] == "team-b" and held["nb-b"]["container"] == "lab"
    assert {s.labels["source"] for s in samples(text, "gpuledger_gpu_up")} == {"nvml"}


def test_kubelet_outage_keeps_the_last_mapping_and_says_it_is_stale(node):
    exporter, nvml, kubelet, api = node
    wait_synced(exporter)
    collect(exporter, nvml, times=2)
    kubelet.stop()
    text = collect(exporter, nvml, times=2)
    assert {s.labels["pod"] for s in samples(text, "gpuledger_pod_gpu_allocated")} == {
        "trainer-0",
        "nb-a",
        "nb-b",
    }
    stale = {
        s.labels["source"]: s.value for s in samples(text, "gpuledger_exporter_attribution_stale")
    }
    assert stale["kubelet"] == 1
    errors = samples(text, "gpuledger_exporter_attribution_errors_total")
    assert any(s.labels["source"] == "kubelet" and s.value > 0 for s in errors)
    kubelet.start()
    text = collect(exporter, nvml, times=1)
    stale = {
        s.labels["source"]: s.value for s in samples(text, "gpuledger_exporter_attribution_stale")
    }
    assert stale["kubelet"] == 0


def test_lost_gpu_mid_run_keeps_the_other_gpu(node):
    exporter, nvml, kubelet, api = node
    collect(exporter, nvml, times=2)
    nvml.make_lost(0)
    text = collect(exporter, nvml, times=2)
    up = {s.labels["gpu"]: s.value for s in samples(text, "gpuledger_gpu_up")}
    assert up == {"0": 0.0, "1": 1.0}
    assert {s.labels["pod"] for s in samples(text, "gpuledger_pod_gpu_allocated")} == {
        "nb-a",
        "nb-b",
    }


def test_api_server_down_keeps_names_already_known(node):
    exporter, nvml, kubelet, api = node
    wait_synced(exporter)
    collect(exporter, nvml, times=2)
    api.stop()
    text = collect(exporter, nvml, times=2)
    util = {s.labels["pod"]: s.value for s in samples(text, "gpuledger_pod_gpu_utilization_ratio")}
    assert util["nb-a"] == pytest.approx(0.45)


def test_probe_reports_are_attributed_by_cgroup_and_go_with_the_pod(tmp_path):
    """A training process reports over the probe socket; the exporter names its pod from
    the kernel (peer pid -> /proc/<pid>/cgroup -> pod watch) and drops the series once
    the API server says the pod is gone."""
    import os
    import socket as socketlib

    from gpuledger import probe_wire as wire
    from tests.realservices import wait_until

    proc = tmp_path / "proc"
    pod_process(proc, os.getpid(), POD_A_UID, CID_A)  # this test process plays the trainer
    probe_socket = str(tmp_path / "probe.sock")
    nvml = make_fake_pynvml([fake_gpu(0)])
    with FakeKubeApiServer() as api:
        api.add(make_pod("nb-a", "team-a", node=NODE, uid=POD_A_UID, containers={"lab": CID_A}))
        exporter = nvml_exporter(
            NODE,
            kubelet_socket=None,
            proc_root=str(proc),
            nvml=nvml,
            api_client=api.api_client(),
            sys_root=None,
            probe_socket=probe_socket,
            departed_grace_s=0.0,  # at once: this test is about the pod going
        )
        try:
            wait_synced(exporter)
            report = wire.Report(
                instance="ab12",
                seq=1,
                uptime_s=1.0,
                dropped_reports=0,
                ops={
                    "all_reduce": wire.OpReport(
                        bytes=4096, bus_bytes=4096.0, seconds=0.5, calls=2, world_size=2
                    )
                },
            )
            with socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM) as client:
                client.connect(probe_socket)
                client.sendall(wire.encode(report))

                def reported():
                    exporter.loop.collect_once()
                    text = exporter.renderer.render().decode()
                    return [
                        s
                        for s in samples(text, "gpuledger_collective_bytes_total")
                        if s.labels["pod"] == "nb-a"
                    ]

                (sample,) = wait_until(reported, timeout=10, what="probe bytes in the exposition")
                assert sample.value == 4096
                assert (
                    sample.labels["namespace"] == "team-a" and sample.labels["container"] == "lab"
                )
                api.delete("v1", "Pod", "nb-a", namespace="team-a")
                wait_until(lambda: not reported(), timeout=10, what="series gone with the pod")
        finally:
            exporter.stop()
