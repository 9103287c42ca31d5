"""A fake kubelet: a real gRPC server serving PodResources v1 on a unix socket.

It uses the project's generated servicer, so the client under test speaks real
gRPC over a real socket, exactly as against the kubelet.

    from tests.fakes.fake_kubelet import FakeKubelet, pod_resources

    with FakeKubelet(tmp_path) as kubelet:
        kubelet.set_pods([
            pod_resources("trainer-0", "team-a", {"trainer": {"nvidia.com/gpu": ["GPU-1"]}}),
        ])
        client = PodResourcesClient(socket_path=kubelet.socket_path)
        kubelet.mode = "slow"       # answers after `delay_s` (longer than a deadline)
        kubelet.mode = "malformed"  # adds entries a client must skip (see MALFORMED_PODS)
        kubelet.stop()              # kubelet gone: server stopped, socket removed
        kubelet.start()             # back on the same path

`calls` counts List calls, `last_metadata` holds the last call's gRPC metadata.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from concurrent import futures
from pathlib import Path

import grpc

from exporter.attribution.proto import api_pb2, api_pb2_grpc

NORMAL, SLOW, MALFORMED = "normal", "slow", "malformed"

# Devices -> container: {resource name: [device IDs]}; container name -> devices.
Devices = Mapping[str, Iterable[str]]


def pod_resources(
    name: str, namespace: str, containers: Mapping[str, Devices]
) -> api_pb2.PodResources:
    """A PodResources message: containers maps name -> {resource name: [device IDs]}."""
    return api_pb2.PodResources(
        name=name,
        namespace=namespace,
        containers=[
            api_pb2.ContainerResources(
                name=container,
                devices=[
                    api_pb2.ContainerDevices(
                        resource_name=resource,
                        device_ids=list(ids),
                        topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=0)]),
                    )
                    for resource, ids in devices.items()
                ],
            )
            for container, devices in containers.items()
        ],
    )


# What "malformed" mode adds, and how many entries a client must skip for each reason.
MALFORMED_PODS = [
    # a device with no IDs, one with an empty ID, one with no resource name
    pod_resources(
        "broken-0",
        "team-x",
        {
            "main": {
                "nvidia.com/gpu": [],
                "nvidia.com/mig-1g.10gb": [""],
                "": ["GPU-nameless"],
            }
        },
    ),
    pod_resources("", "team-x", {"main": {"nvidia.com/gpu": ["GPU-podless"]}}),  # no pod name
    pod_resources("broken-1", "team-x", {"": {"nvidia.com/gpu": ["GPU-anon"]}}),  # no container
    # not errors: resources that are not GPUs must be ignored quietly
    pod_resources("nic-user", "team-x", {"main": {"example.com/sriov-nic": ["0000:3b:00.1"]}}),
]
MALFORMED_SKIPS = {
    "device_without_ids": 1,
    "empty_device_id": 1,
    "device_without_resource_name": 1,
    "pod_without_name": 1,
    "container_without_name": 1,
}


class _Servicer(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self.kubelet = kubelet

    def List(self, request, context):  # noqa: N802 - gRPC method name
        kubelet = self.kubelet
        with kubelet._lock:
            kubelet.calls += 1
            kubelet.last_metadata = dict(context.invocation_metadata())
            pods = list(kubelet._pods)
            mode = kubelet.mode
        if mode == SLOW:
            # Wait on an event, not sleep: stop() must not hang behind a slow call.
            kubelet._released.wait(kubelet.delay_s)
        if mode == MALFORMED:
            pods += MALFORMED_PODS
        return api_pb2.ListPodResourcesResponse(pod_resources=pods)

    def GetAllocatableResources(self, request, context):  # noqa: N802 - gRPC method name
        with self.kubelet._lock:
            devices = list(self.kubelet.allocatable)
        return api_pb2.AllocatableResourcesResponse(devices=devices)

    def Get(self, request, context):  # noqa: N802 - gRPC method name
        with self.kubelet._lock:
            for pod in self.kubelet._pods:
                if pod.name == request.pod_name and pod.namespace == request.pod_namespace:
                    return api_pb2.GetPodResourcesResponse(pod_resources=pod)
        context.abort(
            grpc.StatusCode.NOT_FOUND,
            f"pod {request.pod_namespace}/{request.pod_name} not found",
        )


class FakeKubelet:
    """Serves PodResources v1 on <folder>/kubelet.sock (unix socket)."""

    def __init__(self, folder: str | os.PathLike[str], delay_s: float = 5.0) -> None:
        self.socket_path = str(Path(folder) / "kubelet.sock")
        # AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer.
        if len(self.socket_path) > 100:
            raise ValueError(
                f"socket path {self.socket_path} is too long for a unix socket; use a "
                "shorter folder (tempfile.mkdtemp(dir='/tmp'))"
            )
        self.mode = NORMAL
        self.delay_s = delay_s
        self.calls = 0
        self.last_metadata: dict[str, str] = {}
        self.allocatable: list[api_pb2.ContainerDevices] = []
        self._pods: list[api_pb2.PodResources] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._server: grpc.Server | None = None

    def set_pods(self, pods: Iterable[api_pb2.PodResources]) -> None:
        with self._lock:
            self._pods = list(pods)

    def start(self) -> FakeKubelet:
        if self._server is not None:
            return self
        self._released.clear()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix://{self.socket_path}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """The kubelet goes away: stop serving and remove the socket."""
        server, self._server = self._server, None
        self._released.set()
        if server is not None:
            server.stop(grace=None).wait(5)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> FakeKubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
