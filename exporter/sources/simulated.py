"""The simulated device source: a seedable GPU node that follows a scenario.

`SimulatedSource(scenario, seed=0, clock=time.monotonic, wall_clock=time.time)` plays a
scenario (exporter/sources/scenario.py) through time and answers `sample()` with a
`DeviceSnapshot` whose source is "simulated". `SimulatedAttribution(source)` answers
what the kubelet and cgroups would say about the same fleet.

How readings are made, so that tests and calibration can rely on them:
- Utilisation and power are averages over the time since the previous sample (as
  NVML's are), and the energy counter grows by exactly `power_watts * dt`, so the
  exporter's integrals match the scenario's ground truth. Memory, temperature, clocks
  and faults are read at the sample's instant.
- Noise: each sample draws from `random.Random` seeded by (seed, node, sample time),
  so the same seed and the same sample times give the same snapshots.
- Identity never looks real: UUIDs are "GPU-5a1e0000-..." and "MIG-5a1e0000-..." made
  from (seed, node, index), PCI bus IDs are "SIM:00:<index>.0" and the driver version
  is "simulated". The model keeps its real NVML name, which the price book keys on.
- Shapes follow NVML: a MIG GPU lists every instance's processes without per-process
  utilisation, and each `MigReading` lists its own with it. Unlike NVML, MIG instances
  and MIG GPUs report utilisation (the GPU's is the instances' weighted by fraction).
- Clock event reasons reported: gpu_idle, sw_power_cap, hw_slowdown,
  sw_thermal_slowdown, hw_thermal_slowdown (names as in sources/nvml_fields.py).
- Phases run on the scenario's schedule from construction; `set_phase(name)` jumps
  to a phase now. `follow(driver)` or `follow_file(path)` lets an outside timeline
  (the load generator's JSON Lines file) choose the phase at each sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from exporter.attribution import Attribution, DeviceAssignment, PodRef
from exporter.model import DeviceSnapshot, GpuReading, MigReading, ProcessReading
from exporter.sources.scenario import (
    MIB,
    Fault,
    GpuSpec,
    Phase,
    PodSpec,
    Scenario,
    load_scenario,
)

log = logging.getLogger(__name__)

SOURCE_NAME = "simulated"
DRIVER_VERSION = "simulated"
RESERVED_BYTES = 512 * MIB  # what the driver and firmware keep, as on a real H100
IDLE_SM_CLOCK_MHZ = 345
THROTTLED_CLOCK_FRACTION = 0.55
THROTTLED_TEMPERATURE = 88.0
# As the NVML source counts it: (function, pynvml error class name without NVMLError_).
LOST_ERROR = ("nvmlDeviceGetHandleByIndex", "GpuIsLost")

# A driver names the phase to play now: a name, (name, unix time it started), or None.
PhaseDriver = Callable[[], str | tuple[str, float | None] | None]


def _hex_id(seed: int, node: str, *path: int) -> str:
    h = hashlib.sha256(f"gpuledger-simulated/{seed}/{node}/{path}".encode()).hexdigest()
    return f"5a1e0000-{h[:4]}-{h[4:8]}-{h[8:12]}-{h[12:24]}"


def gpu_uuid(seed: int, node: str, index: int) -> str:
    """A GPU UUID that is plainly simulated: same seed, node and index, same UUID."""
    return f"GPU-{_hex_id(seed, node, index)}"


def mig_uuid(seed: int, node: str, index: int, position: int) -> str:
    return f"MIG-{_hex_id(seed, node, index, position)}"


def _power(spec: GpuSpec, utilization: float) -> float:
    idle = spec.model.idle_watts
    return idle + (0.9 * spec.power_limit_watts - idle) * utilization


def _clip(value: float, lo: float = 0.0, hi: float = 1.0) -> float:
    return min(hi, max(lo, value))


# A share of a GPU's busy time: a pod, a process outside pods, or busy time with no process.
ShareKey = tuple[str, object]


@dataclass
class _Plan:
    """One phase, precomputed per GPU for fast accounting."""

    phase: Phase
    shares: list[dict[ShareKey, float]]  # per GPU (not MIG): share key -> utilisation
    mig_util: dict[tuple[int, int], float]  # (gpu, position) -> utilisation
    gpu_util: list[float]
    power: list[float]
    lost_at: list[float | None]
    throttle_at: list[float | None]
    events: list[Fault]  # the phase's event faults
    present: tuple[PodSpec, ...]


@dataclass
class _Counters:
    """What a GPU accumulates since the source started."""

    energy: float
    pcie_tx: float
    pcie_rx: float
    nvlink_tx: float = 0.0
    nvlink_rx: float = 0.0
    xid_counts: dict[int, int] = field(default_factory=dict)
    last_xid: float | None = None  # monotonic time
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    remapped_uncorrectable: int = 0
    remap_pending: bool = False
    remap_failure: bool = False


class SimulatedSource:
    """A simulated GPU node following a scenario; implements `DeviceSource`."""

    name = SOURCE_NAME

    def __init__(
        self,
        scenario: Scenario | str | Path = "default",
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        node: str | None = None,
    ) -> None:
        """`node` replaces the scenario's node name (it also changes the UUIDs), so that
        one scenario can play several nodes."""
        scenario = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
        self.scenario = scenario if node is None else replace(scenario, node=node)
        self.seed = seed
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        s = self.scenario
        self._uuids = [gpu_uuid(seed, s.node, g.index) for g in s.gpus]
        self._mig_uuids = {
            (g.index, m.position): mig_uuid(seed, s.node, g.index, m.position)
            for g in s.gpus
            for m in g.mig
        }
        self._plans = [self._plan(p) for p in s.phases]
        self._period = sum(p.duration_seconds for p in s.phases)
        init = random.Random(f"{seed}/{s.node}/init")
        self._counters = [
            _Counters(
                energy=init.uniform(1e6, 1e8),
                pcie_tx=init.uniform(1e9, 1e12),
                pcie_rx=init.uniform(1e9, 1e12),
            )
            for _ in s.gpus
        ]
        self._errors: dict[tuple[str, str], int] = {}
        self._anchor_index = 0
        self._anchor_time = clock()
        self._hold = False
        self._advanced_to = self._anchor_time
        self._reset_interval()
        self._present_at: dict[float, tuple[PodSpec, ...]] = {}
        self._driver: PhaseDriver | None = None
        self._between_phases: str | None = None
        self._driven: str | None = None
        self._unknown_driven: set[str] = set()

    # ------------------------------------------------------------ public API

    def sample(self) -> DeviceSnapshot:
        with self._lock:
            now = self._clock()
            wall = self._wall_clock()
            self._poll_driver(now, wall)
            self._advance(now)
            index, start = self._phase_at(now)
            plan = self._plans[index]
            rng = random.Random(f"{self.seed}/{self.scenario.node}/{now!r}")
            gpus = tuple(
                self._reading(spec, plan, now - start, now, wall, rng)
                for spec in self.scenario.gpus
            )
            self._reset_interval()
            self._present_at[now] = plan.present
            while len(self._present_at) > 16:  # attribution asks about recent snapshots only
                del self._present_at[next(iter(self._present_at))]
            return DeviceSnapshot(wall, now, SOURCE_NAME, gpus, dict(self._errors))

    def close(self) -> None:
        with self._lock:
            self._driver = None

    def set_phase(self, name: str, hold: bool = False) -> None:
        """Start phase `name` now. With hold, stay in it until told otherwise; without,
        the schedule goes on from it (its duration, then the next phase)."""
        with self._lock:
            self._switch(self._index_of(name), self._clock(), hold)

    @property
    def current_phase(self) -> str:
        with self._lock:
            return self.scenario.phases[self._phase_at(self._clock())[0]].name

    def follow(self, driver: PhaseDriver, between_phases: str | None = None) -> None:
        """Let `driver` choose the phase: it is called at each sample and returns a
        phase name, (name, unix time the phase started) or None (no phase running).

        A new name is applied (held) from the time it started, or from now; names
        the scenario lacks are ignored. On None the source switches to
        `between_phases` if given, else keeps the phase it plays."""
        if between_phases is not None:
            self._index_of(between_phases)
        with self._lock:
            self._driver = driver
            self._between_phases = between_phases
            self._driven = None

    def follow_file(
        self, path: str | Path, between_phases: str | None = None, rank: int | None = 0
    ) -> None:
        """Follow the load generator's JSON Lines timeline (see `TimelineFollower`):
        by default rank 0's phases, which every rank runs in step."""
        self.follow(TimelineFollower(path, rank=rank), between_phases)

    def uuid(self, index: int) -> str:
        return self._uuids[index]

    def mig_uuid(self, index: int, position: int) -> str:
        return self._mig_uuids[(index, position)]

    def pods_at(self, monotonic: float) -> tuple[PodSpec, ...]:
        """The pods present at a sample's monotonic time (the phase's pods)."""
        with self._lock:
            present = self._present_at.get(monotonic)
            if present is None:
                present = self._plans[self._phase_at(monotonic)[0]].present
            return present

    # ------------------------------------------------------------ the schedule

    def _index_of(self, name: str) -> int:
        try:
            return self.scenario.phase_index(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None

    def _switch(self, index: int, at: float, hold: bool) -> None:
        self._advance(at)
        self._anchor_index, self._anchor_time, self._hold = index, at, hold

    def _open_ended(self, index: int) -> bool:
        last = len(self.scenario.phases) - 1
        return self._hold or (self.scenario.at_end == "hold" and index == last)

    def _duration(self, index: int) -> float:
        return self.scenario.phases[index].duration_seconds

    def _phase_at(self, t: float) -> tuple[int, float]:
        """(phase index, start time of that phase) at monotonic time t."""
        index, start = self._anchor_index, self._anchor_time
        while not self._open_ended(index):
            if t < start + self._duration(index):
                break
            if t - start >= self._period:  # skip whole cycles at once
                start += math.floor((t - start) / self._period) * self._period
                continue
            start += self._duration(index)
            index = (index + 1) % len(self.scenario.phases)
        return index, start

    def _segments(self, t0: float, t1: float) -> Iterator[tuple[int, float, float, int, float]]:
        """Pieces of [t0, t1) in one phase: (index, from, to (offsets in the phase),
        repetitions, start of the last repetition). Whole loops come as one piece
        per phase with repetitions > 1, so a long gap costs one pass."""
        index, start = self._phase_at(t0)
        t = t0
        n = len(self.scenario.phases)
        while t < t1:
            if self._open_ended(index):
                yield index, t - start, t1 - start, 1, start
                return
            end = start + self._duration(index)
            yield index, t - start, min(end, t1) - start, 1, start
            if end >= t1:
                return
            t, start, index = end, end, (index + 1) % n
            if t1 - start >= self._period and not self._open_ended(index):
                loops = math.floor((t1 - start) / self._period)
                offset = 0.0
                for j in range(n):
                    k = (index + j) % n
                    first = start + offset
                    yield k, 0.0, self._duration(k), loops, first + (loops - 1) * self._period
                    offset += self._duration(k)
                start += loops * self._period
                t = start

    # ------------------------------------------------------------ accounting

    def _plan(self, phase: Phase) -> _Plan:
        s = self.scenario
        shares: list[dict[ShareKey, float]] = [{} for _ in s.gpus]
        mig_util: dict[tuple[int, int], float] = {}
        present = tuple(p for p in s.pods if p.key in phase.pods)
        for pod in present:
            load = phase.pods[pod.key]
            for d in pod.devices:
                if d.mig is None:
                    shares[d.gpu][("pod", pod.key)] = load.utilization
                else:
                    mig_util[(d.gpu, d.mig)] = load.utilization
        for index, load in phase.gpus.items():
            for proc in load.processes:
                shares[index][("process", proc.pid)] = proc.utilization
            if load.utilization:
                shares[index][("invisible", None)] = load.utilization
        gpu_util = []
        power = []
        for spec in s.gpus:
            if spec.mig_mode:
                util = sum(
                    m.compute_fraction * mig_util.get((spec.index, m.position), 0.0)
                    for m in spec.mig
                )
            else:
                util = sum(shares[spec.index].values())
            util = _clip(util)
            gpu_util.append(util)
            load = phase.gpus.get(spec.index)
            override = load.power_watts if load is not None else None
            power.append(override if override is not None else _power(spec, util))
        lost_at: list[float | None] = [None] * len(s.gpus)
        throttle_at: list[float | None] = [None] * len(s.gpus)
        events = []
        for fault in phase.faults:
            if fault.kind == "lost":
                lost_at[fault.gpu] = min(fault.at_seconds, lost_at[fault.gpu] or math.inf)
            elif fault.kind == "thermal_throttle":
                throttle_at[fault.gpu] = min(fault.at_seconds, throttle_at[fault.gpu] or math.inf)
            else:
                events.append(fault)
        return _Plan(
            phase, shares, mig_util, gpu_util, power, lost_at, throttle_at, events, present
        )

    def _reset_interval(self) -> None:
        n = len(self.scenario.gpus)
        self._interval = 0.0
        self._busy: list[dict[ShareKey, float]] = [{} for _ in range(n)]
        self._mig_busy: dict[tuple[int, int], float] = {}
        self._energy_in = [0.0] * n  # joules at the phases' target power

    def _advance(self, t: float) -> None:
        """Account [last advance, t): busy time, energy, link bytes, fault events."""
        if t <= self._advanced_to:
            return
        for index, a, b, reps, last_start in self._segments(self._advanced_to, t):
            plan = self._plans[index]
            seconds = (b - a) * reps
            self._interval += seconds
            for spec in self.scenario.gpus:
                g = spec.index
                lost = plan.lost_at[g]
                active = seconds if lost is None else max(0.0, min(b, lost) - a) * reps
                if active <= 0:
                    continue
                for key, util in plan.shares[g].items():
                    self._busy[g][key] = self._busy[g].get(key, 0.0) + util * active
                for m in spec.mig:
                    util = plan.mig_util.get((g, m.position))
                    if util is not None:
                        key2 = (g, m.position)
                        self._mig_busy[key2] = self._mig_busy.get(key2, 0.0) + util * active
                self._energy_in[g] += plan.power[g] * active
                self._count_link_bytes(spec, plan.gpu_util[g], active)
            for fault in plan.events:
                if a <= fault.at_seconds < b:
                    self._count_event(fault, reps, last_start + fault.at_seconds)
        self._advanced_to = t

    def _count_link_bytes(self, spec: GpuSpec, util: float, seconds: float) -> None:
        c = self._counters[spec.index]
        pcie = spec.model.pcie_bytes_per_second * (0.01 + 0.12 * util) * seconds
        c.pcie_tx += pcie
        c.pcie_rx += pcie * 1.1
        if spec.model.nvlink_bytes_per_second and not spec.mig_mode:
            nvlink = spec.model.nvlink_bytes_per_second * 0.35 * util * seconds
            c.nvlink_tx += nvlink
            c.nvlink_rx += nvlink

    def _count_event(self, fault: Fault, reps: int, at: float) -> None:
        c = self._counters[fault.gpu]
        if fault.kind == "xid":
            c.xid_counts[fault.value] = c.xid_counts.get(fault.value, 0) + reps
            c.last_xid = at if c.last_xid is None else max(c.last_xid, at)
        elif fault.kind == "ecc_uncorrected":
            c.ecc_uncorrected += fault.value * reps
        elif fault.kind == "ecc_corrected":
            c.ecc_corrected += fault.value * reps
        elif fault.kind == "row_remap_pending":
            # The simulator never resets a GPU, so pending and failed stay set.
            c.remapped_uncorrectable += reps
            c.remap_pending = True
        elif fault.kind == "row_remap_failure":
            c.remap_failure = True

    # ------------------------------------------------------------ readings

    def _reading(
        self,
        spec: GpuSpec,
        plan: _Plan,
        offset: float,
        now: float,
        wall: float,
        rng: random.Random,
    ) -> GpuReading:
        g = spec.index
        c = self._counters[g]
        last_xid = None if c.last_xid is None else wall - (now - c.last_xid)
        lost = plan.lost_at[g] is not None and offset >= plan.lost_at[g]
        if lost:
            self._errors[LOST_ERROR] = self._errors.get(LOST_ERROR, 0) + 1
            c.energy += self._energy_in[g]  # used before it was lost: the counter keeps it
            return GpuReading(
                index=g,
                uuid=self._uuids[g],
                model=spec.model.name,
                up=False,
                error="simulated: GPU is lost (fell off the bus)",
                pci_bus_id=f"SIM:00:{g:02x}.0",
                driver_version=DRIVER_VERSION,
                mig_mode=spec.mig_mode,
                xid_counts=dict(c.xid_counts),
                last_xid_timestamp=last_xid,
            )
        noise = self.scenario.noise
        dt = self._interval

        def wobble(value: float, scale: float = 1.0) -> float:
            return value * (1.0 + noise * scale * rng.uniform(-1.0, 1.0))

        present = [p for p in plan.present if any(d.gpu == g for d in p.devices)]
        processes: tuple[ProcessReading, ...] = ()
        mig: tuple[MigReading, ...] = ()
        if spec.mig_mode:
            mig = self._mig_readings(spec, plan, present, dt, wobble)
            # NVML cannot tell the GPU's utilisation in MIG mode; the simulator gives the
            # instances' busy time weighted by their share of the GPU.
            util = _clip(sum(m.compute_fraction * (m.utilization or 0.0) for m in mig))
            memory_used = sum(m.memory_used_bytes or 0 for m in mig)
            # As NVML on the parent GPU: every instance's processes, no per-process
            # utilisation (not supported in MIG mode).
            processes = tuple(
                ProcessReading(p.pid, used_memory_bytes=p.used_memory_bytes)
                for m in mig
                for p in m.processes
            )
        else:
            processes, util, memory_used = self._gpu_processes(spec, plan, present, dt, wobble)
        memory_used = min(memory_used, spec.memory_bytes - RESERVED_BYTES)

        target_power = self._energy_in[g] / dt if dt > 0 else plan.power[g]
        power = _clip(wobble(target_power), 0.0, spec.power_limit_watts)
        c.energy += power * dt

        load = plan.phase.gpus.get(g)
        throttled = plan.throttle_at[g] is not None and offset >= plan.throttle_at[g]
        temperature = (
            load.temperature_celsius
            if load is not None and load.temperature_celsius is not None
            else 30.0 + 50.0 * util
        )
        temperature = wobble(temperature, 0.25)
        if throttled:
            temperature = max(temperature, THROTTLED_TEMPERATURE)
        sm_clock = spec.model.max_sm_clock_mhz if util > 0.02 else IDLE_SM_CLOCK_MHZ
        if throttled:
            sm_clock = int(spec.model.max_sm_clock_mhz * THROTTLED_CLOCK_FRACTION)
        events = {
            "gpu_idle": util <= 0.02 and not throttled,
            "sw_power_cap": power >= 0.97 * spec.power_limit_watts,
            "hw_slowdown": throttled,
            "sw_thermal_slowdown": throttled,
            "hw_thermal_slowdown": throttled,
        }
        has_nvlink = spec.model.nvlink_bytes_per_second > 0
        return GpuReading(
            index=g,
            uuid=self._uuids[g],
            model=spec.model.name,
            pci_bus_id=f"SIM:00:{g:02x}.0",
            driver_version=DRIVER_VERSION,
            mig_mode=spec.mig_mode,
            utilization=util,
            memory_utilization=_clip(0.55 * util),
            memory_total_bytes=spec.memory_bytes,
            memory_used_bytes=memory_used,
            memory_reserved_bytes=RESERVED_BYTES,
            power_watts=power,
            power_limit_watts=spec.power_limit_watts,
            energy_joules=c.energy,
            temperature_celsius=temperature,
            sm_clock_hertz=sm_clock * 1e6,
            memory_clock_hertz=spec.model.memory_clock_mhz * 1e6,
            clock_events=events,
            ecc_corrected_total=c.ecc_corrected,
            ecc_uncorrected_total=c.ecc_uncorrected,
            remapped_rows_correctable=0,
            remapped_rows_uncorrectable=c.remapped_uncorrectable,
            row_remap_pending=c.remap_pending,
            row_remap_failure=c.remap_failure,
            pcie_tx_bytes_total=int(c.pcie_tx),
            pcie_rx_bytes_total=int(c.pcie_rx),
            nvlink_tx_bytes_total=int(c.nvlink_tx) if has_nvlink else None,
            nvlink_rx_bytes_total=int(c.nvlink_rx) if has_nvlink else None,
            xid_counts=dict(c.xid_counts),
            last_xid_timestamp=last_xid,
            tensor_active=_clip(0.7 * util),
            graphics_engine_active=util,
            processes=processes,
            mig=mig,
        )

    def _gpu_processes(
        self,
        spec: GpuSpec,
        plan: _Plan,
        present: list[PodSpec],
        dt: float,
        wobble: Callable[..., float],
    ) -> tuple[tuple[ProcessReading, ...], float, int]:
        """Processes of a whole or time-sliced GPU; the GPU's utilisation is the sum of
        its shares, so per-process utilisation adds up to it."""
        g = spec.index
        phase = plan.phase
        averages = {k: v / dt for k, v in self._busy[g].items()} if dt > 0 else dict(plan.shares[g])
        shares = {k: _clip(wobble(v)) for k, v in averages.items()}
        total = sum(shares.values())
        if total > 1.0:
            shares = {k: v / total for k, v in shares.items()}
        util = _clip(sum(shares.values()))
        # pid -> (sm utilisation, memory bytes)
        found: dict[int, tuple[float, int]] = {}
        memory_used = 0
        for pod in present:
            load = phase.pods[pod.key]
            position = next(i for i, d in enumerate(pod.devices) if d.gpu == g)
            pids = pod.pids_on(position)
            memory = min(int(wobble(load.memory_bytes, 0.1)), spec.memory_bytes)
            memory_used += memory
            pod_util = shares.get(("pod", pod.key), 0.0)
            for i, pid in enumerate(pids):
                part = memory // len(pids) + (memory % len(pids) if i == 0 else 0)
                found[pid] = (pod_util / len(pids), part)
        gpu_load = phase.gpus.get(g)
        if gpu_load is not None:
            memory_used += gpu_load.memory_bytes
            for proc in gpu_load.processes:
                found[proc.pid] = (shares.get(("process", proc.pid), 0.0), proc.memory_bytes)
                memory_used += proc.memory_bytes
        processes = tuple(
            ProcessReading(
                pid, used_memory_bytes=mem, sm_utilization=u, memory_utilization=0.55 * u
            )
            for pid, (u, mem) in sorted(found.items())
        )
        return processes, util, memory_used

    def _mig_readings(
        self,
        spec: GpuSpec,
        plan: _Plan,
        present: list[PodSpec],
        dt: float,
        wobble: Callable[..., float],
    ) -> tuple[MigReading, ...]:
        g = spec.index
        phase = plan.phase
        holder = {d.mig: pod for pod in present for d in pod.devices if d.gpu == g}
        readings = []
        for m in spec.mig:
            key = (g, m.position)
            util = self._mig_busy.get(key, 0.0) / dt if dt > 0 else plan.mig_util.get(key, 0.0)
            util = _clip(wobble(util))
            processes: tuple[ProcessReading, ...] = ()
            memory = 0
            pod = holder.get(m.position)
            if pod is not None:
                load = phase.pods[pod.key]
                memory = min(int(wobble(load.memory_bytes, 0.1)), m.memory_bytes)
                position = next(
                    i for i, d in enumerate(pod.devices) if d.gpu == g and d.mig == m.position
                )
                pids = pod.pids_on(position)
                processes = tuple(
                    ProcessReading(
                        pid,
                        used_memory_bytes=memory // len(pids)
                        + (memory % len(pids) if i == 0 else 0),
                        sm_utilization=util / len(pids),
                        memory_utilization=0.55 * util / len(pids),
                    )
                    for i, pid in enumerate(pids)
                )
            readings.append(
                MigReading(
                    uuid=self._mig_uuids[key],
                    profile=m.profile.name,
                    # Real GPUs number instances by placement; position + 1 keeps them stable.
                    gpu_instance_id=m.position + 1,
                    compute_instance_id=0,
                    compute_fraction=m.compute_fraction,
                    memory_total_bytes=m.memory_bytes,
                    memory_used_bytes=memory,
                    utilization=util,
                    processes=processes,
                )
            )
        return tuple(readings)

    # ------------------------------------------------------------ outside driver

    def _poll_driver(self, now: float, wall: float) -> None:
        if self._driver is None:
            return
        try:
            answer = self._driver()
        except Exception:  # a broken driver must not stop the readings
            log.exception("the simulated source's phase driver failed; keeping the phase")
            return
        name, started = answer if isinstance(answer, tuple) else (answer, None)
        if name is None:
            name, started = self._between_phases, None
        if name is None:
            self._driven = None  # the same phase starting again restarts it
            return
        if name == self._driven:
            return
        self._driven = name
        try:
            index = self.scenario.phase_index(name)
        except KeyError:
            if name not in self._unknown_driven:
                self._unknown_driven.add(name)
                log.info(
                    "phase %r is not in scenario %s; keeping the phase", name, self.scenario.name
                )
            return
        at = now if started is None else now - max(0.0, wall - started)
        # Time already accounted cannot be replayed under another phase.
        self._switch(index, max(at, self._advanced_to), hold=True)


class TimelineFollower:
    """Reads the load generator's JSON Lines timeline (loadgen/timeline.py) as it grows
    and says which phase runs now: {"type": "phase_start", "phase": "train", "start":
    1700000000.5, ...} starts a phase, {"type": "phase_end", "phase": "train", ...}
    ends it. Other records, malformed lines and a missing file are ignored. With
    `rank`, only that rank's records count (ranks may share one file). The keys are
    parameters so that another timeline format can be followed."""

    def __init__(
        self,
        path: str | Path,
        rank: int | None = None,
        event_key: str = "type",
        phase_key: str = "phase",
        time_key: str = "start",
        start_events: tuple[str, ...] = ("phase_start",),
        end_events: tuple[str, ...] = ("phase_end",),
    ) -> None:
        self.path = Path(path)
        self.rank = rank
        self._keys = (event_key, phase_key, time_key)
        self._start_events = start_events
        self._end_events = end_events
        self._offset = 0
        self._phase: str | None = None
        self._started: float | None = None

    def __call__(self) -> tuple[str, float | None] | None:
        self._read_new_lines()
        return None if self._phase is None else (self._phase, self._started)

    def _read_new_lines(self) -> None:
        try:
            size = self.path.stat().st_size
            if size < self._offset:  # the file was replaced: read it from the start
                self._offset, self._phase, self._started = 0, None, None
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]  # a half-written last line waits
        self._offset += len(complete)
        event_key, phase_key, time_key = self._keys
        for line in complete.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or not isinstance(record.get(phase_key), str):
                continue
            if self.rank is not None and record.get("rank") != self.rank:
                continue
            event = record.get(event_key)
            if event in self._start_events:
                self._phase = record[phase_key]
                stamp = record.get(time_key)
                valid = isinstance(stamp, int | float) and not isinstance(stamp, bool)
                self._started = float(stamp) if valid else None
            elif event in self._end_events and record[phase_key] == self._phase:
                self._phase, self._started = None, None


class SimulatedAttribution:
    """What the kubelet (devices -> pods) and cgroups (pids -> pods) would say about a
    `SimulatedSource`'s fleet at the time of a snapshot."""

    def __init__(self, source: SimulatedSource) -> None:
        self.source = source

    def resolve(self, snapshot: DeviceSnapshot) -> Attribution:
        devices: dict[str, list[DeviceAssignment]] = {}
        processes: dict[int, PodRef] = {}
        for pod in self.source.pods_at(snapshot.monotonic):
            ref = PodRef(pod.namespace, pod.pod, pod.container, pod.uid)
            for d in pod.devices:
                # Time-sliced replicas are reported under the GPU's own UUID.
                device_id = (
                    self.source.uuid(d.gpu) if d.mig is None else self.source.mig_uuid(d.gpu, d.mig)
                )
                devices.setdefault(device_id, []).append(
                    DeviceAssignment(pod.resource, device_id, ref)
                )
            for pid in pod.pids:
                processes[pid] = ref
        return Attribution(
            devices={k: tuple(v) for k, v in devices.items()},
            processes=processes,
            stale={SOURCE_NAME: False},
            age_seconds={SOURCE_NAME: 0.0},
        )
