"""Joins the kubelet, the cgroups and the pod watch into one `Attribution` per collection.

- devices: the kubelet's List (device ID -> containers), enriched with the pod UID
  from the pod watch where it knows the pod;
- processes: pid -> cgroup (pod UID, container ID) -> pod watch (namespace, name,
  container name).

It never raises: a failing kubelet leaves its last good mapping in place, marked
stale with its age; a process that cannot be attributed is left out and counted.
Errors are counted by (source, reason), sources "kubelet", "cgroup", "apiserver",
for gpuledger_exporter_attribution_errors_total.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from exporter.attribution import Attribution, DeviceAssignment, PodRef
from exporter.attribution.cgroup import pod_of_pid
from exporter.attribution.podresources import KubeletError
from exporter.attribution.podwatch import PodInfo

log = logging.getLogger(__name__)

KUBELET, CGROUP, APISERVER = "kubelet", "cgroup", "apiserver"
# Reasons this module counts itself (the sources add their own).
POD_UNKNOWN = "pod_unknown"  # a process's pod UID is not (yet) known to the pod watch
CONTAINER_UNKNOWN = "container_unknown"  # its container ID is not in the pod's status
UNEXPECTED = "unexpected"  # a bug: logged with its traceback


class AssignmentSource(Protocol):
    """What the resolver needs of PodResourcesClient."""

    last_skipped: Mapping[str, int]

    def list_assignments(self) -> list[DeviceAssignment]: ...


class PodDirectory(Protocol):
    """What the resolver needs of PodWatch."""

    @property
    def stale(self) -> bool: ...

    @property
    def errors(self) -> Mapping[str, int]: ...

    def age_seconds(self) -> float: ...

    def pod(self, uid: str) -> PodInfo | None: ...

    def pod_by_name(self, namespace: str, name: str) -> PodInfo | None: ...


class AttributionResolver:
    """One `resolve(pids)` per collection; see the module docstring."""

    def __init__(
        self,
        podresources: AssignmentSource | None,
        pod_watch: PodDirectory | None,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        *,
        kubelet_interval_s: float = 0.0,
    ) -> None:
        """podresources None: no device attribution (no kubelet socket mounted).
        pod_watch None: no process attribution (no API access).
        kubelet_interval_s: ask the kubelet at most this often (0: every resolve)."""
        self._kubelet = podresources
        self._pods = pod_watch
        self._proc_root = proc_root
        self._clock = clock
        self._kubelet_interval_s = kubelet_interval_s
        self._lock = threading.Lock()
        self._errors: Counter[tuple[str, str]] = Counter()
        self._assignments: tuple[DeviceAssignment, ...] = ()
        self._kubelet_good_at: float | None = None
        self._kubelet_tried_at: float | None = None
        self._kubelet_stale = True
        self._kubelet_in_outage = False

    @property
    def errors(self) -> dict[tuple[str, str], int]:
        """Errors since start by (source, reason), the pod watch's included."""
        with self._lock:
            merged = Counter(self._errors)
        if self._pods is not None:
            try:
                for reason, count in self._pods.errors.items():
                    merged[(APISERVER, reason)] += count
            except Exception:
                log.exception("reading the pod watch's error counts failed")
        return dict(merged)

    def resolve(self, pids: Iterable[int]) -> Attribution:
        """Who holds which device and which pod owns each pid, now; never raises."""
        try:
            self._refresh_kubelet()
        except Exception:
            log.exception("asking the kubelet for device assignments failed unexpectedly")
            self._count(KUBELET, UNEXPECTED)
            self._kubelet_stale = True
        stale: dict[str, bool] = {}
        age: dict[str, float] = {}
        devices: dict[str, tuple[DeviceAssignment, ...]] = {}
        if self._kubelet is not None:
            devices = self._devices()
            stale[KUBELET] = self._kubelet_stale
            age[KUBELET] = self._age(self._kubelet_good_at)
        processes: dict[int, PodRef] = {}
        if self._pods is not None:
            try:
                processes = self._processes(pids)
            except Exception:  # e.g. a pid that is not an int
                log.exception("attributing processes failed unexpectedly")
                self._count(CGROUP, UNEXPECTED)
            try:
                stale[APISERVER] = bool(self._pods.stale)
                age[APISERVER] = float(self._pods.age_seconds())
            except Exception:
                log.exception("reading the pod watch's state failed")
                self._count(APISERVER, UNEXPECTED)
                stale[APISERVER], age[APISERVER] = True, math.inf
        return Attribution(devices=devices, processes=processes, stale=stale, age_seconds=age)

    # ---------------------------------------------------------------- kubelet
    def _refresh_kubelet(self) -> None:
        if self._kubelet is None:
            return
        now = self._clock()
        if (
            self._kubelet_tried_at is not None
            and now - self._kubelet_tried_at < self._kubelet_interval_s
        ):
            return
        self._kubelet_tried_at = now
        try:
            assignments = self._kubelet.list_assignments()
        except KubeletError as error:
            self._count(KUBELET, error.reason)
            # Warn once per outage; the retries while it lasts go to debug.
            log.log(
                logging.DEBUG if self._kubelet_in_outage else logging.WARNING,
                "%s; keeping the last known device assignments",
                error,
            )
            self._kubelet_in_outage = True
            self._kubelet_stale = True
            return
        if self._kubelet_in_outage:
            log.info("the kubelet answers again: device assignments are current")
        self._kubelet_in_outage = False
        for reason, count in dict(self._kubelet.last_skipped).items():
            self._count(KUBELET, reason, count)
        self._assignments = tuple(assignments)
        self._kubelet_good_at = now
        self._kubelet_stale = False

    def _devices(self) -> dict[str, tuple[DeviceAssignment, ...]]:
        grouped: dict[str, list[DeviceAssignment]] = {}
        for assignment in self._assignments:
            grouped.setdefault(assignment.device_id, []).append(self._with_uid(assignment))
        return {device: tuple(holders) for device, holders in grouped.items()}

    def _with_uid(self, assignment: DeviceAssignment) -> DeviceAssignment:
        # The kubelet names pods without their UID; the pod watch knows it.
        ref = assignment.pod
        if ref.uid or self._pods is None:
            return assignment
        try:
            info = self._pods.pod_by_name(ref.namespace, ref.pod)
        except Exception:
            log.exception("pod watch lookup by name failed")
            return assignment
        if info is None:
            return assignment
        pod = PodRef(ref.namespace, ref.pod, ref.container, uid=info.uid)
        return DeviceAssignment(assignment.resource, assignment.device_id, pod)

    # ---------------------------------------------------------------- processes
    def _processes(self, pids: Iterable[int]) -> dict[int, PodRef]:
        assert self._pods is not None
        processes: dict[int, PodRef] = {}
        reasons: Counter[str] = Counter()
        for pid in dict.fromkeys(pids):
            ref = self._process(pid, reasons)
            if ref is not None:
                processes[pid] = ref
        for reason, count in reasons.items():
            self._count(CGROUP, reason, count)
        return processes

    def _process(self, pid: int, reasons: Counter[str]) -> PodRef | None:
        assert self._pods is not None
        try:
            identity = pod_of_pid(pid, self._proc_root, reasons)
        except Exception:
            log.exception("reading the cgroup of pid %s failed unexpectedly", pid)
            self._count(CGROUP, UNEXPECTED)
            return None
        if identity is None:
            return None  # vanished (counted) or not in a pod (host process)
        try:
            info = self._pods.pod(identity.pod_uid)
        except Exception:
            log.exception("pod watch lookup of uid %s failed unexpectedly", identity.pod_uid)
            self._count(APISERVER, UNEXPECTED)
            return None
        if info is None:
            self._count(APISERVER, POD_UNKNOWN)
            return None
        container = info.containers.get(identity.container_id, "")
        if not container:
            self._count(APISERVER, CONTAINER_UNKNOWN)
        return PodRef(info.namespace, info.name, container, uid=info.uid)

    # ---------------------------------------------------------------- helpers
    def _count(self, source: str, reason: str, count: int = 1) -> None:
        with self._lock:
            self._errors[(source, reason)] += count

    def _age(self, since: float | None) -> float:
        return math.inf if since is None else max(0.0, self._clock() - since)
