"""A stand-in training process for dashboard tests: reports growing collective totals to
the exporter's probe socket over the real wire format, as `gpuledger.probe` does, without
torch. Its pod is the exporter's to decide (from this process's credentials).

    python -m tests.dashboards.probe_feeder SOCKET SPEED [--malformed-first]

SPEED scales its bus bandwidth, so that one feeder can play a straggler.
"""

from __future__ import annotations

import os
import socket
import sys
import time

from gpuledger import probe_wire as wire

BUS_BYTES_PER_S = 2e9  # of collective time, at SPEED 1
TIME_IN_COLLECTIVES = 0.2  # share of wall time


def connect(path: str) -> socket.socket:
    deadline = time.monotonic() + 30
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str]) -> None:
    path, speed = argv[0], float(argv[1])
    if "--malformed-first" in argv:
        # The exporter counts it as rejected (reason "malformed") and drops the connection.
        bad = connect(path)
        bad.sendall(b"NOPE" + bytes(6))
        bad.close()
    instance, started, seq = os.urandom(8).hex(), time.monotonic(), 0
    sock = connect(path)
    while True:
        elapsed = time.monotonic() - started
        seconds = elapsed * TIME_IN_COLLECTIVES
        ops = {
            "all_reduce": wire.OpReport(
                bytes=int(seconds * BUS_BYTES_PER_S * speed * 2 / 3),
                bus_bytes=seconds * BUS_BYTES_PER_S * speed,
                seconds=seconds,
                calls=int(elapsed * 10),
                world_size=4,
            ),
            "all_gather": wire.OpReport(
                bytes=int(seconds * BUS_BYTES_PER_S * speed / 2),
                bus_bytes=seconds * BUS_BYTES_PER_S * speed * 3 / 8,
                seconds=seconds / 2,
                calls=int(elapsed * 5),
                world_size=4,
            ),
        }
        report = wire.Report(instance=instance, seq=seq, uptime_s=elapsed, ops=ops)
        try:
            sock.sendall(wire.encode(report))
        except OSError:
            sock.close()
            sock = connect(path)
        seq += 1
        time.sleep(0.5)


if __name__ == "__main__":
    main(sys.argv[1:])
