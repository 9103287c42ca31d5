"""Build an `Exporter` from its parts: the NVML or simulated source, the kubelet,
cgroups and the pod watch for attribution, and the collective-probe listener."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from exporter.app import Exporter
from exporter.attribution import Attribution, PodRef
from exporter.model import DeviceSnapshot

log = logging.getLogger(__name__)

# Where a simulated node puts real processes of this machine that report collectives.
LOCAL_NAMESPACE = "local"


def _local_pids(proc_root: str = "/proc") -> list[int]:
    return [int(name) for name in os.listdir(proc_root) if name.isdigit()]


def _process_name(pid: int, proc_root: str = "/proc") -> str:
    try:
        with open(f"{proc_root}/{pid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


def pids_of(snapshot: DeviceSnapshot) -> set[int]:
    """Every process the source saw on a GPU or a MIG instance."""
    pids = set()
    for gpu in snapshot.gpus:
        pids.update(p.pid for p in gpu.processes)
        for mig in gpu.mig:
            pids.update(p.pid for p in mig.processes)
    return pids


def _collective_parts(
    probe_socket: str | None,
    node: str,
    resolve_pid: Callable[[int], PodRef | None],
    inspector_dir: str | None = None,
    gpu_to_pods: Callable[[str], list[PodRef]] | None = None,
    sys_root: str | None = None,
    live_pods=None,
    departed_grace_s: float = 300.0,
):
    """Collectors, stop callbacks and after-collection hooks for the probe listener,
    NCCL Inspector files and link counters."""
    from exporter.collective import wiring as collective_wiring

    return collective_wiring.build(
        probe_socket=probe_socket,
        node=node,
        resolve_pid=resolve_pid,
        inspector_dir=inspector_dir,
        gpu_to_pods=gpu_to_pods,
        sys_root=sys_root,
        live_pods=live_pods,
        departed_grace_s=departed_grace_s,
    )


def simulated_exporter(
    scenario: str = "default",
    seed: int = 0,
    node: str | None = None,
    interval_s: float = 1.0,
    dcgm_compat: bool = False,
    max_pod_series: int = 10_000,
    probe_socket: str | None = None,
    departed_grace_s: float = 300.0,
) -> Exporter:
    """An exporter on a simulated node; its pods are the scenario's."""
    from exporter.sources.simulated import SimulatedAttribution, SimulatedSource

    source = SimulatedSource(scenario, seed=seed, node=node)
    attribution = SimulatedAttribution(source)
    node_name = source.scenario.node
    latest: dict[str, Attribution] = {"value": Attribution()}

    def attribute(snapshot: DeviceSnapshot) -> Attribution:
        latest["value"] = attribution.resolve(snapshot)
        return latest["value"]

    def resolve_pid(pid: int) -> PodRef | None:
        """A simulated pod's process, or a real process of this machine (the load
        generator of a demo or calibration run) as pod `pid-<pid>` in namespace `local`."""
        known = latest["value"].processes.get(pid)
        if known is not None:
            return known
        return _local_pod(pid)

    def live_pods(state) -> list[PodRef]:
        """The scenario's pods now, and local processes that still run."""
        pods = list(state.attribution.processes.values())
        pods += [a.pod for held in state.attribution.devices.values() for a in held]
        return pods + [_local_pod(pid) for pid in _local_pids()]

    def _local_pod(pid: int) -> PodRef:
        return PodRef(LOCAL_NAMESPACE, f"pid-{pid}", _process_name(pid))

    collectors, stops, hooks = _collective_parts(
        probe_socket,
        node_name,
        resolve_pid,
        live_pods=live_pods,
        departed_grace_s=departed_grace_s,
    )
    return Exporter(
        source,
        node_name,
        attribute,
        interval_s=interval_s,
        dcgm_compat=dcgm_compat,
        max_pod_series=max_pod_series,
        departed_grace_s=departed_grace_s,
        extra_collectors=collectors,
        after_collect=hooks,
        on_stop=stops,
    )


def nvml_exporter(
    node: str,
    interval_s: float = 1.0,
    dcgm_compat: bool = False,
    max_pod_series: int = 10_000,
    kubelet_socket: str | None = "/var/lib/kubelet/pod-resources/kubelet.sock",
    extra_resource_names: list[str] | None = None,
    proc_root: str = "/proc",
    pod_watch: bool = True,
    kubeconfig: str | None = None,
    probe_socket: str | None = None,
    inspector_dir: str | None = None,
    sys_root: str | None = "/sys",
    nvml=None,
    api_client=None,
    departed_grace_s: float = 300.0,
) -> Exporter:
    """An exporter on this node's real GPUs. Raises NvmlUnavailable without a driver."""
    from exporter.attribution.cgroup import pod_of_pid
    from exporter.attribution.podresources import (
        DEFAULT_RESOURCE_NAMES,
        DEFAULT_RESOURCE_PREFIXES,
        PodResourcesClient,
    )
    from exporter.attribution.resolver import AttributionResolver
    from exporter.sources.nvml import NvmlSource

    source = NvmlSource(nvml)
    stops: list[Callable[[], None]] = []
    kubelet = None
    if kubelet_socket:
        kubelet = PodResourcesClient(
            kubelet_socket,
            resource_names=(*DEFAULT_RESOURCE_NAMES, *(extra_resource_names or [])),
            resource_prefixes=DEFAULT_RESOURCE_PREFIXES,
        )
    watch = None
    if pod_watch:
        watch = _start_pod_watch(node, kubeconfig, api_client)
        if watch is not None:
            stops.append(watch.stop)
    resolver = AttributionResolver(kubelet, watch, proc_root)
    latest: dict[str, Attribution] = {"value": Attribution()}

    def attribute(snapshot: DeviceSnapshot) -> Attribution:
        latest["value"] = resolver.resolve(pids_of(snapshot))
        return latest["value"]

    def resolve_pid(pid: int) -> PodRef | None:
        """A probe sender's pod: cgroup -> pod uid -> the pod watch's names."""
        known = latest["value"].processes.get(pid)
        if known is not None:
            return known
        identity = pod_of_pid(pid, proc_root)
        if identity is None or watch is None:
            return None
        info = watch.pod(identity.pod_uid)
        if info is None:
            return None
        container = watch.container_name(identity.container_id) or ""
        return PodRef(info.namespace, info.name, container, identity.pod_uid)

    def gpu_to_pods(uuid: str) -> list[PodRef]:
        return [a.pod for a in latest["value"].devices.get(uuid, ())]

    def live_pods(state) -> list[PodRef]:
        """Pods the API server says run on this node (all of them when it is not asked)."""
        if watch is None:
            return [a.pod for held in state.attribution.devices.values() for a in held]
        return [PodRef(p.namespace, p.name, "", p.uid) for p in watch.pods()]

    collectors, collective_stops, hooks = _collective_parts(
        probe_socket,
        node,
        resolve_pid,
        inspector_dir,
        gpu_to_pods,
        sys_root,
        live_pods,
        departed_grace_s,
    )
    stops.extend(collective_stops)
    return Exporter(
        source,
        node,
        attribute,
        interval_s=interval_s,
        dcgm_compat=dcgm_compat,
        max_pod_series=max_pod_series,
        departed_grace_s=departed_grace_s,
        attribution_errors=lambda: resolver.errors,
        extra_collectors=collectors,
        after_collect=hooks,
        on_stop=stops,
    )


def _start_pod_watch(node: str, kubeconfig: str | None, api_client):
    """This node's pods from the API server; None (logged) when no config is found."""
    from kubernetes import client, config

    from exporter.attribution.podwatch import PodWatch

    if api_client is None:
        try:
            if kubeconfig:
                config.load_kube_config(kubeconfig)
            else:
                config.load_incluster_config()
        except config.ConfigException as error:
            log.warning(
                "no Kubernetes API access: shared-GPU splits will lack pod names "
                "(run in-cluster, pass --kubeconfig, or --no-pod-watch to silence this)",
                extra={"error": str(error)},
            )
            return None
        api_client = client.ApiClient()
    return PodWatch(api_client, node).start()
