"""Decoding NVML values: clock event bitmasks, field values, wrapping counters, MIG profiles.

Pure functions and small value types with no NVML calls, so `nvml.py` keeps to the
order and error handling of the calls themselves. Constants are read from the pynvml
module the source was given, so the real module and the test fake decode alike.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# Clock event (throttle) reasons: our name -> pynvml constant. The newer "ClocksEvent"
# names and the deprecated "ClocksThrottle" ones carry the same bits; reasons only the
# older name has (board limit, reliability) are looked up there.
CLOCK_EVENT_REASONS: tuple[tuple[str, str], ...] = (
    ("gpu_idle", "GpuIdle"),
    ("applications_clocks_setting", "ApplicationsClocksSetting"),
    ("sw_power_cap", "SwPowerCap"),
    ("hw_slowdown", "HwSlowdown"),
    ("sync_boost", "SyncBoost"),
    ("sw_thermal_slowdown", "SwThermalSlowdown"),
    ("hw_thermal_slowdown", "HwThermalSlowdown"),
    ("hw_power_brake_slowdown", "HwPowerBrakeSlowdown"),
    ("display_clock_setting", "DisplayClockSetting"),
    ("board_limit", "BoardLimit"),
    ("reliability", "Reliability"),
)

# nvml.h: "A scopeId of UINT_MAX returns aggregate value summed up across all links".
NVLINK_ALL_LINKS_SCOPE = 0xFFFFFFFF
KIB = 1024


def clock_event_bits(nvml: ModuleType | Any) -> dict[str, int]:
    """Reason name -> bit, for every reason this pynvml knows."""
    bits: dict[str, int] = {}
    for name, suffix in CLOCK_EVENT_REASONS:
        for prefix in ("nvmlClocksEventReason", "nvmlClocksThrottleReason"):
            value = getattr(nvml, prefix + suffix, None)
            if isinstance(value, int):
                bits[name] = value
                break
    return bits


def decode_clock_events(mask: int, bits: dict[str, int], supported: int | None) -> dict[str, bool]:
    """Active flag per named reason; only reasons in `supported` (all known if None)."""
    return {
        name: bool(mask & bit) for name, bit in bits.items() if supported is None or supported & bit
    }


def field_value(nvml: ModuleType | Any, value: Any) -> tuple[int | float, int]:
    """The number in an nvmlFieldValue_t and its width in bits (for wrap handling).

    The union member to read is named by valueType; reading ullVal for a 32-bit value
    would return whatever the upper bytes hold.
    """
    members = {
        nvml.NVML_VALUE_TYPE_DOUBLE: ("dVal", 64),
        nvml.NVML_VALUE_TYPE_UNSIGNED_INT: ("uiVal", 32),
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: ("ulVal", 64),
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: ("ullVal", 64),
        nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: ("sllVal", 64),
        nvml.NVML_VALUE_TYPE_SIGNED_INT: ("siVal", 32),
        nvml.NVML_VALUE_TYPE_UNSIGNED_SHORT: ("usVal", 16),
    }
    member, width = members.get(int(value.valueType), ("ullVal", 64))
    return getattr(value.value, member), width


class WrappingCounter:
    """Turns a device counter that may wrap (32-bit PCIe byte counters do) into one that
    only goes up while the driver stays loaded.

    A 64-bit value that goes down is a driver reload, not a wrap: it is passed through,
    so Prometheus sees an ordinary counter reset.
    """

    def __init__(self) -> None:
        self._last_raw: int | None = None
        self.total: int = 0

    def update(self, raw: int, width: int) -> int:
        if self._last_raw is None:
            self.total = raw
        elif raw >= self._last_raw:
            self.total += raw - self._last_raw
        elif width < 64:
            self.total += raw + (1 << width) - self._last_raw
        else:
            self.total = raw
        self._last_raw = raw
        return self.total


_PROFILE_IN_NAME = re.compile(r"\b((?:\d+c\.)?\d+g\.\d+gb(?:\+\w+)?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class MigShape:
    """What a MIG device's attributes say about its share of the parent GPU."""

    profile: str
    compute_fraction: float
    memory_total_bytes: int | None


def mig_shape(name: str | None, attributes: Any | None, max_slices: int | None) -> MigShape:
    """Profile name and compute share of one MIG device.

    The profile comes from the device name's suffix ("NVIDIA H100 80GB HBM3 MIG 1g.10gb"),
    which is what nvidia-smi and the device plugin's resource names show; without it, it is
    built from the attributes: slices and memory rounded up to whole GB, as NVIDIA names
    them (4864 MiB -> "1g.5gb"). A compute instance smaller than its GPU instance gets the
    "<c>c." prefix and its own share of the slices.
    """
    gi_slices = int(getattr(attributes, "gpuInstanceSliceCount", 0) or 0)
    ci_slices = int(getattr(attributes, "computeInstanceSliceCount", 0) or 0)
    memory_mib = getattr(attributes, "memorySizeMB", None)
    match = _PROFILE_IN_NAME.search(name or "")
    if match:
        profile = match.group(1).lower()
    elif gi_slices and memory_mib:
        prefix = f"{ci_slices}c." if 0 < ci_slices < gi_slices else ""
        profile = f"{prefix}{gi_slices}g.{math.ceil(int(memory_mib) / 1024)}gb"
    else:
        profile = "unknown"
    compute_slices = ci_slices if 0 < ci_slices < gi_slices else gi_slices
    fraction = compute_slices / max_slices if compute_slices and max_slices else 0.0
    memory = int(memory_mib) * 1024 * 1024 if memory_mib else None
    return MigShape(profile=profile, compute_fraction=fraction, memory_total_bytes=memory)


def text(value: Any) -> str:
    """pynvml returns str from most string getters but bytes from struct members."""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)
