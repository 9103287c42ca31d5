"""The unix socket the in-job probes report to, and who sent each report.

The sender is whoever the kernel says connected (SO_PEERCRED, captured at connect()
and unforgeable by the client), never a field of the message. Its pid goes through
`resolve_pid` (the exporter passes the same /proc/<pid>/cgroup -> pod path it uses for
GPU processes). The kernel gives the pid as seen from the exporter's pid namespace:
run the exporter with hostPID: true (and the host's /proc), otherwise pids of other
pods' processes read as 0 and their reports count as `unattributed`.

The pod is resolved once per connection, at the first report that resolves, and kept:
a process's last report, sent as it exits, is still attributed after its /proc entry
is gone.

A misbehaving client cannot exhaust memory or CPU: connections are capped (in all
and per pid), each connection buffers at most one frame, frames over the size limit
close the connection, each connection has a token bucket of reports per second, a
connection whose frames are rejected many times in a row is closed, and one that sends
no whole frame for `idle_timeout_s` is closed. Everything dropped is counted by reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.attribution import PodRef
from exporter.collective.aggregator import CollectiveAggregator
from gpuledger import probe_wire as wire

log = logging.getLogger(__name__)

_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid, uid_t uid, gid_t gid
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its terminating NUL


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int = 256
    max_connections_per_pid: int = 8
    max_payload_bytes: int = wire.MAX_PAYLOAD_BYTES
    reports_per_second: float = 4.0  # a probe sends one a second by default
    report_burst: int = 16
    max_rejects_per_connection: int = 64  # in a row: then the connection is closed
    idle_timeout_s: float = 120.0
    recv_bytes: int = 65536


@dataclass
class _Connection:
    sock: socket.socket
    pid: int
    uid: int
    tokens: float
    refilled: float
    last_frame: float
    buffer: bytearray = field(default_factory=bytearray)
    pod: PodRef | None = None
    rejects: int = 0
    instances: set[str] = field(default_factory=set)


class CollectiveServer:
    """Listens on `socket_path`; feeds accepted reports to `aggregator`."""

    def __init__(
        self,
        socket_path: str,
        resolve_pid: Callable[[int], PodRef | None],
        node: str,
        limits: ServerLimits | None = None,
        aggregator: CollectiveAggregator | None = None,
        socket_mode: int = 0o666,
    ) -> None:
        if len(os.fsencode(socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(
                f"probe socket path {socket_path!r} is longer than {_MAX_SOCKET_PATH} bytes; "
                "unix sockets cannot have it: choose a shorter path"
            )
        self.socket_path = socket_path
        self.node = node
        self.limits = limits or ServerLimits()
        self.aggregator = aggregator or CollectiveAggregator()
        self._resolve_pid = resolve_pid
        self._socket_mode = socket_mode
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._listener_inode = 0
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._connections: dict[int, _Connection] = {}  # fileno -> connection
        self._per_pid: dict[int, int] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._resolve_errors_logged = False

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is not None:
            return
        self._bind()
        self._selector = selectors.DefaultSelector()
        assert self._listener is not None
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._serve, name="gpuledger-collective-server", daemon=True
        )
        self._thread.start()
        log.info("collective probe socket listening", extra={"socket": self.socket_path})

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        assert self._wake_w is not None
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        self._thread = None
        for conn in list(self._connections.values()):
            self._close(conn)
        assert self._selector is not None
        self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        self._unlink_own_socket()

    def __enter__(self) -> CollectiveServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _bind(self) -> None:
        path = self.socket_path
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise RuntimeError(
                    f"{path} exists and is not a socket; remove it or choose another "
                    "probe socket path"
                )
            os.unlink(path)  # left by an exporter that did not stop cleanly
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(path)
            # Probes run as any user in any pod; who they are comes from the kernel.
            os.chmod(path, self._socket_mode)
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        self._listener_inode = os.stat(path).st_ino

    def _unlink_own_socket(self) -> None:
        try:
            if os.stat(self.socket_path).st_ino == self._listener_inode:
                os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------ loop
    def _serve(self) -> None:
        assert self._selector is not None
        while not self._stopping.is_set():
            try:
                events = self._selector.select(timeout=1.0)
                for key, _mask in events:
                    if key.data == "listen":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        self._read(key.data)
                self._close_idle()
            except Exception:
                # One bad connection must not take the listener down.
                log.exception("collective probe server loop error; continuing")

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(64)

    def _accept(self) -> None:
        assert self._listener is not None and self._selector is not None
        for _ in range(64):  # bounded work per wake-up
            try:
                sock, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("probe socket accept failed: %s", e)
                return
            try:
                pid, uid, _gid = _UCRED.unpack(
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
                )
            except OSError:
                sock.close()
                continue
            limits = self.limits
            if (
                len(self._connections) >= limits.max_connections
                or self._per_pid.get(pid, 0) >= limits.max_connections_per_pid
            ):
                self.aggregator.reject("too_many_connections")
                sock.close()
                continue
            sock.setblocking(False)
            now = time.monotonic()
            conn = _Connection(sock, pid, uid, float(limits.report_burst), now, now)
            self._connections[sock.fileno()] = conn
            self._per_pid[pid] = self._per_pid.get(pid, 0) + 1
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self.aggregator.set_connections(len(self._connections))

    def _read(self, conn: _Connection) -> None:
        room = wire.HEADER.size + self.limits.max_payload_bytes - len(conn.buffer)
        try:
            data = conn.sock.recv(min(self.limits.recv_bytes, room))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.buffer += data
        self._frames(conn)

    def _frames(self, conn: _Connection) -> None:
        header_size = wire.HEADER.size
        buffer = conn.buffer
        while len(buffer) >= header_size:
            try:
                version, length = wire.decode_header(
                    bytes(buffer[:header_size]), self.limits.max_payload_bytes
                )
            except wire.WireError as e:
                # The stream cannot be re-synchronised after a bad header.
                self.aggregator.reject(e.reason)
                self._close(conn)
                return
            if len(buffer) < header_size + length:
                return
            payload = bytes(buffer[header_size : header_size + length])
            del buffer[: header_size + length]
            now = time.monotonic()
            conn.last_frame = now
            if self._handle(conn, version, payload, now):
                conn.rejects = 0
            else:
                conn.rejects += 1
                if conn.rejects >= self.limits.max_rejects_per_connection:
                    self._close(conn)
                    return

    def _handle(self, conn: _Connection, version: int, payload: bytes, now: float) -> bool:
        """True if the report was accepted; a rejected one is counted by its reason."""
        reason = self._check_and_ingest(conn, version, payload, now)
        if reason is None:
            return True
        if reason != "ingest":  # the aggregator counts the reasons it finds itself
            self.aggregator.reject(reason)
        return False

    def _check_and_ingest(
        self, conn: _Connection, version: int, payload: bytes, now: float
    ) -> str | None:
        limits = self.limits
        conn.tokens = min(
            float(limits.report_burst),
            conn.tokens + (now - conn.refilled) * limits.reports_per_second,
        )
        conn.refilled = now
        if conn.tokens < 1:
            return "rate_limited"
        conn.tokens -= 1
        if version != wire.VERSION:
            return "unsupported_version"
        try:
            report = wire.decode_payload(payload)
        except wire.WireError as e:
            return e.reason
        if conn.pod is None:
            conn.pod = self._resolve(conn.pid)
            if conn.pod is None:
                return "unattributed"
        if self.aggregator.ingest(conn.pid, conn.pod, report) is not None:
            return "ingest"
        conn.instances.add(report.instance)
        return None

    def _resolve(self, pid: int) -> PodRef | None:
        if pid <= 0:  # the sender is in a pid namespace the exporter cannot see
            return None
        try:
            return self._resolve_pid(pid)
        except Exception:
            if not self._resolve_errors_logged:
                self._resolve_errors_logged = True
                log.warning("resolving a probe's pid to a pod failed", exc_info=True)
            return None

    def _close_idle(self) -> None:
        deadline = time.monotonic() - self.limits.idle_timeout_s
        for conn in [c for c in self._connections.values() if c.last_frame < deadline]:
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        fileno = conn.sock.fileno()
        if self._connections.pop(fileno, None) is None:
            return
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        conn.sock.close()
        left = self._per_pid.get(conn.pid, 1) - 1
        if left:
            self._per_pid[conn.pid] = left
        else:
            self._per_pid.pop(conn.pid, None)
        self.aggregator.connection_closed(conn.pid, conn.instances)
        self.aggregator.set_connections(len(self._connections))
