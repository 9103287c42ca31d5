"""Decoding of NVML values: clock event bits, field value unions, counters, MIG shapes."""

from __future__ import annotations

from types import SimpleNamespace

import pynvml
import pytest

from exporter.sources.nvml_fields import (
    WrappingCounter,
    clock_event_bits,
    decode_clock_events,
    field_value,
    mig_shape,
)


def test_clock_event_bits_come_from_pynvml() -> None:
    bits = clock_event_bits(pynvml)
    assert bits["sw_power_cap"] == pynvml.nvmlClocksEventReasonSwPowerCap
    assert bits["hw_power_brake_slowdown"] == 0x80
    # Only the deprecated name has it: still found.
    assert bits["board_limit"] == pynvml.nvmlClocksThrottleReasonBoardLimit


def test_decode_clock_events_keeps_supported_reasons_only() -> None:
    bits = {"gpu_idle": 0x1, "sw_power_cap": 0x4, "hw_slowdown": 0x8}
    assert decode_clock_events(0x5, bits, None) == {
        "gpu_idle": True,
        "sw_power_cap": True,
        "hw_slowdown": False,
    }
    assert decode_clock_events(0x5, bits, 0x4 | 0x8) == {"sw_power_cap": True, "hw_slowdown": False}


def test_field_value_reads_the_union_member_named_by_its_type() -> None:
    value = pynvml.c_nvmlFieldValue_t()
    value.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    value.value.ullVal = (7 << 32) | 5  # upper bytes are not part of a 32-bit value
    assert field_value(pynvml, value) == (5, 32)
    value.valueType = pynvml.NVML_VALUE_TYPE_DOUBLE
    value.value.dVal = 2.5
    assert field_value(pynvml, value) == (2.5, 64)


def test_wrapping_counter_wraps_narrow_values_and_resets_on_64_bit_decrease() -> None:
    narrow = WrappingCounter()
    assert narrow.update(2**16 - 10, 16) == 2**16 - 10
    assert narrow.update(5, 16) == 2**16 + 5
    wide = WrappingCounter()
    wide.update(1000, 64)
    assert wide.update(1500, 64) == 1500
    assert wide.update(20, 64) == 20  # driver reload: a counter reset, not a wrap


@pytest.mark.parametrize(
    ("name", "gi", "ci", "mib", "profile", "fraction"),
    [
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", 1, 1, 4864, "1g.5gb", 1 / 7),
        ("", 1, 1, 4864, "1g.5gb", 1 / 7),  # from attributes, memory rounded up
        ("", 7, 7, 81_920, "7g.80gb", 1.0),
        ("", 2, 1, 19_968, "1c.2g.20gb", 1 / 7),  # compute instance smaller than its GI
        ("NVIDIA H200 MIG 1g.18gb", 1, 1, 16_384, "1g.18gb", 1 / 7),
    ],
)
def test_mig_shape(name: str, gi: int, ci: int, mib: int, profile: str, fraction: float) -> None:
    attributes = SimpleNamespace(
        gpuInstanceSliceCount=gi, computeInstanceSliceCount=ci, memorySizeMB=mib
    )
    shape = mig_shape(name, attributes, 7)
    assert shape.profile == profile
    assert shape.compute_fraction == pytest.approx(fraction)
    assert shape.memory_total_bytes == mib * 1024 * 1024


def test_mig_shape_without_attributes_is_unknown_not_invented() -> None:
    shape = mig_shape(None, None, 7)
    assert (shape.profile, shape.compute_fraction, shape.memory_total_bytes) == (
        "unknown",
        0.0,
        None,
    )
