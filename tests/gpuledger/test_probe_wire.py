import json

import pytest

from gpuledger import probe_wire as wire


def _report(**ops: wire.OpReport) -> wire.Report:
    return wire.Report(instance="ab12", seq=3, uptime_s=4.5, dropped_reports=1, ops=ops)


def _payload(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def _valid_doc() -> dict:
    return {
        "instance": "ab12",
        "seq": 3,
        "uptime_s": 4.5,
        "dropped_reports": 0,
        "ops": {
            "all_reduce": {
                "bytes": 8,
                "bus_bytes": 8.0,
                "seconds": 0.5,
                "calls": 1,
                "world_size": 2,
            }
        },
    }


def test_a_report_survives_encode_and_decode():
    report = _report(
        all_reduce=wire.OpReport(4096, 4096.0, 0.25, 2, 2),
        barrier=wire.OpReport(0, 0.0, 0.01, 1, 2),
    )
    frame = wire.encode(report)
    version, length = wire.decode_header(frame[: wire.HEADER.size])
    assert (version, length) == (wire.VERSION, len(frame) - wire.HEADER.size)
    assert wire.decode_payload(frame[wire.HEADER.size :]) == report


def test_header_errors_say_what_is_wrong():
    good = wire.encode(_report())[: wire.HEADER.size]
    with pytest.raises(wire.WireError, match="bad magic") as e:
        wire.decode_header(b"XXXX" + good[4:])
    assert e.value.reason == "malformed"
    with pytest.raises(wire.WireError, match="flags"):
        wire.decode_header(wire.HEADER.pack(wire.MAGIC, 1, 7, 10))
    with pytest.raises(wire.WireError, match="header is 3 bytes"):
        wire.decode_header(good[:3])
    with pytest.raises(wire.WireError) as e:
        wire.decode_header(wire.HEADER.pack(wire.MAGIC, 1, 0, 2**32 - 1))
    assert e.value.reason == "oversized"


def test_the_largest_report_fits_in_a_frame():
    big = wire.Report(
        instance="a" * 32,
        seq=2**63 - 1,
        uptime_s=1e29,
        dropped_reports=2**63 - 1,
        ops={op: wire.OpReport(2**62, 1e29, 1e29, 2**62, 2**31 - 1) for op in wire.OPERATIONS},
    )
    frame = wire.encode(big)
    assert len(frame) - wire.HEADER.size < wire.MAX_PAYLOAD_BYTES
    assert wire.decode_payload(frame[wire.HEADER.size :]) == big


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(instance="XYZ"), "instance"),
        (lambda d: d.update(instance="a" * 33), "instance"),
        (lambda d: d.update(seq=-1), "seq"),
        (lambda d: d.update(seq=True), "seq"),
        (lambda d: d.update(seq=2**64), "seq"),
        (lambda d: d.update(uptime_s="1"), "uptime_s"),
        (lambda d: d.update(ops=[]), "ops must be an object"),
        (lambda d: d["ops"].update(all_reduce_typo={}), "unknown operation"),
        (lambda d: d["ops"].update(all_reduce=5), "all_reduce must be an object"),
        (lambda d: d["ops"]["all_reduce"].update(bytes=1.5), "bytes"),
        (lambda d: d["ops"]["all_reduce"].update(bytes=-1), "bytes"),
        (lambda d: d["ops"]["all_reduce"].update(seconds=1e31), "seconds"),
        (lambda d: d["ops"]["all_reduce"].update(seconds=10**400), "seconds"),
        (lambda d: d["ops"]["all_reduce"].update(world_size=0), "world_size"),
        (lambda d: d["ops"]["all_reduce"].pop("calls"), "calls"),
    ],
)
def test_payload_errors_name_the_field(mutate, message):
    doc = _valid_doc()
    wire.decode_payload(_payload(doc))  # the base document is valid
    mutate(doc)
    with pytest.raises(wire.WireError, match=message) as e:
        wire.decode_payload(_payload(doc))
    assert e.value.reason == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"instance": "ab", "ops": {}, "seq": 0, "uptime_s": NaN, "dropped_reports": 0}',
        b'{"instance": "ab", "ops": {}, "seq": 0, "uptime_s": Infinity, "dropped_reports": 0}',
        b"[" * 100000,
    ],
)
def test_garbage_payloads_are_malformed(payload):
    with pytest.raises(wire.WireError) as e:
        wire.decode_payload(payload)
    assert e.value.reason == "malformed"
