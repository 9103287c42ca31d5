"""Device sources: where GPU readings come from, behind one small protocol.

- `nvml`: real GPUs through pynvml.
- `simulated`: a seedable fleet that follows a scenario file; every series it
  produces is labelled source="simulated".
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from exporter.model import DeviceSnapshot


@runtime_checkable
class DeviceSource(Protocol):
    """A source of GPU readings. `sample()` must not raise for one bad GPU: it marks
    that GPU down and keeps the others."""

    name: str  # "nvml" or "simulated"

    def sample(self) -> DeviceSnapshot: ...

    def close(self) -> None: ...
