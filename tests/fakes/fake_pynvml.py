"""A fake `pynvml` module for tests: the GPU is the one part that cannot run here.

It follows NVML's documented behaviour where the source depends on it:
- nothing works before nvmlInit (NVMLError_Uninitialized); handles are opaque;
- a function a GPU model lacks raises NVMLError_NotSupported (set `FakeGpu.unsupported`);
- nvmlDeviceGetProcessUtilization returns only samples newer than lastSeenTimeStamp and
  raises NVMLError_NotFound when there are none;
- MIG devices are reached by slot; an empty slot raises NVMLError_NotFound, and with
  MIG on the parent's utilization is NotSupported;
- a GPU made lost raises NVMLError_GpuIsLost from every call, handle lookup included;
  after `recover()` old handles stay dead, as after a reset, and must be fetched again;
- XID events injected by the test are delivered by nvmlEventSetWait_v2, which raises
  NVMLError_Timeout when none arrives in time;
- the energy counter grows with `advance()` at the GPU's power draw.

Values come back in pynvml's own ctypes structures (c_nvmlMemory_v2_t,
c_nvmlFieldValue_t, ...), and constants and error classes are pynvml's, copied from
the installed module, so the source under test cannot tell the difference.
`tests/exporter/sources/test_nvml_fake.py` checks that every function here exists in
pynvml with the same parameters.
"""

from __future__ import annotations

import inspect
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import pynvml as _real

GiB = 1024**3
MiB = 1024**2
ALL_LINKS = 0xFFFFFFFF

# Functions NVML answers on a MIG device handle; everything else is NotSupported there.
MIG_FUNCTIONS = frozenset(
    {
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetAttributes",
        "nvmlDeviceGetGpuInstanceId",
        "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetComputeRunningProcesses",
        "nvmlDeviceGetComputeRunningProcesses_v2",
    }
)


@dataclass
class FakeProcess:
    pid: int
    used_memory: int | None = 1 * GiB  # None: NVML_VALUE_NOT_AVAILABLE


@dataclass
class FakeMig:
    uuid: str
    gpu_instance_id: int
    compute_instance_id: int = 0
    gpu_instance_slices: int = 1
    compute_instance_slices: int | None = None  # None: the whole GPU instance
    memory_mib: int = 9984
    name: str = "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    memory_used: int = 0
    processes: list[FakeProcess] = field(default_factory=list)


@dataclass
class FakeGpu:
    """One GPU's state; tests change these fields between sample() calls."""

    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = "00000000:17:00.0"
    memory_total: int = 80 * GiB
    memory_used: int = 0
    memory_reserved: int = 512 * MiB
    utilization_gpu: int = 0  # percent, as NVML reports it
    utilization_memory: int = 0
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    energy_mj: float = 1_000_000.0
    temperature_c: int = 35
    sm_clock_mhz: int = 1980
    memory_clock_mhz: int = 2619
    clock_event_reasons: int = 0
    supported_clock_event_reasons: int = _real.nvmlClocksEventReasonAll
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    remapped_rows: tuple[int, int, int, int] = (0, 0, 0, 0)  # corr, unc, pending, failure
    pcie_tx_bytes: int = 0
    pcie_rx_bytes: int = 0
    pcie_value_type: int = _real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
    nvlink_tx_kib: list[int] = field(default_factory=lambda: [0] * 18)  # per link
    nvlink_rx_kib: list[int] = field(default_factory=lambda: [0] * 18)
    nvlink_aggregate_scope: bool = True  # the driver answers scopeId UINT_MAX
    processes: list[FakeProcess] = field(default_factory=list)
    max_mig_devices: int = 0  # 0: not MIG capable
    mig_enabled: bool = False
    migs: dict[int, FakeMig] = field(default_factory=dict)  # slot -> instance
    unsupported: set[str] = field(default_factory=set)  # function names
    unsupported_fields: set[int] = field(default_factory=set)  # field ids
    field_errors: dict[int, int] = field(default_factory=dict)  # field id -> NVML code
    xid_supported: bool = True
    lost: bool = False
    generation: int = 0  # bumped by recover(): handles from before are dead
    process_samples: list[Any] = field(default_factory=list)
    failures: dict[str, list[int | None]] = field(default_factory=dict)  # fn -> [code, times]


class _Handle:
    """Opaque, like nvmlDevice_t: the source may keep and pass it, nothing more."""

    __slots__ = ("_gpu", "_mig_slot", "_generation")

    def __init__(self, gpu: FakeGpu, mig_slot: int | None) -> None:
        self._gpu, self._mig_slot, self._generation = gpu, mig_slot, gpu.generation

    def __repr__(self) -> str:
        return "<fake nvmlDevice_t>"


class _EventSet:
    __slots__ = ("condition", "events", "devices", "freed")

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.events: deque[Any] = deque()
        self.devices: dict[str, _Handle] = {}  # uuid -> handle registered
        self.freed = False


class _EventData:
    """Shaped like c_nvmlEventData_t (whose device member cannot hold a fake handle)."""

    __slots__ = ("device", "eventType", "eventData", "gpuInstanceId", "computeInstanceId")

    def __init__(self, device: _Handle, xid: int) -> None:
        self.device = device
        self.eventType = _real.nvmlEventTypeXidCriticalError
        self.eventData = xid
        self.gpuInstanceId = _real.NVML_GPU_INSTANCE_ID_ANY
        self.computeInstanceId = _real.NVML_COMPUTE_INSTANCE_ID_ANY


def _raise(code: int) -> None:
    raise _real.NVMLError(code)


class FakeNvml:
    """The module-like fake. Functions are named and shaped as in pynvml; the rest
    (gpus, calls, advance, make_lost, ...) is the test's handle on it."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        driver_version: str = "550.54.15",
        init_error: int | None = None,
        now: float = 1_700_000_000.0,
    ) -> None:
        self.gpus = gpus
        self.driver_version = driver_version
        self.init_error = init_error
        self.now = now
        self.initialized = False
        self.calls: Counter[tuple[str, str | None]] = Counter()
        self.event_sets: list[_EventSet] = []
        self._lock = threading.Lock()
        self._handles: dict[tuple[int, int | None, int], _Handle] = {}

    # ------------------------------------------------------------ scripting

    def advance(self, seconds: float) -> None:
        """Let time pass: energy grows at each GPU's power draw (mW * s = mJ)."""
        for gpu in self.gpus:
            if not gpu.lost:
                gpu.energy_mj += gpu.power_mw * seconds
        self.now += seconds

    def add_process_sample(self, index: int, pid: int, sm: int, mem: int) -> int:
        """A process-utilization sample (percent) stamped now; returns its timestamp (µs)."""
        stamp = int(self.now * 1_000_000)
        sample = _real.c_nvmlProcessUtilizationSample_t(
            pid=pid, timeStamp=stamp, smUtil=sm, memUtil=mem, encUtil=0, decUtil=0
        )
        self.gpus[index].process_samples.append(sample)
        return stamp

    def fail(self, index: int, function: str, code: int, times: int | None = 1) -> None:
        """Make `function` raise NVMLError(code) for GPU `index`, `times` times (None: always)."""
        self.gpus[index].failures[function] = [code, times]

    def make_lost(self, index: int) -> None:
        self.gpus[index].lost = True

    def recover(self, index: int) -> None:
        """The GPU answers again, as after a reset: handles taken before are dead."""
        gpu = self.gpus[index]
        gpu.lost = False
        gpu.generation += 1

    def inject_xid(self, index: int, xid: int) -> None:
        """An XID critical error on GPU `index`, for every event set it is registered in."""
        gpu = self.gpus[index]
        for event_set in self.event_sets:
            with event_set.condition:
                handle = event_set.devices.get(gpu.uuid)
                if handle is not None and not event_set.freed:
                    event_set.events.append(_EventData(handle, xid))
                    event_set.condition.notify_all()

    def call_count(self, function: str, uuid: str | None = None) -> int:
        return self.calls[(function, uuid)]

    # ------------------------------------------------------------ plumbing

    def _record(self, function: str, uuid: str | None) -> None:
        with self._lock:
            self.calls[(function, uuid)] += 1

    def _check_init(self) -> None:
        if not self.initialized:
            _raise(_real.NVML_ERROR_UNINITIALIZED)

    def _enter(self, function: str, handle: Any) -> tuple[FakeGpu, FakeMig | None]:
        """What every device function does first: check init and handle, record the call,
        then raise what the script or the GPU's state says."""
        self._check_init()
        if not isinstance(handle, _Handle):
            self._record(function, None)
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu, slot = handle._gpu, handle._mig_slot
        mig = gpu.migs.get(slot) if slot is not None else None
        self._record(function, mig.uuid if mig else gpu.uuid)
        if gpu.lost or handle._generation != gpu.generation:
            _raise(_real.NVML_ERROR_GPU_IS_LOST)
        if slot is not None and (mig is None or not gpu.mig_enabled):
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)  # the instance was destroyed
        failure = gpu.failures.get(function)
        if failure is not None:
            code, times = failure
            if times is not None:
                failure[1] = times - 1
                if times <= 1:
                    del gpu.failures[function]
            _raise(code)
        if function in gpu.unsupported or (mig is not None and function not in MIG_FUNCTIONS):
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu, mig

    def _handle(self, gpu: FakeGpu, index: int, slot: int | None) -> _Handle:
        """The same handle object for the same device, as NVML returns the same pointer."""
        key = (index, slot, gpu.generation)
        if key not in self._handles:
            self._handles[key] = _Handle(gpu, slot)
        return self._handles[key]

    # ------------------------------------------------------------ library

    def nvmlInit(self) -> None:
        self._record("nvmlInit", None)
        if self.init_error is not None:
            _raise(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self._record("nvmlShutdown", None)
        self._check_init()
        self.initialized = False

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        self._record("nvmlSystemGetDriverVersion", None)
        return self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        self._record("nvmlDeviceGetCount", None)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._check_init()
        if not 0 <= index < len(self.gpus):
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        self._record("nvmlDeviceGetHandleByIndex", gpu.uuid)
        if gpu.lost:
            _raise(_real.NVML_ERROR_GPU_IS_LOST)
        return self._handle(gpu, index, None)

    # ------------------------------------------------------------ identity

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        _, mig = self._enter("nvmlDeviceGetUUID", handle)
        return mig.uuid if mig else handle._gpu.uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        gpu, mig = self._enter("nvmlDeviceGetName", handle)
        return mig.name if mig else gpu.name

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        gpu, _ = self._enter("nvmlDeviceGetPciInfo", handle)
        return _real.nvmlPciInfo_t(busId=gpu.pci_bus_id.encode())  # bytes, as in pynvml

    # ------------------------------------------------------------ readings

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: Any = None) -> Any:
        function = "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo"
        gpu, mig = self._enter(function, handle)
        if mig is not None:
            total, used, reserved = mig.memory_mib * MiB, mig.memory_used, 0
        else:
            total, used, reserved = gpu.memory_total, gpu.memory_used, gpu.memory_reserved
        if not version:
            # v1: reserved memory is counted as used.
            used_v1 = used + reserved
            return _real.c_nvmlMemory_t(total=total, used=used_v1, free=total - used_v1)
        if version != _real.nvmlMemory_v2:
            _raise(_real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        return _real.c_nvmlMemory_v2_t(
            version=version,
            total=total,
            reserved=reserved,
            used=used,
            free=total - used - reserved,
        )

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu, _ = self._enter("nvmlDeviceGetUtilizationRates", handle)
        if gpu.mig_enabled:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        return _real.c_nvmlUtilization_t(gpu=gpu.utilization_gpu, memory=gpu.utilization_memory)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        gpu, _ = self._enter("nvmlDeviceGetPowerUsage", handle)
        return gpu.power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        gpu, _ = self._enter("nvmlDeviceGetEnforcedPowerLimit", handle)
        return gpu.power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        gpu, _ = self._enter("nvmlDeviceGetTotalEnergyConsumption", handle)
        return int(gpu.energy_mj)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        gpu, _ = self._enter("nvmlDeviceGetTemperature", handle)
        if sensor != _real.NVML_TEMPERATURE_GPU:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        return gpu.temperature_c

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        gpu, _ = self._enter("nvmlDeviceGetClockInfo", handle)
        clocks = {_real.NVML_CLOCK_SM: gpu.sm_clock_mhz, _real.NVML_CLOCK_MEM: gpu.memory_clock_mhz}
        if type not in clocks:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        return clocks[type]

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        gpu, _ = self._enter("nvmlDeviceGetCurrentClocksEventReasons", handle)
        return gpu.clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        gpu, _ = self._enter("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        return gpu.clock_event_reasons

    def nvmlDeviceGetSupportedClocksEventReasons(self, handle: Any) -> int:
        gpu, _ = self._enter("nvmlDeviceGetSupportedClocksEventReasons", handle)
        return gpu.supported_clock_event_reasons

    def nvmlDeviceGetSupportedClocksThrottleReasons(self, handle: Any) -> int:
        gpu, _ = self._enter("nvmlDeviceGetSupportedClocksThrottleReasons", handle)
        return gpu.supported_clock_event_reasons

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        gpu, _ = self._enter("nvmlDeviceGetTotalEccErrors", handle)
        if counterType != _real.NVML_VOLATILE_ECC:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        if errorType == _real.NVML_MEMORY_ERROR_TYPE_CORRECTED:
            return gpu.ecc_corrected
        if errorType == _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return gpu.ecc_uncorrected
        _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        return 0

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        gpu, _ = self._enter("nvmlDeviceGetRemappedRows", device)
        return gpu.remapped_rows

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: list[Any]) -> list[Any]:
        """Per-field nvmlReturn, like NVML: a field the GPU lacks fails alone."""
        gpu, _ = self._enter("nvmlDeviceGetFieldValues", handle)
        values = []
        for request in fieldIds:
            field_id, scope = request if isinstance(request, tuple) else (request, 0)
            value = _real.c_nvmlFieldValue_t(fieldId=field_id, scopeId=scope)
            value.timestamp = int(self.now * 1_000_000)
            code, number, value_type = self._field(gpu, field_id, scope)
            value.nvmlReturn = code
            if code == _real.NVML_SUCCESS:
                value.valueType = value_type
                member = "uiVal" if value_type == _real.NVML_VALUE_TYPE_UNSIGNED_INT else "ullVal"
                setattr(value.value, member, number)
            values.append(value)
        return values

    def _field(self, gpu: FakeGpu, field_id: int, scope: int) -> tuple[int, int, int]:
        ull = _real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
        if field_id in gpu.field_errors:
            return gpu.field_errors[field_id], 0, ull
        if field_id in gpu.unsupported_fields:
            return _real.NVML_ERROR_NOT_SUPPORTED, 0, ull
        if field_id == _real.NVML_FI_DEV_PCIE_COUNT_TX_BYTES:
            return _real.NVML_SUCCESS, gpu.pcie_tx_bytes, gpu.pcie_value_type
        if field_id == _real.NVML_FI_DEV_PCIE_COUNT_RX_BYTES:
            return _real.NVML_SUCCESS, gpu.pcie_rx_bytes, gpu.pcie_value_type
        if field_id == _real.NVML_FI_DEV_NVLINK_LINK_COUNT:
            return _real.NVML_SUCCESS, len(gpu.nvlink_tx_kib), _real.NVML_VALUE_TYPE_UNSIGNED_INT
        links = {
            _real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX: gpu.nvlink_tx_kib,
            _real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX: gpu.nvlink_rx_kib,
        }.get(field_id)
        if links is None or not links:
            return _real.NVML_ERROR_NOT_SUPPORTED, 0, ull
        if scope == ALL_LINKS:
            if not gpu.nvlink_aggregate_scope:
                return _real.NVML_ERROR_NOT_SUPPORTED, 0, ull
            return _real.NVML_SUCCESS, sum(links), ull
        if scope >= len(links):
            return _real.NVML_ERROR_INVALID_ARGUMENT, 0, ull
        return _real.NVML_SUCCESS, links[scope], ull

    # ------------------------------------------------------------ processes

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        gpu, mig = self._enter("nvmlDeviceGetComputeRunningProcesses", handle)
        return self._process_list(gpu, mig)

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: Any) -> list[Any]:
        gpu, mig = self._enter("nvmlDeviceGetComputeRunningProcesses_v2", handle)
        return self._process_list(gpu, mig)

    @staticmethod
    def _process_list(gpu: FakeGpu, mig: FakeMig | None) -> list[Any]:
        if mig is not None:
            owners = [(mig, mig.processes)]
        elif gpu.mig_enabled:  # the parent lists the processes of every instance
            owners = [(m, m.processes) for _, m in sorted(gpu.migs.items())]
        else:
            owners = [(None, gpu.processes)]
        listed = []
        for owner, processes in owners:
            for process in processes:
                struct = _real.c_nvmlProcessInfo_v3_t(
                    pid=process.pid,
                    usedGpuMemory=0 if process.used_memory is None else process.used_memory,
                    gpuInstanceId=owner.gpu_instance_id if owner else 0xFFFFFFFF,
                    computeInstanceId=owner.compute_instance_id if owner else 0xFFFFFFFF,
                )
                friendly = _real.nvmlStructToFriendlyObject(struct)
                if process.used_memory is None:  # pynvml maps NOT_AVAILABLE to None
                    friendly.usedGpuMemory = None
                listed.append(friendly)
        return listed

    def nvmlDeviceGetProcessUtilization(self, handle: Any, timeStamp: int) -> list[Any]:
        gpu, _ = self._enter("nvmlDeviceGetProcessUtilization", handle)
        if gpu.mig_enabled:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        newer = [s for s in gpu.process_samples if s.timeStamp > timeStamp]
        if not newer:
            _raise(_real.NVML_ERROR_NOT_FOUND)
        return newer

    # ------------------------------------------------------------ MIG

    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        gpu, _ = self._enter("nvmlDeviceGetMigMode", device)
        if not gpu.max_mig_devices:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        mode = _real.NVML_DEVICE_MIG_ENABLE if gpu.mig_enabled else _real.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        gpu, _ = self._enter("nvmlDeviceGetMaxMigDeviceCount", device)
        if not gpu.max_mig_devices:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        return gpu.max_mig_devices

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> _Handle:
        gpu, _ = self._enter("nvmlDeviceGetMigDeviceHandleByIndex", device)
        if not gpu.max_mig_devices:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        if not gpu.mig_enabled or not 0 <= index < gpu.max_mig_devices:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        if index not in gpu.migs:
            _raise(_real.NVML_ERROR_NOT_FOUND)
        return self._handle(gpu, self.gpus.index(gpu), index)

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        _, mig = self._enter("nvmlDeviceGetGpuInstanceId", device)
        if mig is None:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        return mig.gpu_instance_id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        _, mig = self._enter("nvmlDeviceGetComputeInstanceId", device)
        if mig is None:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        return mig.compute_instance_id

    def nvmlDeviceGetAttributes(self, device: Any) -> Any:
        gpu, mig = self._enter("nvmlDeviceGetAttributes", device)
        if mig is None:
            return _real.c_nvmlDeviceAttributes(
                multiprocessorCount=132,
                gpuInstanceSliceCount=gpu.max_mig_devices,
                computeInstanceSliceCount=gpu.max_mig_devices,
                memorySizeMB=gpu.memory_total // MiB,
            )
        ci_slices = mig.compute_instance_slices or mig.gpu_instance_slices
        return _real.c_nvmlDeviceAttributes(
            multiprocessorCount=16 * ci_slices,
            gpuInstanceSliceCount=mig.gpu_instance_slices,
            computeInstanceSliceCount=ci_slices,
            memorySizeMB=mig.memory_mib,
        )

    # ------------------------------------------------------------ events

    def nvmlEventSetCreate(self) -> _EventSet:
        self._check_init()
        self._record("nvmlEventSetCreate", None)
        event_set = _EventSet()
        self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        gpu, _ = self._enter("nvmlDeviceRegisterEvents", handle)
        if not isinstance(eventSet, _EventSet) or eventSet.freed:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        if eventTypes & _real.nvmlEventTypeXidCriticalError and not gpu.xid_supported:
            _raise(_real.NVML_ERROR_NOT_SUPPORTED)
        with eventSet.condition:
            eventSet.devices[gpu.uuid] = handle

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> _EventData:
        self._check_init()
        self._record("nvmlEventSetWait_v2", None)
        if not isinstance(eventSet, _EventSet) or eventSet.freed:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        with eventSet.condition:
            eventSet.condition.wait_for(lambda: eventSet.events, timeout=timeoutms / 1000)
            if not eventSet.events:
                _raise(_real.NVML_ERROR_TIMEOUT)
            return eventSet.events.popleft()

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self._check_init()
        self._record("nvmlEventSetFree", None)
        if not isinstance(eventSet, _EventSet) or eventSet.freed:
            _raise(_real.NVML_ERROR_INVALID_ARGUMENT)
        with eventSet.condition:
            eventSet.freed = True


def _copy_pynvml_names() -> None:
    """Constants, error classes and structures, from the installed pynvml."""
    for name, value in vars(_real).items():
        copyable = name.startswith(("NVML", "nvml", "c_nvml")) and not inspect.isfunction(value)
        if copyable and name not in FakeNvml.__dict__:
            setattr(FakeNvml, name, value)


_copy_pynvml_names()


def fake_gpu(index: int, **overrides: Any) -> FakeGpu:
    """A healthy H100 with a UUID and PCI address derived from its index."""
    defaults: dict[str, Any] = {
        "uuid": f"GPU-{index:08x}-0000-0000-0000-000000000000",
        "pci_bus_id": f"00000000:{0x17 + index:02X}:00.0",
    }
    defaults.update(overrides)
    return FakeGpu(**defaults)


def make_fake_pynvml(gpus: list[FakeGpu] | int = 1, **options: Any) -> FakeNvml:
    """A fake pynvml with these GPUs (or this many default H100s)."""
    if isinstance(gpus, int):
        gpus = [fake_gpu(i) for i in range(gpus)]
    return FakeNvml(list(gpus), **options)
