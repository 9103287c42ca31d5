"""This node's pods, from the Kubernetes API server, kept current by a watch.

A cgroup names a process's pod by UID and its container by runtime ID; metrics need
namespace, pod name and container name. `PodWatch` lists the node's pods
(fieldSelector spec.nodeName=<node>) and then watches from the list's
resourceVersion on a daemon thread, the way client-go's reflector does:

- ADDED / MODIFIED / DELETED update the maps;
- 410 Gone (the resourceVersion was compacted away) -> list again;
- API server unreachable or failing -> back off exponentially, keep the last
  known pods and report `stale` until a list or watch succeeds again.

Objects are read as raw JSON rather than client models: cheaper per pod, and one
pod with an odd field cannot fail a whole list.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

# Reasons counted in PodWatch.errors.
UNREACHABLE = "unreachable"
WATCH_EXPIRED = "watch_expired"
BAD_RESPONSE = "bad_response"
UNEXPECTED = "unexpected"

_STATUS_FIELDS = ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses")


@dataclass(frozen=True)
class PodInfo:
    """What the API server says about one pod on this node."""

    uid: str
    namespace: str
    name: str
    # runtime container ID (without the "containerd://" scheme) -> container name
    containers: Mapping[str, str] = field(default_factory=dict)


def strip_runtime_scheme(container_id: str) -> str:
    """ "containerd://abc" -> "abc" (also cri-o://, docker://)."""
    _, sep, rest = container_id.partition("://")
    return rest if sep else container_id


def pod_info_from_json(obj: Mapping[str, Any]) -> PodInfo | None:
    """A PodInfo from a pod as JSON; None when it has no uid, namespace or name."""
    metadata = obj.get("metadata") or {}
    uid, namespace, name = metadata.get("uid"), metadata.get("namespace"), metadata.get("name")
    if not (uid and namespace and name):
        return None
    status = obj.get("status") or {}
    containers: dict[str, str] = {}
    for key in _STATUS_FIELDS:
        for container in status.get(key) or ():
            runtime_id = container.get("containerID")
            if runtime_id and container.get("name"):
                containers[strip_runtime_scheme(runtime_id)] = container["name"]
    return PodInfo(uid=uid, namespace=namespace, name=name, containers=containers)


class PodWatch:
    """Keeps uid -> (namespace, name) and container ID -> container name for one node."""

    def __init__(
        self,
        api_client: client.ApiClient,
        node_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if not node_name:
            raise ValueError(
                "node_name is empty: pass the node's name (in a DaemonSet, from the "
                "downward API: env NODE_NAME from fieldRef spec.nodeName)"
            )
        if watch_timeout_s < 1:
            raise ValueError(f"watch_timeout_s must be at least 1, got {watch_timeout_s}")
        self.node_name = node_name
        self._api = client.CoreV1Api(api_client)
        self._selector = f"spec.nodeName={node_name}"
        self._clock = clock
        self._watch_timeout_s = int(watch_timeout_s)
        self._request_timeout_s = request_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s

        self._lock = threading.Lock()
        self._pods: dict[str, PodInfo] = {}
        self._by_container: dict[str, str] = {}  # container ID -> pod uid
        self._by_name: dict[tuple[str, str], str] = {}  # (namespace, name) -> pod uid
        self._errors: Counter[str] = Counter()
        self._stale = True  # nothing known until the first list
        self._in_outage = False
        self._connected = False  # a watch connection is open
        self._last_good: float | None = None
        self._lists = 0
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PodWatch:
        """Start listing and watching on a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("PodWatch.start() called twice")
        self._thread = threading.Thread(
            target=self._run, name=f"podwatch-{self.node_name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread; the open watch connection is shut down to unblock it."""
        self._stopping.set()
        deadline = time.monotonic() + timeout_s
        while self._thread is not None and self._thread.is_alive():
            # Again until it ends: a watch that was just connecting has no socket yet.
            current = self._watch
            if current is not None:
                current.stop()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("pod watch thread for node %s did not stop in time", self.node_name)
                break
            self._thread.join(min(0.05, remaining))

    @property
    def running(self) -> bool:
        """True while the list-and-watch thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def wait_synced(self, timeout_s: float) -> bool:
        """True once a first list has succeeded (within timeout_s)."""
        return self._synced.wait(timeout_s)

    # ------------------------------------------------------------------ queries
    def pod(self, uid: str) -> PodInfo | None:
        with self._lock:
            return self._pods.get(uid)

    def pod_by_name(self, namespace: str, name: str) -> PodInfo | None:
        with self._lock:
            uid = self._by_name.get((namespace, name))
            return self._pods.get(uid) if uid else None

    def container_name(self, container_id: str) -> str | None:
        with self._lock:
            uid = self._by_container.get(container_id)
            pod = self._pods.get(uid) if uid else None
            return pod.containers.get(container_id) if pod else None

    def pods(self) -> list[PodInfo]:
        with self._lock:
            return list(self._pods.values())

    @property
    def stale(self) -> bool:
        """True while the last list or watch failed (the last known pods are served)."""
        with self._lock:
            return self._stale

    def age_seconds(self) -> float:
        """0 while a watch is connected; else seconds since the last successful list,
        watch event or watch end; inf before the first list."""
        with self._lock:
            last, connected = self._last_good, self._connected
        if connected:
            return 0.0
        return math.inf if last is None else max(0.0, self._clock() - last)

    @property
    def errors(self) -> dict[str, int]:
        """Failures since start, by reason (UNREACHABLE, WATCH_EXPIRED, http_<code>, ...)."""
        with self._lock:
            return dict(self._errors)

    @property
    def list_count(self) -> int:
        """Successful lists since start (1 + relists)."""
        with self._lock:
            return self._lists

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        resource_version: str | None = None
        failures = 0
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list()
                resource_version = self._watch_once(resource_version)
                failures = 0
            except ApiException as error:
                if self._stopping.is_set():
                    break
                if error.status == 410:
                    # Our resourceVersion was compacted away: relist at once.
                    self._count(WATCH_EXPIRED)
                    resource_version = None
                    continue
                failures += 1
                self._fail(f"http_{error.status}", error)
            except (ValueError, KeyError, TypeError) as error:
                if self._stopping.is_set():
                    break
                failures += 1
                resource_version = None
                self._fail(BAD_RESPONSE, error)
            except Exception as error:  # connection refused, reset, timeouts, ...
                if self._stopping.is_set():
                    break  # stop() shut the watch's socket down under us
                failures += 1
                self._fail(_classify(error), error)
            if failures:
                delay = min(self._backoff_max_s, self._backoff_initial_s * 2 ** (failures - 1))
                self._stopping.wait(delay)

    def _list(self) -> str:
        response = self._api.list_pod_for_all_namespaces(
            field_selector=self._selector,
            _preload_content=False,
            _request_timeout=self._request_timeout_s,
        )
        try:
            body = json.loads(response.data)
        finally:
            response.release_conn()
        items = body.get("items") or ()
        pods = [info for info in map(pod_info_from_json, items) if info]
        resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            self._pods = {info.uid: info for info in pods}
            self._reindex()
            self._lists += 1
            if len(items) > len(pods):
                self._errors[BAD_RESPONSE] += len(items) - len(pods)
            self._mark_good()
        self._synced.set()
        return resource_version

    def _watch_once(self, resource_version: str) -> str | None:
        """One watch connection, until the server's timeout; returns where to resume."""
        stream = watch.Watch()
        self._watch = stream
        if self._stopping.is_set():
            return resource_version
        try:
            for event in stream.stream(
                self._open_watch,
                field_selector=self._selector,
                resource_version=resource_version or None,
                timeout_seconds=self._watch_timeout_s,
                allow_watch_bookmarks=True,
                _request_timeout=(self._request_timeout_s, self._watch_timeout_s + 30),
            ):
                resource_version = self._apply(event) or resource_version
        finally:
            self._watch = None
            with self._lock:
                if self._connected:
                    # We were current up to the moment the connection ended.
                    self._last_good = self._clock()
                self._connected = False
        with self._lock:
            self._mark_good()
        # An empty resourceVersion would make the next watch replay everything: relist.
        return resource_version or None

    def _open_watch(self, **kwargs):
        # Deliberately no return annotation or docstring: watch.Watch then finds no
        # model type and hands us each event's object as raw JSON. The client raises
        # on a non-2xx answer, so returning means the watch is connected: our pods
        # are current until it ends, however quiet the node.
        response = self._api.list_pod_for_all_namespaces(**kwargs)
        with self._lock:
            self._connected = True
            self._mark_good()
        return response

    def _apply(self, event: Mapping[str, Any]) -> str | None:
        kind = event["type"]
        obj = event["raw_object"]
        resource_version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            return resource_version
        info = pod_info_from_json(obj)
        with self._lock:
            if info is not None:
                if kind == "DELETED":
                    self._pods.pop(info.uid, None)
                elif kind in ("ADDED", "MODIFIED"):
                    self._pods[info.uid] = info
                self._reindex()
            else:
                self._errors[BAD_RESPONSE] += 1
            self._mark_good()
        return resource_version

    # ------------------------------------------------------------------ state (lock held)
    def _reindex(self) -> None:
        self._by_container = {cid: uid for uid, p in self._pods.items() for cid in p.containers}
        self._by_name = {(p.namespace, p.name): uid for uid, p in self._pods.items()}

    def _mark_good(self) -> None:
        if self._in_outage:
            log.info("pod watch for node %s is back in sync", self.node_name)
        self._in_outage = False
        self._stale = False
        self._last_good = self._clock()

    def _count(self, reason: str) -> None:
        with self._lock:
            self._errors[reason] += 1

    def _fail(self, reason: str, error: BaseException) -> None:
        self._watch = None
        with self._lock:
            self._errors[reason] += 1
            self._stale = True
            first = not self._in_outage
            self._in_outage = True
        # Warn once per outage; the retries while it lasts go to debug.
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "pod watch for node %s failed (%s): %s; keeping the last known pods and retrying",
            self.node_name,
            reason,
            error,
        )


def _classify(error: BaseException) -> str:
    # urllib3 wraps refused or reset connections in MaxRetryError / ProtocolError.
    if isinstance(error, OSError) or type(error).__module__.startswith("urllib3"):
        return UNREACHABLE
    return UNEXPECTED
