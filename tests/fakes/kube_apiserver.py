"""A fake Kubernetes API server: an HTTP server that speaks Kubernetes JSON.

The real `kubernetes` Python client (CoreV1Api, BatchV1Api, CustomObjectsApi,
watch.Watch, even DynamicClient through the discovery endpoints) runs unchanged
against it. Only reads are served over HTTP; tests change the cluster through
Python methods, which notify open watches like the real server does.

    from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod

    with FakeKubeApiServer() as api:
        api.add(make_pod("trainer-0", namespace="team-a", node="gpu-1",
                         containers={"trainer": "c0ffee..."}))
        core = kubernetes.client.CoreV1Api(api.api_client())
        core.list_pod_for_all_namespaces(field_selector="spec.nodeName=gpu-1")
        api.modify(obj); api.delete("v1", "Pod", "trainer-0", namespace="team-a")
        api.compact()          # watches from an older resourceVersion get 410 Gone
        api.stop(); api.start()  # API server down, then back on the same port
        api.fail_with(503)     # every request answers 503 until fail_with(None)

The store is generic: objects are keyed by (group, version, plural, namespace, name);
cluster-scoped objects have namespace "". Resources known from the start (add more
with `register_resource`):

    core v1: pods, namespaces, nodes, services, configmaps, events
    batch/v1 jobs, apps/v1 deployments, replicasets, statefulsets, daemonsets,
    jobset.x-k8s.io/v1alpha2 jobsets, kubeflow.org/v1 pytorchjobs,
    ray.io/v1 rayjobs and rayclusters, kueue.x-k8s.io/v1beta1 workloads,
    argoproj.io/v1alpha1 workflows

HTTP paths: /api/v1/{plural}[/{name}], /api/v1/namespaces/{ns}/{plural}[/{name}],
/apis/{group}/{version}/[namespaces/{ns}/]{plural}[/{name}], discovery (/api, /apis,
/api/v1, /apis/{group}/{version}, /version). Query parameters: fieldSelector (any
dotted path; =, ==, !=), labelSelector (=, ==, !=, in, notin, exists, !exists),
limit and continue, resourceVersion, and watch=true with timeoutSeconds: newline-
delimited events over chunked HTTP (ADDED, MODIFIED, DELETED; objects that start or
stop matching the selectors arrive as ADDED or DELETED; an ERROR event with code 410
"Expired" for a resourceVersion older than the last `compact()`). Every object gets
metadata.uid, resourceVersion (one counter for the whole store, as in etcd) and
creationTimestamp when added. `requests` records (method, path, query) of each call.
"""

from __future__ import annotations

import contextlib
import copy
import json
import queue
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Key = tuple[str, str, str, str, str]  # group, version, plural, namespace, name


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


DEFAULT_RESOURCES = (
    Resource("", "v1", "pods", "Pod"),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False),
    Resource("", "v1", "nodes", "Node", namespaced=False),
    Resource("", "v1", "services", "Service"),
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "events", "Event"),
    Resource("batch", "v1", "jobs", "Job"),
    Resource("apps", "v1", "deployments", "Deployment"),
    Resource("apps", "v1", "replicasets", "ReplicaSet"),
    Resource("apps", "v1", "statefulsets", "StatefulSet"),
    Resource("apps", "v1", "daemonsets", "DaemonSet"),
    Resource("jobset.x-k8s.io", "v1alpha2", "jobsets", "JobSet"),
    Resource("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
    Resource("ray.io", "v1", "rayjobs", "RayJob"),
    Resource("ray.io", "v1", "rayclusters", "RayCluster"),
    Resource("kueue.x-k8s.io", "v1beta1", "workloads", "Workload"),
    Resource("argoproj.io", "v1alpha1", "workflows", "Workflow"),
)


class ApiError(Exception):
    """An error answered as a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


# ---------------------------------------------------------------- selectors
def _lookup(obj: Mapping[str, Any], dotted: str) -> str:
    value: Any = obj
    for part in dotted.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(text: str) -> list[tuple[str, str, str]]:
    """`a.b=x,c!=y` -> [(path, op, value)], op in {"=", "!="}."""
    terms = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        match = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)", term)
        if match is None:
            raise ApiError(400, "BadRequest", f"invalid field selector term {term!r}")
        path, op, value = match.groups()
        terms.append((path, "!=" if op == "!=" else "=", value))
    return terms


def parse_label_selector(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """Equality, set-based and existence terms -> [(key, op, values)]."""
    terms = []
    for term in filter(None, (t.strip() for t in re.split(r",(?![^()]*\))", text))):
        if match := re.fullmatch(r"([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)", term):
            key, op, values = match.groups()
            terms.append((key, op, tuple(v.strip() for v in values.split(",") if v.strip())))
        elif match := re.fullmatch(r"([\w./-]+)\s*(==|!=|=)\s*([\w./-]*)", term):
            key, op, value = match.groups()
            terms.append((key, "!=" if op == "!=" else "=", (value,)))
        elif match := re.fullmatch(r"(!?)([\w./-]+)", term):
            neg, key = match.groups()
            terms.append((key, "!exists" if neg else "exists", ()))
        else:
            raise ApiError(400, "BadRequest", f"invalid label selector term {term!r}")
    return terms


def _fields_match(obj: Mapping[str, Any], terms: list[tuple[str, str, str]]) -> bool:
    return all((_lookup(obj, path) == value) == (op == "=") for path, op, value in terms)


def _labels_match(obj: Mapping[str, Any], terms: list[tuple[str, str, tuple[str, ...]]]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(_label_term(labels, *term) for term in terms)


def _label_term(labels: Mapping[str, str], key: str, op: str, values: tuple[str, ...]) -> bool:
    present, value = key in labels, labels.get(key)
    if op == "=":
        return present and value == values[0]
    if op == "!=":
        return not present or value != values[0]
    if op == "in":
        return present and value in values
    if op == "notin":
        return not present or value not in values
    return present if op == "exists" else not present


@dataclass
class _Query:
    resource: Resource
    namespace: str | None  # None: all namespaces
    fields: list[tuple[str, str, str]]
    labels: list[tuple[str, str, tuple[str, ...]]]

    def matches(self, obj: Mapping[str, Any] | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return _fields_match(obj, self.fields) and _labels_match(obj, self.labels)


@dataclass
class _Change:
    resource_version: int
    resource: Resource
    old: dict[str, Any] | None
    new: dict[str, Any] | None  # None: deleted (then `old` is the final object)


class _Subscriber:
    def __init__(self, query: _Query) -> None:
        self.query = query
        self.changes: queue.Queue[_Change] = queue.Queue()


# ---------------------------------------------------------------- the server
class FakeKubeApiServer:
    """A Kubernetes API server on 127.0.0.1 (free port) with an in-memory store."""

    def __init__(self, resources: Iterable[Resource] = DEFAULT_RESOURCES) -> None:
        self._lock = threading.RLock()
        self._resources: dict[tuple[str, str, str], Resource] = {}
        self._kinds: dict[tuple[str, str], Resource] = {}  # (apiVersion, kind) -> Resource
        for resource in resources:
            self.register_resource(resource)
        self._objects: dict[Key, dict[str, Any]] = {}
        self._history: list[_Change] = []
        self._resource_version = 0
        self._compacted = 0  # watches from an older resourceVersion get 410
        self._subscribers: list[_Subscriber] = []
        self._failure: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()
        self.port = 0
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []

    # ---------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeKubeApiServer is not started")
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeKubeApiServer:
        """Start serving (again, on the same port after `stop`)."""
        if self._server is not None:
            return self
        self._stopped.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _make_handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """API server down: stop listening and cut every open connection and watch."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopped.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeKubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` pointed at this server."""
        import kubernetes

        configuration = kubernetes.client.Configuration(host=self.url)
        return kubernetes.client.ApiClient(configuration)

    def fail_with(self, status: int | None) -> None:
        """Answer every request with this HTTP status (a Status body) until None."""
        self._failure = status

    # ---------------------------------------------------------------- the store
    def register_resource(self, resource: Resource) -> None:
        self._resources[(resource.group, resource.version, resource.plural)] = resource
        self._kinds[(resource.api_version, resource.kind)] = resource

    def resource_for(self, api_version: str, kind: str) -> Resource:
        try:
            return self._kinds[(api_version, kind)]
        except KeyError:
            raise KeyError(
                f"unknown resource {api_version} {kind}: call register_resource(Resource("
                "group, version, plural, kind, namespaced)) first"
            ) from None

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._resource_version

    def add(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object (apiVersion, kind, metadata.name required); returns it stored."""
        resource, key, stored = self._prepare(obj)
        with self._lock:
            if key in self._objects:
                raise KeyError(f"{resource.kind} {key[3]}/{key[4]} already exists; use modify()")
            meta = stored["metadata"]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            self._commit(resource, key, None, stored)
            return copy.deepcopy(stored)

    def modify(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Replace an existing object (uid and creationTimestamp are kept)."""
        resource, key, stored = self._prepare(obj)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise KeyError(f"{resource.kind} {key[3]}/{key[4]} does not exist; use add()")
            for field in ("uid", "creationTimestamp"):
                stored["metadata"][field] = old["metadata"][field]
            self._commit(resource, key, old, stored)
            return copy.deepcopy(stored)

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "") -> None:
        resource = self.resource_for(api_version, kind)
        key = (resource.group, resource.version, resource.plural, namespace, name)
        with self._lock:
            old = self._objects.get(key)
            if old is None:
                raise KeyError(f"{kind} {namespace}/{name} does not exist")
            self._commit(resource, key, old, None)

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        resource = self.resource_for(api_version, kind)
        key = (resource.group, resource.version, resource.plural, namespace, name)
        with self._lock:
            return copy.deepcopy(self._objects[key])

    def compact(self) -> None:
        """Forget the history: a watch from any older resourceVersion gets 410 Gone."""
        with self._lock:
            self._history.clear()
            self._compacted = self._resource_version

    def _prepare(self, obj: Mapping[str, Any]) -> tuple[Resource, Key, dict[str, Any]]:
        stored = copy.deepcopy(dict(obj))
        resource = self.resource_for(stored.get("apiVersion", ""), stored.get("kind", ""))
        meta = stored.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError(f"{resource.kind} needs metadata.name")
        namespace = meta.get("namespace", "") if resource.namespaced else ""
        if resource.namespaced and not namespace:
            raise ValueError(f"{resource.kind} {meta['name']} needs metadata.namespace")
        if not resource.namespaced:
            meta.pop("namespace", None)
        key = (resource.group, resource.version, resource.plural, namespace, meta["name"])
        return resource, key, stored

    def _commit(
        self, resource: Resource, key: Key, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        self._resource_version += 1
        if new is not None:
            new["metadata"]["resourceVersion"] = str(self._resource_version)
            self._objects[key] = new
        else:
            self._objects.pop(key)
            old = copy.deepcopy(old)
            old["metadata"]["resourceVersion"] = str(self._resource_version)
        change = _Change(self._resource_version, resource, old, new)
        self._history.append(change)
        for subscriber in self._subscribers:
            if subscriber.query.resource == resource:
                subscriber.changes.put(change)

    # ---------------------------------------------------------------- serving
    def _route(self, path: str) -> tuple[Resource, str | None, str | None]:
        """A resource path -> (resource, namespace or None for all, name or None)."""
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if len(rest) not in (1, 2):
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource {path}"
            )
        resource = self._resources.get((group, version, rest[0]))
        if resource is None:
            raise ApiError(
                404, "NotFound", f"the server could not find the requested resource ({rest[0]})"
            )
        if namespace is not None and not resource.namespaced:
            raise ApiError(404, "NotFound", f"{resource.plural} are not namespaced")
        return resource, namespace, rest[1] if len(rest) == 2 else None

    def _discovery(self, path: str) -> dict[str, Any] | None:
        parts = [p for p in path.split("/") if p]
        if parts == ["version"]:
            return {
                "major": "1",
                "minor": "31",
                "gitVersion": "v1.31.0-fake",
                "platform": "linux/amd64",
            }
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            groups: dict[str, list[str]] = {}
            for group, version, _ in self._resources:
                if group and version not in groups.setdefault(group, []):
                    groups[group].append(version)
            return {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": group,
                        "versions": [
                            {"groupVersion": f"{group}/{v}", "version": v} for v in versions
                        ],
                        "preferredVersion": {
                            "groupVersion": f"{group}/{versions[0]}",
                            "version": versions[0],
                        },
                    }
                    for group, versions in sorted(groups.items())
                ],
            }
        group_version = None
        if parts == ["api", "v1"]:
            group_version = ("", "v1")
        elif len(parts) == 3 and parts[0] == "apis":
            group_version = (parts[1], parts[2])
        if group_version is None:
            return None
        resources = [r for r in self._resources.values() if (r.group, r.version) == group_version]
        if not resources:
            raise ApiError(404, "NotFound", f"no resources in {'/'.join(group_version)}")
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": resources[0].api_version,
            "resources": [
                {
                    "name": r.plural,
                    "singularName": r.kind.lower(),
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "list", "watch"],
                }
                for r in resources
            ],
        }

    def _list(self, query: _Query, params: Mapping[str, list[str]]) -> dict[str, Any]:
        with self._lock:
            items = [
                copy.deepcopy(obj)
                for key, obj in sorted(self._objects.items())
                if key[:3] == (query.resource.group, query.resource.version, query.resource.plural)
                and query.matches(obj)
            ]
            resource_version = self._resource_version
        metadata: dict[str, Any] = {"resourceVersion": str(resource_version)}
        limit = _int_param(params, "limit", 0)
        offset = _int_param(params, "continue", 0)
        if limit > 0:
            if offset + limit < len(items):
                metadata["continue"] = str(offset + limit)
            items = items[offset : offset + limit]
        return {
            "kind": f"{query.resource.kind}List",
            "apiVersion": query.resource.api_version,
            "metadata": metadata,
            "items": items,
        }

    def _subscribe(self, query: _Query, since: str | None) -> tuple[_Subscriber, list[dict]]:
        """Register a watch; returns it with the events to send before live ones."""
        subscriber = _Subscriber(query)
        with self._lock:
            initial: list[dict[str, Any]] = []
            if since in (None, "", "0"):
                for key, obj in sorted(self._objects.items()):
                    if key[:3] == (
                        query.resource.group,
                        query.resource.version,
                        query.resource.plural,
                    ) and query.matches(obj):
                        initial.append({"type": "ADDED", "object": copy.deepcopy(obj)})
            else:
                try:
                    start = int(since)
                except ValueError:
                    raise ApiError(
                        400, "BadRequest", f"invalid resourceVersion {since!r}"
                    ) from None
                if start < self._compacted:
                    expired = ApiError(
                        410, "Expired", f"too old resource version: {start} ({self._compacted})"
                    )
                    return subscriber, [{"type": "ERROR", "object": expired.status()}]
                for change in self._history:
                    if change.resource_version > start and change.resource == query.resource:
                        initial.extend(_events_for(change, query))
            self._subscribers.append(subscriber)
        return subscriber, initial

    def _unsubscribe(self, subscriber: _Subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                self._subscribers.remove(subscriber)


def _events_for(change: _Change, query: _Query) -> list[dict[str, Any]]:
    """What a watch with `query` sees of one change (moves in/out of the selector)."""
    was, now = query.matches(change.old), query.matches(change.new)
    if change.new is None:
        return [{"type": "DELETED", "object": copy.deepcopy(change.old)}] if was else []
    if was and now:
        kind = "MODIFIED"
    elif now:
        kind = "ADDED"
    elif was:
        return [{"type": "DELETED", "object": copy.deepcopy(change.new)}]
    else:
        return []
    return [{"type": kind, "object": copy.deepcopy(change.new)}]


def _int_param(params: Mapping[str, list[str]], name: str, default: int) -> int:
    values = params.get(name)
    if not values or values[0] == "":
        return default
    try:
        return int(values[0])
    except ValueError:
        raise ApiError(400, "BadRequest", f"{name} must be an integer, got {values[0]!r}") from None


def _make_handler(api: FakeKubeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            with api._lock:
                api._connections.add(self.connection)

        def finish(self) -> None:
            with api._lock:
                api._connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet: tests read api.requests instead

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            params = parse_qs(url.query, keep_blank_values=True)
            api.requests.append(("GET", url.path, params))
            try:
                if api._failure is not None:
                    status = HTTPStatus(api._failure)
                    raise ApiError(status.value, status.phrase.replace(" ", ""), "injected failure")
                discovery = api._discovery(url.path)
                if discovery is not None:
                    self._send_json(200, discovery)
                    return
                resource, namespace, name = api._route(url.path)
                query = _Query(
                    resource,
                    namespace,
                    parse_field_selector(_first(params, "fieldSelector")),
                    parse_label_selector(_first(params, "labelSelector")),
                )
                if name is not None:
                    self._send_json(200, self._get(resource, namespace or "", name))
                elif _first(params, "watch") in ("true", "1"):
                    self._watch(query, params)
                else:
                    self._send_json(200, api._list(query, params))
            except ApiError as error:
                self._send_json(error.code, error.status())

        def do_POST(self) -> None:
            self._read_only()

        do_PUT = do_PATCH = do_DELETE = do_POST

        def _read_only(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            api.requests.append((self.command, urlsplit(self.path).path, {}))
            error = ApiError(
                405,
                "MethodNotAllowed",
                "this fake API server is read-only over HTTP; change objects with "
                "FakeKubeApiServer.add/modify/delete in the test",
            )
            self._send_json(405, error.status())

        def _get(self, resource: Resource, namespace: str, name: str) -> dict[str, Any]:
            key = (resource.group, resource.version, resource.plural, namespace, name)
            with api._lock:
                obj = api._objects.get(key)
                if obj is None:
                    raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
                return copy.deepcopy(obj)

        def _send_json(self, code: int, body: Mapping[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _watch(self, query: _Query, params: Mapping[str, list[str]]) -> None:
            timeout_s = _int_param(params, "timeoutSeconds", 1800)
            subscriber, initial = api._subscribe(query, _first(params, "resourceVersion") or None)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            deadline = threading.Event()
            timer = threading.Timer(timeout_s, deadline.set)
            timer.daemon = True
            timer.start()
            try:
                for event in initial:
                    self._chunk(event)
                if initial and initial[-1]["type"] == "ERROR":
                    deadline.set()  # the real server ends the watch after the error
                while not deadline.is_set() and not api._stopped.is_set():
                    try:
                        change = subscriber.changes.get(timeout=0.05)
                    except queue.Empty:
                        continue
                    for event in _events_for(change, query):
                        self._chunk(event)
                if not api._stopped.is_set():
                    self._end()
            except OSError:
                self.close_connection = True  # the client went away
            finally:
                timer.cancel()
                api._unsubscribe(subscriber)

        def _chunk(self, event: Mapping[str, Any]) -> None:
            data = json.dumps(event).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _end(self) -> None:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


# ---------------------------------------------------------------- object builders
def make_pod(
    name: str,
    namespace: str = "default",
    *,
    node: str = "",
    uid: str | None = None,
    containers: Mapping[str, str] | None = None,
    runtime: str = "containerd",
    labels: Mapping[str, str] | None = None,
    owner: Mapping[str, Any] | None = None,
    phase: str = "Running",
) -> dict[str, Any]:
    """A pod as the API server returns it: `containers` maps name -> runtime ID
    (64 hex digits), reported in status.containerStatuses as "<runtime>://<id>"."""
    containers = dict(containers or {})
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if uid:
        metadata["uid"] = uid
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "containers": [{"name": c, "image": "example.com/train:1"} for c in containers],
        },
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": c,
                    "containerID": f"{runtime}://{cid}" if cid else None,
                    "image": "example.com/train:1",
                    "imageID": "example.com/train@sha256:" + "0" * 64,
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}},
                }
                for c, cid in containers.items()
            ],
        },
    }


def make_object(
    api_version: str,
    kind: str,
    name: str,
    namespace: str = "",
    *,
    uid: str | None = None,
    labels: Mapping[str, str] | None = None,
    owner: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Any object (Job, JobSet, PyTorchJob, Workload, ...), optionally owned by another:
    `owner` is an ownerReference such as owner_reference(job_obj)."""
    metadata: dict[str, Any] = {"name": name, "labels": dict(labels or {})}
    if namespace:
        metadata["namespace"] = namespace
    if uid:
        metadata["uid"] = uid
    if owner:
        metadata["ownerReferences"] = [dict(owner)]
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "metadata": metadata}
    # Left out unless given: the client's typed models reject a partial spec (a Job's
    # spec needs its template), and an absent one is valid.
    if spec is not None:
        obj["spec"] = dict(spec)
    if status is not None:
        obj["status"] = dict(status)
    return obj


def owner_reference(obj: Mapping[str, Any], controller: bool = True) -> dict[str, Any]:
    """The ownerReference that points at a stored object (it needs its uid)."""
    meta = obj["metadata"]
    if not meta.get("uid"):
        raise ValueError("the owner has no uid yet: pass the object returned by add()")
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }
