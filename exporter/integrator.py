"""Integrate sampled usage into counters that do not alias with the scrape interval.

The exporter samples every second (by default) and adds value × dt to counters: busy
GPU-seconds, GPU-seconds held, memory byte-seconds, joules. `increase()` over any window
is then the usage in that window, whatever Prometheus's scrape interval.

A sample's values describe the period that ends with it (NVML's utilisation is an
average over its last sample period), so each period is credited with the values read
at its end. A gap longer than `max_gap_s` (a stalled loop, a suspended node) is not
credited: guessing across it would invent usage. Such time is missing from
gpu_sampled_seconds_total too, so ratios stay honest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from exporter.model import DeviceSnapshot, GpuReading
from exporter.pod_usage import PodDeviceKey, PodDeviceUsage


@dataclass
class GpuTotals:
    busy_seconds: float = 0.0
    sampled_seconds: float = 0.0
    memory_byte_seconds: float = 0.0
    # Energy from power × dt where the device has no energy counter.
    integrated_energy_joules: float = 0.0
    last_energy_joules: float | None = None  # the device counter at the last sample


@dataclass
class PodTotals:
    allocated_seconds: float = 0.0
    busy_seconds: float = 0.0
    memory_byte_seconds: float = 0.0
    energy_joules: float = 0.0
    busy_known: bool = False  # a utilisation sample was ever credited


@dataclass
class UsageTotals:
    gpus: dict[str, GpuTotals] = field(default_factory=dict)  # by GPU uuid
    migs: dict[str, float] = field(default_factory=dict)  # MIG uuid -> busy seconds
    pods: dict[PodDeviceKey, PodTotals] = field(default_factory=dict)
    # Pods that let go of a device, their counters frozen, kept `departed_grace_s`
    # so that Prometheus scrapes their last value (see UsageIntegrator).
    departed: dict[PodDeviceKey, PodTotals] = field(default_factory=dict)


class UsageIntegrator:
    """Turns successive snapshots into monotonic usage counters."""

    def __init__(self, max_gap_s: float = 10.0, departed_grace_s: float = 300.0) -> None:
        self.max_gap_s = max_gap_s
        # A pod's last period is credited in the collection before it leaves, but
        # Prometheus may scrape only every 15-60 s: dropping the series at once would
        # lose up to a scrape interval of every pod's usage. Its frozen counters stay
        # this long (longer than any sane scrape interval), then go.
        self.departed_grace_s = departed_grace_s
        self.totals = UsageTotals()
        self._last_monotonic: float | None = None
        self._departed_at: dict[PodDeviceKey, float] = {}
        # Departed series dropped before their grace period ended, to stay under a cap.
        self.expired_early = 0

    def _period(self, snapshot: DeviceSnapshot) -> float:
        last, self._last_monotonic = self._last_monotonic, snapshot.monotonic
        if last is None:
            return 0.0
        dt = snapshot.monotonic - last
        return dt if 0 < dt <= self.max_gap_s else 0.0

    def update(
        self,
        snapshot: DeviceSnapshot,
        usages: Iterable[PodDeviceUsage],
        departed_room: int | None = None,
    ) -> UsageTotals:
        """Credit one period. `departed_room` bounds the departed series kept: beyond it
        the pods that left first go before their grace period ends (see expired_early)."""
        dt = self._period(snapshot)
        energy_delta = {gpu.uuid: self._update_gpu(gpu, dt) for gpu in snapshot.gpus}
        for gpu in snapshot.gpus:
            for mig in gpu.mig:
                busy = self.totals.migs.setdefault(mig.uuid, 0.0)
                if mig.utilization is not None:
                    self.totals.migs[mig.uuid] = busy + mig.utilization * dt

        alive: dict[PodDeviceKey, PodTotals] = {}
        departed = self.totals.departed
        for usage in usages:
            totals = self.totals.pods.get(usage.key) or departed.pop(usage.key, None)
            if totals is None:
                totals = PodTotals()
            self._departed_at.pop(usage.key, None)
            totals.allocated_seconds += usage.allocated * dt
            if usage.utilization is not None:
                totals.busy_seconds += usage.utilization * dt
                totals.busy_known = True
            if usage.memory_used_bytes is not None:
                totals.memory_byte_seconds += usage.memory_used_bytes * dt
            totals.energy_joules += usage.energy_share * energy_delta.get(usage.key.uuid, 0.0)
            alive[usage.key] = totals
        now = snapshot.monotonic
        for key, totals in self.totals.pods.items():
            if key not in alive:
                departed[key] = totals
                self._departed_at[key] = now
        # After the grace period the series goes, but not while the same pod still has
        # series on other devices: a pod's counters go together, so that their sum (the
        # accounting recording rules) only ever drops when all of them restart. A pod
        # that comes back later starts from zero: Prometheus reads a counter reset.
        last_left: dict[tuple[str, str], float] = {}
        for key, since in self._departed_at.items():
            pod = (key.namespace, key.pod)
            last_left[pod] = max(since, last_left.get(pod, since))
        live_pods = {(key.namespace, key.pod) for key in alive}
        for key in list(self._departed_at):
            pod = (key.namespace, key.pod)
            if pod not in live_pods and now - last_left[pod] >= self.departed_grace_s:
                self._forget(key)
        if departed_room is not None and len(departed) > departed_room:
            self._make_room(max(departed_room, 0), live_pods, last_left)
        self.totals.pods = alive
        return self.totals

    def _forget(self, key: PodDeviceKey) -> None:
        del self._departed_at[key]
        self.totals.departed.pop(key, None)

    def _make_room(
        self,
        room: int,
        live_pods: set[tuple[str, str]],
        last_left: dict[tuple[str, str], float],
    ) -> None:
        """Series cap reached: the pods that left first go first, all their series at
        once; a pod still holding another device keeps its departed ones."""
        departed = self.totals.departed
        by_pod: dict[tuple[str, str], list[PodDeviceKey]] = {}
        for key in departed:
            by_pod.setdefault((key.namespace, key.pod), []).append(key)
        gone = sorted((pod for pod in by_pod if pod not in live_pods), key=last_left.__getitem__)
        for pod in gone:
            if len(departed) <= room:
                break
            for key in by_pod[pod]:
                self._forget(key)
                self.expired_early += 1

    def _update_gpu(self, gpu: GpuReading, dt: float) -> float:
        """Credit one GPU's period; return the joules it used in the period."""
        totals = self.totals.gpus.setdefault(gpu.uuid, GpuTotals())
        if not gpu.up:
            totals.last_energy_joules = None
            return 0.0
        if gpu.utilization is not None:
            totals.busy_seconds += gpu.utilization * dt
            totals.sampled_seconds += dt
        if gpu.memory_used_bytes is not None:
            totals.memory_byte_seconds += gpu.memory_used_bytes * dt
        energy = 0.0
        if gpu.energy_joules is not None:
            last = totals.last_energy_joules
            if last is not None and dt > 0 and gpu.energy_joules >= last:
                energy = gpu.energy_joules - last
            totals.last_energy_joules = gpu.energy_joules
        elif gpu.power_watts is not None:
            energy = gpu.power_watts * dt
            totals.integrated_energy_joules += energy
        return energy
