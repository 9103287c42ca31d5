"""Garbage at the probe socket: the server stays up, counts rejects, keeps honest totals.

One process (the test) throws garbage: random bytes, headers with huge lengths,
truncated frames, well-framed JSON with absurd values. Another process (a child) is
an honest probe whose cumulative reports go through the same server between the
garbage; its pod's totals must stay exactly what it sent.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.attribution import PodRef
from exporter.collective.server import CollectiveServer, ServerLimits
from gpuledger import probe_wire as wire

HONEST = PodRef("ml", "honest", "main", "uid-honest")
FUZZER = PodRef("ml", "fuzzer", "main", "uid-fuzzer")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))

HONEST_PROBE = textwrap.dedent(
    """
    import socket, sys, time
    from gpuledger import probe_wire as wire
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    total, seq, start = 0, 0, time.monotonic()
    for line in sys.stdin:
        total += int(line)
        report = wire.Report(instance="c0ffee", seq=seq, uptime_s=time.monotonic() - start,
            ops={"all_reduce": wire.OpReport(total, float(total), 0.001 * (seq + 1), seq + 1, 2)})
        sock.sendall(wire.encode(report))
        seq += 1
        print("sent", flush=True)
    """
)

numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
)
op_values = st.fixed_dictionaries(
    {k: numbers for k in ("bytes", "bus_bytes", "seconds", "calls", "world_size")}
)
documents = st.fixed_dictionaries(
    {
        "instance": st.one_of(
            st.from_regex(r"[0-9a-f]{1,32}", fullmatch=True), st.text(max_size=40)
        ),
        "seq": numbers,
        "uptime_s": numbers,
        "dropped_reports": numbers,
        "ops": st.one_of(
            st.dictionaries(st.sampled_from(wire.OPERATIONS), op_values, max_size=4),
            st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
            st.lists(st.integers(), max_size=3),
        ),
    }
)


def _framed(doc: dict) -> bytes:
    payload = json.dumps(doc).encode()  # NaN and Infinity allowed: absurd on purpose
    return wire.HEADER.pack(wire.MAGIC, wire.VERSION, 0, len(payload)) + payload


def _valid_frame(nbytes: int) -> bytes:
    report = wire.Report(
        instance="f00d",
        seq=0,
        uptime_s=1.0,
        ops={"broadcast": wire.OpReport(nbytes, float(nbytes), 0.1, 1, 2)},
    )
    return wire.encode(report)


garbage_chunks = st.lists(
    st.one_of(
        st.binary(max_size=512),
        st.builds(
            lambda v, f, n: wire.HEADER.pack(wire.MAGIC, v, f, n),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 2**32 - 1),
        ),
        st.builds(_framed, documents),
        st.builds(lambda n, cut: _valid_frame(n)[:cut], st.integers(0, 10**6), st.integers(0, 60)),
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fuzz") / "probe.sock")
    pods = {os.getpid(): FUZZER}
    # Generous rates: the flood limits have their own tests; here every frame is parsed.
    limits = ServerLimits(reports_per_second=1e6, report_burst=10**6)
    server = CollectiveServer(path, pods.get, "node-a", limits=limits)
    server.start()
    honest = subprocess.Popen(
        [sys.executable, "-c", HONEST_PROBE, path],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    pods[honest.pid] = HONEST
    state = {"expected": 0}
    yield server, path, honest, state
    honest.stdin.close()
    honest.wait(timeout=30)
    server.stop()


def _honest_bytes(server: CollectiveServer) -> int:
    return sum(o.bytes for o in server.aggregator.snapshot().operations if o.pod == HONEST)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(chunks=garbage_chunks, honest_step=st.integers(0, 10**6))
def test_garbage_never_brings_the_server_down_or_bends_honest_totals(rig, chunks, honest_step):
    server, path, honest, state = rig
    rejected_before = sum(server.aggregator.snapshot().rejected.values())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(path)
        for chunk in chunks:
            sock.sendall(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server hung up on the garbage: that is its right
    finally:
        sock.close()

    honest.stdin.write(f"{honest_step}\n")
    honest.stdin.flush()
    assert honest.stdout.readline().strip() == "sent"
    state["expected"] += honest_step
    deadline = time.monotonic() + 10
    while _honest_bytes(server) != state["expected"] and time.monotonic() < deadline:
        time.sleep(0.002)
    assert _honest_bytes(server) == state["expected"]
    assert server._thread is not None and server._thread.is_alive()
    snapshot = server.aggregator.snapshot()
    assert snapshot.connections <= server.limits.max_connections
    assert snapshot.rejected["unattributed"] == 0
    if _certainly_rejected(chunks[0]):
        while sum(server.aggregator.snapshot().rejected.values()) == rejected_before:
            assert time.monotonic() < deadline, "a bad header was not counted"
            time.sleep(0.002)


def _certainly_rejected(first: bytes) -> bool:
    """A first chunk that is a whole header no server may accept."""
    if len(first) < wire.HEADER.size:
        return False
    magic, _version, flags, length = wire.HEADER.unpack(first[: wire.HEADER.size])
    return magic != wire.MAGIC or flags != 0 or length > wire.MAX_PAYLOAD_BYTES
