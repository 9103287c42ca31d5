"""The probe's wire format: how a training process reports collective totals.

Shared by the in-job probe (`gpuledger.probe`) and the exporter's socket server
(`exporter.collective.server`), so it imports only the standard library.

A report travels over a unix stream socket as one frame:

    header  10 bytes, big-endian: magic b"GLPR", version (u8), flags (u8, 0), length (u32)
    payload `length` bytes of UTF-8 JSON:
        {"instance": "<hex>",          # random per probe process, tells restarts apart
         "seq": 7,                     # report number of this instance
         "uptime_s": 12.5,             # seconds since the probe started
         "dropped_reports": 0,         # reports the probe could not deliver so far
         "ops": {"all_reduce": {"bytes": 4194304, "bus_bytes": 4194304.0,
                                "seconds": 0.0123, "calls": 1, "world_size": 2}}}

Totals are cumulative since the probe started, so a report that is lost (exporter
restarting, buffer full) loses nothing: the next one carries it. The sender's
identity is never in the payload: the exporter reads it from the socket (SO_PEERCRED).

Version 1. A change that an old exporter cannot read bumps VERSION.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

MAGIC = b"GLPR"
VERSION = 1
HEADER = struct.Struct(">4sBBI")
# A full report (every operation) is about 1.5 KiB; 16 KiB leaves room and bounds buffers.
MAX_PAYLOAD_BYTES = 16 * 1024

# Operation names on the wire and in metric labels. Variants count under one name:
# all_gather_into_tensor -> all_gather, reduce_scatter_tensor -> reduce_scatter,
# all_to_all_single -> all_to_all, isend -> send, irecv -> recv.
OPERATIONS: tuple[str, ...] = (
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "broadcast",
    "reduce",
    "all_to_all",
    "send",
    "recv",
    "barrier",
)

_MAX_INT = 2**63 - 1
_MAX_FLOAT = 1e30
_INSTANCE = re.compile(r"[0-9a-f]{1,32}")


class WireError(ValueError):
    """A frame or payload that does not follow the format. `reason` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class OpReport:
    """Cumulative totals of one operation in one process."""

    bytes: int
    bus_bytes: float  # sum of bytes x nccl-tests bus factor, per call
    seconds: float
    calls: int
    world_size: int


@dataclass(frozen=True)
class Report:
    instance: str
    seq: int
    uptime_s: float
    dropped_reports: int = 0
    ops: dict[str, OpReport] = field(default_factory=dict)


def encode(report: Report) -> bytes:
    """One frame, header included."""
    payload = json.dumps(
        {
            "instance": report.instance,
            "seq": report.seq,
            "uptime_s": report.uptime_s,
            "dropped_reports": report.dropped_reports,
            "ops": {
                name: {
                    "bytes": op.bytes,
                    "bus_bytes": op.bus_bytes,
                    "seconds": op.seconds,
                    "calls": op.calls,
                    "world_size": op.world_size,
                }
                for name, op in report.ops.items()
            },
        },
        separators=(",", ":"),
        allow_nan=False,
    ).encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError("oversized", f"payload of {len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    return HEADER.pack(MAGIC, VERSION, 0, len(payload)) + payload


def decode_header(header: bytes, max_payload: int = MAX_PAYLOAD_BYTES) -> tuple[int, int]:
    """(version, payload length) of a frame header; WireError if it cannot be framed."""
    if len(header) != HEADER.size:
        raise WireError("malformed", f"header is {len(header)} bytes, not {HEADER.size}")
    magic, version, flags, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise WireError("malformed", f"bad magic {magic!r}")
    if flags != 0:
        raise WireError("malformed", f"unknown flags {flags:#x}")
    if length > max_payload:
        raise WireError("oversized", f"payload of {length} bytes > {max_payload}")
    return version, length


def decode_payload(payload: bytes) -> Report:
    """A report from a version-1 payload; WireError('malformed', ...) if anything is off."""
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise WireError("malformed", f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise WireError("malformed", "payload is not a JSON object")
    instance = doc.get("instance")
    if not isinstance(instance, str) or not _INSTANCE.fullmatch(instance):
        raise WireError("malformed", "instance must be 1-32 lowercase hex digits")
    ops_doc = doc.get("ops")
    if not isinstance(ops_doc, dict):
        raise WireError("malformed", "ops must be an object")
    ops: dict[str, OpReport] = {}
    for name, op in ops_doc.items():
        if name not in OPERATIONS:
            raise WireError("malformed", f"unknown operation {name[:40]!r}")
        if not isinstance(op, dict):
            raise WireError("malformed", f"{name} must be an object")
        ops[name] = OpReport(
            bytes=_int(op, "bytes"),
            bus_bytes=_float(op, "bus_bytes"),
            seconds=_float(op, "seconds"),
            calls=_int(op, "calls"),
            world_size=_int(op, "world_size", low=1, high=2**31 - 1),
        )
    return Report(
        instance=instance,
        seq=_int(doc, "seq"),
        uptime_s=_float(doc, "uptime_s"),
        dropped_reports=_int(doc, "dropped_reports"),
        ops=ops,
    )


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _int(doc: dict, key: str, low: int = 0, high: int = _MAX_INT) -> int:
    value = doc.get(key)
    if type(value) is not int or not low <= value <= high:
        raise WireError("malformed", f"{key} must be an integer in [{low}, {high}]")
    return value


def _float(doc: dict, key: str) -> float:
    value = doc.get(key)
    # The range check also rejects NaN and infinities (every comparison with NaN is false).
    if type(value) not in (int, float) or not 0 <= value <= _MAX_FLOAT:
        raise WireError("malformed", f"{key} must be a finite number in [0, {_MAX_FLOAT:g}]")
    return float(value)
