"""The kubelet PodResources v1 API: which container holds which GPU or MIG instance.

The kubelet serves `List` on a unix socket (by default
/var/lib/kubelet/pod-resources/kubelet.sock). The answer names pods by namespace and
name only (no UID) and lists, per container, the device IDs that device plugins
handed out. We keep the GPU resources (by name or prefix) and skip, with a count,
entries that cannot be attributed, so one bad entry never hides the others.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable

import grpc

from exporter.attribution import DeviceAssignment, PodRef
from exporter.attribution.proto import api_pb2, api_pb2_grpc

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
DEFAULT_RESOURCE_NAMES = ("nvidia.com/gpu", "nvidia.com/gpu.shared")
DEFAULT_RESOURCE_PREFIXES = ("nvidia.com/mig-",)
# The kubelet's own limit on this API's answers; dcgm-exporter uses the same.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Reasons an entry of an answer is skipped (keys of PodResourcesClient.last_skipped).
SKIP_POD_WITHOUT_NAME = "pod_without_name"
SKIP_CONTAINER_WITHOUT_NAME = "container_without_name"
SKIP_DEVICE_WITHOUT_RESOURCE = "device_without_resource_name"
SKIP_DEVICE_WITHOUT_IDS = "device_without_ids"
SKIP_EMPTY_DEVICE_ID = "empty_device_id"

_MOUNT_HINT = (
    "check that the exporter's pod mounts the host folder {folder} (hostPath volume) "
    "at the same path, that it runs as root, and that the kubelet serves the "
    "PodResources API there (on by default since Kubernetes 1.15; a kubelet with a "
    "non-default --root-dir puts the socket under <root-dir>/pod-resources/)"
)


class KubeletError(RuntimeError):
    """The kubelet did not answer `List`. `reason` is a short label for metrics."""

    reason = "rpc_error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class KubeletUnavailable(KubeletError):
    """The kubelet's socket is missing, not a socket, unreadable, or nobody listens."""

    reason = "unavailable"


class KubeletDeadlineExceeded(KubeletError):
    """The kubelet did not answer within the client's deadline."""

    reason = "deadline"


def shared_device_base(device_id: str) -> str:
    """The GPU behind a time-sliced or MPS replica ID.

    The NVIDIA device plugin names replicas `<uuid>::<n>`; the device is `<uuid>`.
    """
    base, sep, replica = device_id.rpartition("::")
    return base if sep and base and replica.isdigit() else device_id


class PodResourcesClient:
    """Asks the kubelet which containers hold which GPUs and MIG instances."""

    def __init__(
        self,
        socket_path: str = DEFAULT_SOCKET,
        resource_names: Iterable[str] = DEFAULT_RESOURCE_NAMES,
        resource_prefixes: Iterable[str] = DEFAULT_RESOURCE_PREFIXES,
        timeout_s: float = 2.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.socket_path = socket_path
        self.resource_names = frozenset(resource_names)
        self.resource_prefixes = tuple(resource_prefixes)
        if not self.resource_names and not self.resource_prefixes:
            raise ValueError(
                "give at least one resource name or prefix (e.g. nvidia.com/gpu), "
                "or no device would ever be attributed"
            )
        self.timeout_s = timeout_s
        # Entries skipped by the last successful call, by reason; and since start.
        self.last_skipped: dict[str, int] = {}
        self.skipped_total: Counter[str] = Counter()

    def wants(self, resource_name: str) -> bool:
        """True for the resources this client reports (GPUs, MIG instances, replicas)."""
        return resource_name in self.resource_names or resource_name.startswith(
            self.resource_prefixes
        )

    def list_assignments(self) -> list[DeviceAssignment]:
        """One `List` call: every (container, GPU device) pair the kubelet reports.

        Raises KubeletError (or its subclasses KubeletUnavailable and
        KubeletDeadlineExceeded) when the kubelet does not answer.
        """
        response = self._call_list()
        skipped: Counter[str] = Counter()
        assignments = list(self._assignments(response, skipped))
        self.last_skipped = dict(skipped)
        self.skipped_total.update(skipped)
        return assignments

    def _check_socket(self) -> None:
        folder = os.path.dirname(self.socket_path) or "."
        hint = _MOUNT_HINT.format(folder=folder)
        try:
            mode = os.stat(self.socket_path).st_mode
        except FileNotFoundError:
            raise KubeletUnavailable(
                f"kubelet PodResources socket {self.socket_path} does not exist: {hint}"
            ) from None
        except PermissionError:
            raise KubeletUnavailable(
                f"no permission to reach the kubelet PodResources socket {self.socket_path}: {hint}"
            ) from None
        if not stat.S_ISSOCK(mode):
            raise KubeletUnavailable(f"{self.socket_path} is not a unix socket: {hint}")

    def _call_list(self) -> api_pb2.ListPodResourcesResponse:
        self._check_socket()
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        # A fresh channel per call: a restarted kubelet recreates the socket, and a
        # long-lived channel would wait out its reconnect backoff before noticing.
        with grpc.insecure_channel(f"unix://{self.socket_path}", options=options) as channel:
            stub = api_pb2_grpc.PodResourcesListerStub(channel)
            try:
                return stub.List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout_s)
            except grpc.RpcError as error:
                raise self._translate(error) from None

    def _translate(self, error: grpc.RpcError) -> KubeletError:
        code = error.code() if hasattr(error, "code") else None
        details = error.details() if hasattr(error, "details") else str(error)
        where = f"kubelet PodResources List on {self.socket_path}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return KubeletDeadlineExceeded(
                f"{where} did not answer within {self.timeout_s:g} s (the kubelet is "
                "overloaded or stuck); the last known assignments are kept"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            hint = _MOUNT_HINT.format(folder=os.path.dirname(self.socket_path) or ".")
            return KubeletUnavailable(f"{where} is unavailable ({details}): {hint}")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return KubeletError(
                f"{where}: the kubelet does not serve PodResources v1 ({details}); "
                "it needs Kubernetes 1.20 or newer",
                reason="unimplemented",
            )
        name = code.name.lower() if code is not None else "rpc_error"
        return KubeletError(f"{where} failed: {name}: {details}", reason=name)

    def _assignments(
        self, response: api_pb2.ListPodResourcesResponse, skipped: Counter[str]
    ) -> Iterable[DeviceAssignment]:
        # Two replicas of one GPU given to one container are one assignment.
        seen: set[DeviceAssignment] = set()
        for pod in response.pod_resources:
            if not pod.name or not pod.namespace:
                skipped[SKIP_POD_WITHOUT_NAME] += 1
                continue
            for container in pod.containers:
                if not container.name:
                    skipped[SKIP_CONTAINER_WITHOUT_NAME] += 1
                    continue
                ref = PodRef(namespace=pod.namespace, pod=pod.name, container=container.name)
                for devices in container.devices:
                    if not devices.resource_name:
                        skipped[SKIP_DEVICE_WITHOUT_RESOURCE] += 1
                        continue
                    if not self.wants(devices.resource_name):
                        continue  # CPUs, NICs, other vendors: not ours, not an error
                    if not devices.device_ids:
                        skipped[SKIP_DEVICE_WITHOUT_IDS] += 1
                        continue
                    for device_id in devices.device_ids:
                        if not device_id.strip():
                            skipped[SKIP_EMPTY_DEVICE_ID] += 1
                            continue
                        assignment = DeviceAssignment(
                            resource=devices.resource_name,
                            device_id=shared_device_base(device_id.strip()),
                            pod=ref,
                        )
                        if assignment not in seen:
                            seen.add(assignment)
                            yield assignment
