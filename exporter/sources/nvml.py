"""The NVML device source: real GPUs, their MIG instances and processes, through pynvml.

Rules every read follows:
- A function that answers NotSupported (or is missing from the driver or from pynvml)
  for a device is remembered per (device, function) and never asked again.
- Any other NVML error is counted in `snapshot.errors[(function, error name)]` and
  leaves that field None; the rest of the GPU is still read.
- GPU_IS_LOST or RESET_REQUIRED stops reading that GPU for this collection and marks
  it down. Later collections re-get its handle (one or two calls) before reading
  fields again, so a lost GPU costs little and a recovered one is served again.
- Identity (UUID, name, PCI bus id, memory total, driver version) is read once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any

from exporter.model import DeviceSnapshot, GpuReading, MigReading, ProcessReading
from exporter.sources.nvml_fields import (
    KIB,
    NVLINK_ALL_LINKS_SCOPE,
    WrappingCounter,
    clock_event_bits,
    decode_clock_events,
    field_value,
    mig_shape,
    text,
)
from exporter.sources.xid_events import XidWatcher, handle_key

log = logging.getLogger(__name__)

# nvmlProcessInfo_t.usedGpuMemory when the driver cannot tell (e.g. WDDM, some MIG setups).
_VALUE_NOT_AVAILABLE = (1 << 64) - 1
# Returned by _try when the device does not have the function (never asked again).
_UNSUPPORTED = object()


class NvmlUnavailable(RuntimeError):
    """NVML cannot start here: no NVIDIA driver, no GPU, or no pynvml."""


class _GpuLost(Exception):
    def __init__(self, function: str, error_name: str) -> None:
        super().__init__(f"{function} failed: {error_name}; the GPU must be reset or replaced")


@dataclass
class _Device:
    """What the source remembers about one GPU or MIG instance between collections."""

    unsupported: set[str] = field(default_factory=set)
    # Newest process-utilization sample seen (µs), so each sample is read once.
    last_seen_us: int = 0


@dataclass
class _Mig(_Device):
    uuid: str = ""
    profile: str = "unknown"
    gpu_instance_id: int = -1
    compute_instance_id: int = -1
    compute_fraction: float = 0.0
    memory_total_bytes: int | None = None


@dataclass
class _Gpu(_Device):
    index: int = 0
    handle: Any = None  # None: not connected (never, or lost since)
    error: str | None = None
    uuid: str = ""
    model: str = ""
    pci_bus_id: str = ""
    memory_total_bytes: int | None = None
    clock_events_supported: int | None = None
    clock_events_supported_read: bool = False
    mig_mode: bool | None = None
    max_mig_devices: int | None = None
    migs: dict[str, _Mig] = field(default_factory=dict)
    # Calls on MIG handles made before the instance is known (its UUID).
    mig_probe: _Device = field(default_factory=_Device)
    # Field requests that answered NotSupported, as (label, scopeId).
    unsupported_fields: set[tuple[str, int]] = field(default_factory=set)
    # NVLink scopes to ask: None = not decided yet, () = no NVLink.
    nvlink_scopes: tuple[int, ...] | None = None
    counters: dict[str, WrappingCounter] = field(default_factory=dict)
    xid_handle_key: int | None = None


class NvmlSource:
    """Reads every GPU on this node through NVML. Implements `DeviceSource`.

    `nvml` is the pynvml module (or a fake of it, in tests); None imports pynvml.
    `xid_events` starts a thread that waits for XID critical errors; `clock` gives the
    unix time of collections and of XID events; `xid_wait_ms` bounds how long `close()`
    waits for that thread.
    """

    name = "nvml"

    def __init__(
        self,
        nvml: ModuleType | Any | None = None,
        *,
        xid_events: bool = True,
        clock: Callable[[], float] = time.time,
        xid_wait_ms: int = 500,
    ) -> None:
        if xid_wait_ms <= 0:
            raise ValueError(f"xid_wait_ms must be a positive number of ms, got {xid_wait_ms}")
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._clock = clock
        self._closed = False
        self._errors: Counter[tuple[str, str]] = Counter()
        self._init_constants()
        self._start_nvml()
        self._driver_version = text(self._call(_Device(), "nvmlSystemGetDriverVersion") or "")
        self._xid: XidWatcher | None = self._create_xid_watcher(xid_wait_ms) if xid_events else None
        self._gpus = [_Gpu(index=i) for i in range(self._device_count)]
        for gpu in self._gpus:
            self._connect(gpu)
        if self._xid is not None:
            self._xid.start()

    # ------------------------------------------------------------------ protocol

    def sample(self) -> DeviceSnapshot:
        """Read every GPU once. One failing GPU is marked down; the others are read."""
        if self._closed:
            raise RuntimeError("NvmlSource.sample() called after close()")
        timestamp, monotonic = self._clock(), time.monotonic()
        gpus = tuple(self._read_gpu(gpu) for gpu in self._gpus)
        errors = Counter(self._errors)
        if self._xid is not None:
            errors.update(self._xid.errors())
        return DeviceSnapshot(
            timestamp=timestamp,
            monotonic=monotonic,
            source=self.name,
            gpus=gpus,
            errors=dict(errors),
        )

    def close(self) -> None:
        """Stop the XID thread and shut NVML down. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._xid is not None:
            self._xid.close()
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as error:
            self._count("nvmlShutdown", error)

    def __enter__(self) -> NvmlSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def xid_thread_running(self) -> bool:
        return self._xid is not None and self._xid.running

    # ------------------------------------------------------------------ setup

    def _init_constants(self) -> None:
        nvml = self._nvml
        self._unsupported_codes = {
            nvml.NVML_ERROR_NOT_SUPPORTED,
            nvml.NVML_ERROR_FUNCTION_NOT_FOUND,
        }
        self._down_codes = {nvml.NVML_ERROR_GPU_IS_LOST, nvml.NVML_ERROR_RESET_REQUIRED}
        # pynvml raises this (not an NVMLError) when an unversioned function is missing.
        mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
        self._mismatch_errors: tuple[type[BaseException], ...] = (mismatch,) if mismatch else ()
        self._clock_bits = clock_event_bits(nvml)

    def _start_nvml(self) -> None:
        try:
            self._nvml.nvmlInit()
        except self._nvml.NVMLError as error:
            raise NvmlUnavailable(
                f"NVML could not start ({_error_name(error)}: {error}). The NVML device "
                "source needs the NVIDIA driver: run the exporter on a GPU node (with the "
                "NVIDIA device plugin or container toolkit exposing the driver), or use "
                "the simulated source with --simulated."
            ) from error
        try:
            self._device_count = int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as error:
            self._nvml.nvmlShutdown()
            raise NvmlUnavailable(
                f"NVML started but could not count GPUs ({_error_name(error)}: {error}); "
                "check `nvidia-smi` on this node."
            ) from error

    def _create_xid_watcher(self, wait_ms: int) -> XidWatcher | None:
        try:
            event_set = self._nvml.nvmlEventSetCreate()
        except self._nvml.NVMLError as error:
            self._count("nvmlEventSetCreate", error)
            return None
        return XidWatcher(
            self._nvml, event_set, clock=self._clock, wait_ms=wait_ms, error_name=_error_name
        )

    def _connect(self, gpu: _Gpu) -> bool:
        """Get the GPU's handle and, the first time or after a swap, its identity."""
        try:
            handle = self._nvml.nvmlDeviceGetHandleByIndex(gpu.index)
        except self._nvml.NVMLError as error:
            self._count("nvmlDeviceGetHandleByIndex", error)
            gpu.error = f"nvmlDeviceGetHandleByIndex({gpu.index}) failed: {_error_name(error)}"
            return False
        try:
            uuid = self._call(gpu, "nvmlDeviceGetUUID", handle)
            if uuid is None:
                gpu.error = "nvmlDeviceGetUUID failed: the GPU cannot be identified"
                return False
            if text(uuid) != gpu.uuid:
                self._identify(gpu, handle, text(uuid))
        except _GpuLost as lost:
            gpu.error = str(lost)
            return False
        gpu.handle, gpu.error = handle, None
        self._register_xid(gpu)
        return True

    def _identify(self, gpu: _Gpu, handle: Any, uuid: str) -> None:
        """Static identity, read once; a different UUID in the slot starts afresh."""
        fresh = _Gpu(index=gpu.index, uuid=uuid)
        fresh.model = text(self._call(fresh, "nvmlDeviceGetName", handle) or "")
        pci = self._call(fresh, "nvmlDeviceGetPciInfo", handle)
        fresh.pci_bus_id = text(pci.busId) if pci is not None else ""
        for item in fields(_Gpu):
            setattr(gpu, item.name, getattr(fresh, item.name))

    def _register_xid(self, gpu: _Gpu) -> None:
        """Register the (new) handle for XID events; a recovered GPU needs it again."""
        if self._xid is None or "nvmlDeviceRegisterEvents" in gpu.unsupported:
            return
        key = handle_key(gpu.handle)
        if gpu.xid_handle_key == key:
            return
        try:
            self._nvml.nvmlDeviceRegisterEvents(
                gpu.handle, self._nvml.nvmlEventTypeXidCriticalError, self._xid.event_set
            )
        except self._nvml.NVMLError as error:
            if error.value in self._unsupported_codes:
                gpu.unsupported.add("nvmlDeviceRegisterEvents")
            else:
                self._count("nvmlDeviceRegisterEvents", error)
            return
        self._xid.watch(gpu.handle, gpu.uuid)
        gpu.xid_handle_key = key

    # ------------------------------------------------------------------ calls

    def _try(
        self,
        device: _Device,
        function: str,
        *args: Any,
        variant: str = "",
        no_data: Iterable[int] = (),
    ) -> Any:
        """Call one NVML function for one device.

        Returns its value; None after an error (counted) or a `no_data` code (not
        counted); _UNSUPPORTED when the device does not have the function. Raises
        _GpuLost when the GPU is lost.
        """
        key = f"{function}:{variant}" if variant else function
        if key in device.unsupported:
            return _UNSUPPORTED
        fn = getattr(self._nvml, function, None)
        if fn is None:  # an older pynvml
            device.unsupported.add(key)
            return _UNSUPPORTED
        try:
            return fn(*args)
        except self._mismatch_errors:
            device.unsupported.add(key)
            return _UNSUPPORTED
        except self._nvml.NVMLError as error:
            if error.value in self._unsupported_codes:
                device.unsupported.add(key)
                return _UNSUPPORTED
            if error.value in no_data:
                return None
            self._count(function, error)
            if error.value in self._down_codes:
                raise _GpuLost(function, _error_name(error)) from error
            return None

    def _call(self, device: _Device, function: str, *args: Any, **options: Any) -> Any:
        """Like _try, with None for unsupported."""
        value = self._try(device, function, *args, **options)
        return None if value is _UNSUPPORTED else value

    def _call_first(self, device: _Device, functions: tuple[str, ...], *args: Any) -> Any:
        """The first of several names (newest first) that the device supports."""
        for function in functions:
            value = self._try(device, function, *args)
            if value is not _UNSUPPORTED:
                return value
        return None

    def _count(self, function: str, error: BaseException) -> None:
        self._errors[(function, _error_name(error))] += 1

    # ------------------------------------------------------------------ one GPU

    def _read_gpu(self, gpu: _Gpu) -> GpuReading:
        if gpu.handle is None and not self._connect(gpu):
            return self._down(gpu)
        try:
            return self._read_fields(gpu)
        except _GpuLost as lost:
            gpu.handle, gpu.error = None, str(lost)
            return self._down(gpu)
        except Exception as error:  # a surprise from one GPU must not cost the others
            log.exception("reading GPU %d failed", gpu.index)
            self._errors[("sample", type(error).__name__)] += 1
            gpu.error = f"unexpected {type(error).__name__} while reading: {error}"
            return self._down(gpu)

    def _down(self, gpu: _Gpu) -> GpuReading:
        xid_counts, last_xid = self._xid.counts(gpu.uuid) if self._xid else ({}, None)
        return GpuReading(
            index=gpu.index,
            uuid=gpu.uuid,
            model=gpu.model,
            up=False,
            error=gpu.error,
            pci_bus_id=gpu.pci_bus_id,
            driver_version=self._driver_version,
            mig_mode=bool(gpu.mig_mode),
            memory_total_bytes=gpu.memory_total_bytes,
            xid_counts=xid_counts,
            last_xid_timestamp=last_xid,
        )

    def _read_fields(self, gpu: _Gpu) -> GpuReading:
        nvml, handle = self._nvml, gpu.handle
        mig_mode = self._mig_mode(gpu, handle)
        utilization = self._call(gpu, "nvmlDeviceGetUtilizationRates", handle)
        total, used, reserved = self._memory(gpu, handle)
        if total is not None:
            gpu.memory_total_bytes = total
        power = self._call(gpu, "nvmlDeviceGetPowerUsage", handle)
        limit = self._call(gpu, "nvmlDeviceGetEnforcedPowerLimit", handle)
        energy = self._call(gpu, "nvmlDeviceGetTotalEnergyConsumption", handle)
        temperature = self._call(gpu, "nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
        sm_clock = self._call(
            gpu, "nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_SM, variant="sm"
        )
        memory_clock = self._call(
            gpu, "nvmlDeviceGetClockInfo", handle, nvml.NVML_CLOCK_MEM, variant="mem"
        )
        ecc = {
            kind: self._call(
                gpu,
                "nvmlDeviceGetTotalEccErrors",
                handle,
                error_type,
                nvml.NVML_VOLATILE_ECC,
                variant=kind,
            )
            for kind, error_type in (
                ("corrected", nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                ("uncorrected", nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED),
            )
        }
        remapped = self._call(gpu, "nvmlDeviceGetRemappedRows", handle)
        links = self._link_counters(gpu, handle)
        processes = self._processes(gpu, handle)
        migs = self._mig_instances(gpu, handle) if mig_mode else ()
        xid_counts, last_xid = self._xid.counts(gpu.uuid) if self._xid else ({}, None)
        return GpuReading(
            index=gpu.index,
            uuid=gpu.uuid,
            model=gpu.model,
            pci_bus_id=gpu.pci_bus_id,
            driver_version=self._driver_version,
            mig_mode=mig_mode,
            utilization=_percent(utilization.gpu) if utilization is not None else None,
            memory_utilization=_percent(utilization.memory) if utilization is not None else None,
            memory_total_bytes=gpu.memory_total_bytes,
            memory_used_bytes=used,
            memory_reserved_bytes=reserved,
            power_watts=power / 1000 if power is not None else None,
            power_limit_watts=limit / 1000 if limit is not None else None,
            energy_joules=energy / 1000 if energy is not None else None,
            temperature_celsius=float(temperature) if temperature is not None else None,
            sm_clock_hertz=sm_clock * 1e6 if sm_clock is not None else None,
            memory_clock_hertz=memory_clock * 1e6 if memory_clock is not None else None,
            clock_events=self._clock_events(gpu, handle),
            ecc_corrected_total=ecc["corrected"],
            ecc_uncorrected_total=ecc["uncorrected"],
            remapped_rows_correctable=remapped[0] if remapped is not None else None,
            remapped_rows_uncorrectable=remapped[1] if remapped is not None else None,
            row_remap_pending=bool(remapped[2]) if remapped is not None else None,
            row_remap_failure=bool(remapped[3]) if remapped is not None else None,
            pcie_tx_bytes_total=links["pcie_tx"],
            pcie_rx_bytes_total=links["pcie_rx"],
            nvlink_tx_bytes_total=links["nvlink_tx"],
            nvlink_rx_bytes_total=links["nvlink_rx"],
            xid_counts=xid_counts,
            last_xid_timestamp=last_xid,
            processes=processes,
            mig=migs,
        )

    def _mig_mode(self, gpu: _Gpu, handle: Any) -> bool:
        modes = self._call(gpu, "nvmlDeviceGetMigMode", handle)
        enabled = modes is not None and modes[0] == self._nvml.NVML_DEVICE_MIG_ENABLE
        if gpu.mig_mode is not None and enabled != gpu.mig_mode:
            # What the GPU supports depends on the mode (utilization is NotSupported
            # with MIG on): forget what was learnt under the other mode.
            gpu.unsupported.clear()
            gpu.migs.clear()
        gpu.mig_mode = enabled
        return enabled

    def _memory(self, device: _Device, handle: Any) -> tuple[int | None, int | None, int | None]:
        """(total, used, reserved) from memory info v2, or v1 (no reserved) where v2 is
        missing. v2's `used` excludes what the driver reserves; v1's includes it."""
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if version is not None:
            info = self._try(device, "nvmlDeviceGetMemoryInfo", handle, version, variant="v2")
            if info is not _UNSUPPORTED:
                if info is None:
                    return None, None, None
                return int(info.total), int(info.used), int(info.reserved)
        info = self._call(device, "nvmlDeviceGetMemoryInfo", handle)
        if info is None:
            return None, None, None
        return int(info.total), int(info.used), None

    def _clock_events(self, gpu: _Gpu, handle: Any) -> dict[str, bool]:
        if not gpu.clock_events_supported_read:
            gpu.clock_events_supported = self._call_first(
                gpu,
                (
                    "nvmlDeviceGetSupportedClocksEventReasons",
                    "nvmlDeviceGetSupportedClocksThrottleReasons",
                ),
                handle,
            )
            gpu.clock_events_supported_read = True
        mask = self._call_first(
            gpu,
            ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"),
            handle,
        )
        if mask is None:
            return {}
        return decode_clock_events(int(mask), self._clock_bits, gpu.clock_events_supported)

    # ------------------------------------------------------------------ PCIe, NVLink

    def _link_counters(self, gpu: _Gpu, handle: Any) -> dict[str, int | None]:
        """PCIe and NVLink byte counters in one nvmlDeviceGetFieldValues call."""
        nvml = self._nvml
        out: dict[str, int | None] = dict.fromkeys(("pcie_tx", "pcie_rx", "nvlink_tx", "nvlink_rx"))
        if gpu.nvlink_scopes is None:
            gpu.nvlink_scopes = (NVLINK_ALL_LINKS_SCOPE,)
        requests = [
            (label, field_id, 0)
            for label, field_id in (
                ("pcie_tx", nvml.NVML_FI_DEV_PCIE_COUNT_TX_BYTES),
                ("pcie_rx", nvml.NVML_FI_DEV_PCIE_COUNT_RX_BYTES),
            )
            if (label, 0) not in gpu.unsupported_fields
        ]
        for label, field_id in (
            ("nvlink_tx", nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX),
            ("nvlink_rx", nvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX),
        ):
            requests += [
                (label, field_id, scope)
                for scope in gpu.nvlink_scopes
                if (label, scope) not in gpu.unsupported_fields
            ]
        if not requests:
            return out
        values = self._call(
            gpu, "nvmlDeviceGetFieldValues", handle, [(f, s) for _, f, s in requests]
        )
        if values is None:
            return out
        raw: dict[str, list[tuple[int, int]]] = defaultdict(list)
        failed: set[str] = set()
        for (label, _, scope), value in zip(requests, values, strict=False):
            code = int(value.nvmlReturn)
            if code == nvml.NVML_SUCCESS:
                number, width = field_value(nvml, value)
                raw[label].append((int(number), width))
            elif code in self._unsupported_codes:
                gpu.unsupported_fields.add((label, scope))
            else:
                error = nvml.NVMLError(code)
                self._count("nvmlDeviceGetFieldValues", error)
                if code in self._down_codes:
                    raise _GpuLost("nvmlDeviceGetFieldValues", _error_name(error))
                failed.add(label)
        for label in ("pcie_tx", "pcie_rx"):
            if raw[label] and label not in failed:
                number, width = raw[label][0]
                out[label] = self._counter(gpu, label).update(number, width)
        if self._settle_nvlink_scopes(gpu, handle):
            return self._link_counters(gpu, handle)
        for label in ("nvlink_tx", "nvlink_rx"):
            # A sum with a link missing would look like a counter reset: skip it instead.
            if raw[label] and label not in failed:
                kib = sum(number for number, _ in raw[label])
                out[label] = self._counter(gpu, label).update(kib * KIB, 64)
        return out

    def _settle_nvlink_scopes(self, gpu: _Gpu, handle: Any) -> bool:
        """Drop scopes that answered NotSupported. Where the all-links aggregate is not
        supported (older drivers), switch to asking each link; True then, so the caller
        reads again at once rather than miss this collection."""
        scopes = gpu.nvlink_scopes or ()
        kept = tuple(
            scope
            for scope in scopes
            if ("nvlink_tx", scope) not in gpu.unsupported_fields
            or ("nvlink_rx", scope) not in gpu.unsupported_fields
        )
        if scopes == (NVLINK_ALL_LINKS_SCOPE,) and not kept:
            gpu.nvlink_scopes = tuple(range(self._nvlink_count(gpu, handle)))
            return bool(gpu.nvlink_scopes)
        gpu.nvlink_scopes = kept
        return False

    def _nvlink_count(self, gpu: _Gpu, handle: Any) -> int:
        field_id = self._nvml.NVML_FI_DEV_NVLINK_LINK_COUNT
        values = self._call(gpu, "nvmlDeviceGetFieldValues", handle, [field_id], variant="links")
        if not values or int(values[0].nvmlReturn) != self._nvml.NVML_SUCCESS:
            return 0
        return int(field_value(self._nvml, values[0])[0])

    @staticmethod
    def _counter(gpu: _Gpu, label: str) -> WrappingCounter:
        return gpu.counters.setdefault(label, WrappingCounter())

    # ------------------------------------------------------------------ processes

    def _processes(self, device: _Device, handle: Any) -> tuple[ProcessReading, ...]:
        listed = self._call_first(
            device,
            ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"),
            handle,
        )
        if listed is None:
            return ()
        memory: dict[int, int | None] = {}
        for process in listed:
            used = process.usedGpuMemory
            used = None if used is None or used == _VALUE_NOT_AVAILABLE else int(used)
            pid = int(process.pid)
            if pid in memory:
                # Listed twice (once per MIG instance it uses): both amounts, if known.
                previous = memory[pid]
                used = None if previous is None or used is None else previous + used
            memory[pid] = used
        utilization = self._process_utilization(device, handle)
        return tuple(
            ProcessReading(
                pid=pid,
                used_memory_bytes=used,
                sm_utilization=utilization.get(pid, (None, None))[0],
                memory_utilization=utilization.get(pid, (None, None))[1],
            )
            for pid, used in sorted(memory.items())
        )

    def _process_utilization(self, device: _Device, handle: Any) -> dict[int, tuple[float, float]]:
        """pid -> (SM, memory) utilization averaged over the samples newer than the last
        collection. NOT_FOUND means no sample in that window: not an error. pynvml
        raises NVMLError(SUCCESS) when the driver reports zero samples."""
        nvml = self._nvml
        samples = self._call(
            device,
            "nvmlDeviceGetProcessUtilization",
            handle,
            device.last_seen_us,
            no_data=(nvml.NVML_ERROR_NOT_FOUND, nvml.NVML_SUCCESS),
        )
        if not samples:
            return {}
        sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        newest = device.last_seen_us
        for sample in samples:
            stamp = int(sample.timeStamp)
            if stamp <= device.last_seen_us:
                continue
            newest = max(newest, stamp)
            acc = sums[int(sample.pid)]
            acc[0] += sample.smUtil
            acc[1] += sample.memUtil
            acc[2] += 1
        device.last_seen_us = newest
        return {pid: (sm / n / 100, mem / n / 100) for pid, (sm, mem, n) in sums.items()}

    # ------------------------------------------------------------------ MIG

    def _mig_instances(self, gpu: _Gpu, handle: Any) -> tuple[MigReading, ...]:
        """Every MIG device of a MIG-enabled GPU; empty slots answer NOT_FOUND."""
        if gpu.max_mig_devices is None:
            gpu.max_mig_devices = self._call(gpu, "nvmlDeviceGetMaxMigDeviceCount", handle)
            if gpu.max_mig_devices is None:
                return ()
        readings, present = [], set()
        for slot in range(gpu.max_mig_devices):
            mig_handle = self._call(
                gpu,
                "nvmlDeviceGetMigDeviceHandleByIndex",
                handle,
                slot,
                no_data=(self._nvml.NVML_ERROR_NOT_FOUND,),
            )
            if mig_handle is None:
                continue
            uuid = self._call(gpu.mig_probe, "nvmlDeviceGetUUID", mig_handle)
            if uuid is None:
                continue
            mig = gpu.migs.get(text(uuid)) or self._identify_mig(gpu, mig_handle, text(uuid))
            present.add(mig.uuid)
            readings.append(self._read_mig(mig, mig_handle))
        for uuid in set(gpu.migs) - present:  # instance destroyed
            del gpu.migs[uuid]
        return tuple(readings)

    def _identify_mig(self, gpu: _Gpu, handle: Any, uuid: str) -> _Mig:
        mig = _Mig(uuid=uuid)
        gi = self._call(mig, "nvmlDeviceGetGpuInstanceId", handle)
        ci = self._call(mig, "nvmlDeviceGetComputeInstanceId", handle)
        name = self._call(mig, "nvmlDeviceGetName", handle)
        attributes = self._call(mig, "nvmlDeviceGetAttributes", handle)
        # The max MIG device count is the number of compute slices (7 on A100/H100/H200,
        # 4 on A30): the share of one slice.
        shape = mig_shape(text(name) if name else None, attributes, gpu.max_mig_devices)
        mig.gpu_instance_id = gi if gi is not None else -1
        mig.compute_instance_id = ci if ci is not None else -1
        mig.profile = shape.profile
        mig.compute_fraction = shape.compute_fraction
        mig.memory_total_bytes = shape.memory_total_bytes
        gpu.migs[uuid] = mig
        return mig

    def _read_mig(self, mig: _Mig, handle: Any) -> MigReading:
        total, used, _ = self._memory(mig, handle)
        if total is not None:
            mig.memory_total_bytes = total
        utilization = self._call(mig, "nvmlDeviceGetUtilizationRates", handle)
        return MigReading(
            uuid=mig.uuid,
            profile=mig.profile,
            gpu_instance_id=mig.gpu_instance_id,
            compute_instance_id=mig.compute_instance_id,
            compute_fraction=mig.compute_fraction,
            memory_total_bytes=mig.memory_total_bytes,
            memory_used_bytes=used,
            utilization=_percent(utilization.gpu) if utilization is not None else None,
            processes=self._processes(mig, handle),
        )


def _percent(value: int | float) -> float:
    return float(value) / 100


def _error_name(error: BaseException) -> str:
    """The error's name as pynvml's class names it: NotSupported, GpuIsLost, Unknown..."""
    name = type(error).__name__
    if name.startswith("NVMLError_"):
        return name.removeprefix("NVMLError_")
    code = getattr(error, "value", None)
    return f"Code{code}" if code is not None else name


def _import_pynvml() -> ModuleType:
    try:
        import pynvml
    except ImportError as error:
        raise NvmlUnavailable(
            "pynvml is not installed: `pip install nvidia-ml-py`, or use the simulated "
            "source with --simulated."
        ) from error
    return pynvml
