"""XID critical errors from an NVML event set, counted on a thread of their own.

NVML delivers XIDs only to a waiter (nvmlEventSetWait_v2); a collection loop that
polled would miss those that arrive between polls. The waiter blocks with a timeout
so that `close()` can stop it within one timeout.
"""

from __future__ import annotations

import ctypes
import threading
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

WAIT_FUNCTION = "nvmlEventSetWait_v2"


def handle_key(handle: Any) -> int:
    """A key equal for two handles of the same device: pynvml handles are ctypes pointers,
    and two pointer objects to one device compare unequal, so compare their addresses."""
    try:
        return ctypes.cast(handle, ctypes.c_void_p).value or id(handle)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


class XidWatcher:
    """Waits on one event set for XID events of the devices given to `watch()`."""

    def __init__(
        self,
        nvml: ModuleType | Any,
        event_set: Any,
        *,
        clock: Callable[[], float],
        wait_ms: int,
        error_name: Callable[[BaseException], str],
    ) -> None:
        self._nvml = nvml
        self.event_set = event_set
        self._clock = clock
        self._wait_ms = wait_ms
        self._error_name = error_name
        self._lock = threading.Lock()
        self._uuid_by_handle: dict[int, str] = {}
        self._counts: dict[str, Counter[int]] = {}
        self._last: dict[str, float] = {}
        self._errors: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nvml-xid-events", daemon=True)

    def watch(self, handle: Any, uuid: str) -> None:
        """Attribute events of this (already registered) handle to the GPU `uuid`."""
        with self._lock:
            self._uuid_by_handle[handle_key(handle)] = uuid

    def start(self) -> None:
        self._thread.start()

    def counts(self, uuid: str) -> tuple[dict[int, int], float | None]:
        """XID code -> events seen, and the unix time of the last one, for one GPU."""
        with self._lock:
            return dict(self._counts.get(uuid, {})), self._last.get(uuid)

    def errors(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._errors)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop the waiter, then free the event set (never while a wait may be using it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._wait_ms / 1000 * 2 + 1)
        if not self._thread.is_alive():
            try:
                self._nvml.nvmlEventSetFree(self.event_set)
            except self._nvml.NVMLError as error:
                self._count("nvmlEventSetFree", error)

    def _run(self) -> None:
        timeout_code = self._nvml.NVML_ERROR_TIMEOUT
        xid_type = self._nvml.nvmlEventTypeXidCriticalError
        while not self._stop.is_set():
            try:
                data = self._nvml.nvmlEventSetWait_v2(self.event_set, self._wait_ms)
            except self._nvml.NVMLError as error:
                if error.value != timeout_code:
                    self._count(WAIT_FUNCTION, error)
                    # A broken event set fails at once: do not spin on it.
                    self._stop.wait(self._wait_ms / 1000)
                continue
            if data.eventType & xid_type:
                self._record(data)

    def _record(self, data: Any) -> None:
        now = self._clock()
        with self._lock:
            uuid = self._uuid_by_handle.get(handle_key(data.device))
            if uuid is None:
                self._errors[(WAIT_FUNCTION, "UnknownDevice")] += 1
                return
            self._counts.setdefault(uuid, Counter())[int(data.eventData)] += 1
            self._last[uuid] = now

    def _count(self, function: str, error: BaseException) -> None:
        with self._lock:
            self._errors[(function, self._error_name(error))] += 1
