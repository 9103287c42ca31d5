"""The probe socket, for real: unix sockets, SO_PEERCRED, limits."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from exporter.attribution import PodRef
from exporter.collective.server import CollectiveServer, ServerLimits
from gpuledger import probe_wire as wire

POD_A = PodRef("ml", "train-a", "main", "uid-a")
POD_B = PodRef("ml", "train-b", "main", "uid-b")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def frame(nbytes: int = 1000, seq: int = 0, instance: str = "aa", uptime: float = 10.0) -> bytes:
    return wire.encode(
        wire.Report(
            instance=instance,
            seq=seq,
            uptime_s=uptime,
            ops={"all_reduce": wire.OpReport(nbytes, float(nbytes), 0.5, 1, 2)},
        )
    )


def wait_until(fn, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(5)
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def total_bytes(server: CollectiveServer, pod: PodRef = POD_A) -> int:
    return sum(o.bytes for o in server.aggregator.snapshot().operations if o.pod == pod)


def rejected(server: CollectiveServer) -> dict[str, int]:
    return {k: v for k, v in server.aggregator.snapshot().rejected.items() if v}


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "probe.sock")


@pytest.fixture
def pods():
    return {os.getpid(): POD_A}


@pytest.fixture
def server(path, pods):
    with CollectiveServer(path, pods.get, "node-a") as s:
        yield s


def test_reports_are_attributed_by_the_kernels_peer_pid(server, path, pods):
    # A second process with its own pid; nothing in the message says who it is.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import socket, sys
                from gpuledger import probe_wire as wire
                report = wire.Report(instance="bb", seq=0, uptime_s=1.0,
                    ops={{"broadcast": wire.OpReport(777, 777.0, 0.1, 1, 2)}})
                sys.stdin.readline()
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect({path!r})
                s.sendall(wire.encode(report))
                s.close()
                """
            ),
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        text=True,
    )
    pods[child.pid] = POD_B
    child.communicate("go\n", timeout=30)
    with connect(path) as mine:
        mine.sendall(frame(1000))
        wait_until(lambda: total_bytes(server, POD_A) == 1000 and total_bytes(server, POD_B))
    assert total_bytes(server, POD_B) == 777
    assert {(o.pod, o.operation) for o in server.aggregator.snapshot().operations} == {
        (POD_A, "all_reduce"),
        (POD_B, "broadcast"),
    }


def test_an_unknown_sender_is_dropped_until_its_pod_is_known(server, path, pods):
    del pods[os.getpid()]
    with connect(path) as sock:
        sock.sendall(frame(1000, seq=0))
        wait_until(lambda: rejected(server) == {"unattributed": 1})
        pods[os.getpid()] = POD_A  # the pod watch caught up
        sock.sendall(frame(1500, seq=1, uptime=10.5))
        wait_until(lambda: total_bytes(server) == 1500)
        # Resolved once per connection: a process whose /proc entry is gone still counts.
        del pods[os.getpid()]
        sock.sendall(frame(1800, seq=2, uptime=11))
        wait_until(lambda: total_bytes(server) == 1800)


def test_a_failing_resolver_counts_unattributed_and_the_server_goes_on(path):
    def broken(pid):
        raise OSError("no /proc")

    with CollectiveServer(path, broken, "node-a") as server, connect(path) as sock:
        sock.sendall(frame())
        wait_until(lambda: rejected(server) == {"unattributed": 1})
        sock.sendall(frame(seq=1))
        wait_until(lambda: rejected(server) == {"unattributed": 2})


def test_an_oversized_frame_closes_the_connection(server, path):
    with connect(path) as sock:
        sock.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 10**9))
        assert closed_by_server(sock)
    assert rejected(server) == {"oversized": 1}


def test_a_bad_header_closes_the_connection(server, path):
    with connect(path) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert closed_by_server(sock)
    assert rejected(server) == {"malformed": 1}


def test_a_bad_payload_or_version_is_skipped_and_the_connection_stays(server, path):
    junk = b'{"instance": 1}'
    with connect(path) as sock:
        sock.sendall(wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, len(junk)) + junk)
        sock.sendall(wire.HEADER.pack(wire.MAGIC, 99, 0, 2) + b"{}")
        sock.sendall(frame(1000))
        wait_until(lambda: total_bytes(server) == 1000)
    assert rejected(server) == {"malformed": 1, "unsupported_version": 1}


def test_a_frame_split_across_writes_is_reassembled(server, path):
    data = frame(4242)
    with connect(path) as sock:
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
        wait_until(lambda: total_bytes(server) == 4242)


def test_a_truncated_frame_is_discarded_with_its_connection(server, path):
    with connect(path) as sock:
        sock.sendall(frame(1000)[:-3])
    with connect(path) as sock:
        sock.sendall(frame(50, instance="cc"))
        wait_until(lambda: total_bytes(server) == 50)
    assert rejected(server) == {}


def test_a_flooding_sender_is_rate_limited_then_cut_off(path, pods):
    limits = ServerLimits(reports_per_second=0.001, report_burst=3, max_rejects_per_connection=5)
    with CollectiveServer(path, pods.get, "node-a", limits=limits) as server:
        with connect(path) as sock:
            sock.sendall(b"".join(frame(100 * (i + 1), seq=i) for i in range(20)))
            assert closed_by_server(sock)
        assert total_bytes(server) == 300  # the burst's three reports
        assert rejected(server) == {"rate_limited": 5}


def test_connections_are_capped_in_all_and_per_pid(path, pods):
    limits = ServerLimits(max_connections=3, max_connections_per_pid=2)
    with CollectiveServer(path, pods.get, "node-a", limits=limits) as server:
        first, second = connect(path), connect(path)
        third = connect(path)  # same pid as the first two
        assert closed_by_server(third)
        wait_until(lambda: server.aggregator.snapshot().connections == 2)
        assert rejected(server) == {"too_many_connections": 1}
        first.close()
        wait_until(lambda: server.aggregator.snapshot().connections == 1)
        fourth = connect(path)
        fourth.sendall(frame(10))
        wait_until(lambda: total_bytes(server) == 10)
        for sock in (second, third, fourth):
            sock.close()


def test_a_connection_without_whole_frames_is_closed_when_idle(path, pods):
    limits = ServerLimits(idle_timeout_s=0.2)
    with CollectiveServer(path, pods.get, "node-a", limits=limits) as server:
        with connect(path) as sock:
            sock.sendall(frame()[:5])  # a slow drip that never finishes a frame
            assert closed_by_server(sock)
        wait_until(lambda: server.aggregator.snapshot().connections == 0)


def test_start_replaces_a_stale_socket_and_stop_removes_it(path, pods):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # an exporter that died left its socket file
    server = CollectiveServer(path, pods.get, "node-a")
    server.start()
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666)
    server.stop()
    assert not os.path.exists(path)


def test_start_refuses_a_path_that_is_not_a_socket(path, pods):
    with open(path, "w") as f:
        f.write("not a socket")
    with pytest.raises(RuntimeError, match="exists and is not a socket"):
        CollectiveServer(path, pods.get, "node-a").start()
    with open(path) as f:
        assert f.read() == "not a socket"


def test_a_socket_path_too_long_for_unix_sockets_is_refused(tmp_path, pods):
    with pytest.raises(ValueError, match="longer than 107 bytes"):
        CollectiveServer(str(tmp_path / ("x" * 120)), pods.get, "node-a")


def test_only_rejects_in_a_row_close_a_connection(path, pods):
    limits = ServerLimits(max_rejects_per_connection=3)
    junk = wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, 2) + b"[]"
    with CollectiveServer(path, pods.get, "node-a", limits=limits) as server:
        with connect(path) as sock:
            for seq in range(3):  # two bad frames, then a good one, three times over
                sock.sendall(junk + junk + frame(100 * (seq + 1), seq=seq, uptime=10 + seq))
            wait_until(lambda: total_bytes(server) == 300)
            assert server.aggregator.snapshot().connections == 1
            sock.sendall(junk * 3)
            assert closed_by_server(sock)
        assert rejected(server) == {"malformed": 9}
