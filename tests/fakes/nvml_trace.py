"""Record what NVML answers on a real GPU, and replay it to the NVML source in tests.

`RecordingNvml(pynvml)` stands in for the pynvml module: every NVML function call goes
through to the real library and is written down (function, arguments, answer or
error, thread, time). `ReplayedNvml(trace)` is a fake pynvml that gives the recorded
answers back, so the source under test reads exactly what a real GPU said.

    nvml = RecordingNvml(pynvml)
    source = NvmlSource(nvml)            # ... sample() as often as wanted
    trace = nvml.trace(snapshots=[snapshot_json(s) for s in taken])

    nvml = ReplayedNvml(trace)
    source = NvmlSource(nvml)            # the same samples, the same answers
    assert not nvml.divergences

Answers are kept exactly: ctypes structures and unions as their raw bytes (pynvml's
own classes, rebuilt with from_buffer_copy; recorder and replayer must use the same
pynvml version and the same ABI, x86-64 Linux here), device and event-set handles as
their addresses (replayed as c_void_p of the same address, so the XID watcher's
handle keys and the event data's device pointer still agree), pynvml's friendly
objects as dicts, NVML errors as their return codes.

Replay matches a call by (function, arguments) and hands out that call's answers in
the recorded order, whatever thread asks, so the XID thread's waits do not disturb the
sampling thread's sequence. A call the recording does not have is a divergence: it is
listed in `divergences` and raised as an NVML error (UNKNOWN), so the source goes on
and the test says what differed. A wait for events beyond the recorded ones times
out, as a healthy GPU's does.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
# Calls that block until an event arrives: replayed past the recording as timeouts.
WAIT_FUNCTIONS = frozenset({"nvmlEventSetWait", "nvmlEventSetWait_v2"})


class TraceError(ValueError):
    """The trace cannot be read or replayed by this pynvml."""


# --------------------------------------------------------------------- values


def _is_pointer(value: Any) -> bool:
    return isinstance(value, ctypes._Pointer | ctypes.c_void_p)


def _address(value: Any) -> int:
    return ctypes.cast(value, ctypes.c_void_p).value or 0


def encode(value: Any, opaque: Any = None) -> Any:
    """A pynvml argument or answer as JSON; `_Decoder` gives it back. `opaque` numbers
    handles that are not ctypes pointers (a fake pynvml's), else they are refused."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    if isinstance(value, list):
        return [encode(item, opaque) for item in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(item, opaque) for item in value]}
    if _is_pointer(value):
        return {"handle": _address(value)}
    if isinstance(value, ctypes.Structure | ctypes.Union):
        return {"struct": type(value).__name__, "hex": bytes(value).hex()}
    if isinstance(value, ctypes.Array):
        element = value._type_
        if not issubclass(element, ctypes.Structure | ctypes.Union):
            return [encode(item) for item in value]
        return {"array": element.__name__, "hex": [bytes(item).hex() for item in value]}
    if isinstance(value, ctypes._SimpleCData):
        return encode(value.value)
    if type(value).__name__ == "nvmlFriendlyObject":
        return {"friendly": {key: encode(item, opaque) for key, item in vars(value).items()}}
    if opaque is not None:
        return {"handle": opaque(value)}
    raise TypeError(f"cannot record a {type(value).__name__} from NVML: {value!r}")


class _Decoder:
    """Rebuilds recorded values with the given pynvml's classes."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._handles: dict[int, ctypes.c_void_p] = {}
        self._lock = threading.Lock()

    def handle(self, address: int) -> ctypes.c_void_p:
        """One object per address: the source keeps handles and compares them."""
        with self._lock:
            return self._handles.setdefault(address, ctypes.c_void_p(address))

    def _class(self, name: str) -> type:
        cls = getattr(self._nvml, name, None)
        if cls is None:
            raise TraceError(
                f"this pynvml has no {name}: replay the trace with the nvidia-ml-py "
                "version it was recorded with (see its 'pynvml' field)"
            )
        return cls

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(item) for item in value]
        if not isinstance(value, dict):
            return value
        if "bytes" in value:
            return bytes.fromhex(value["bytes"])
        if "tuple" in value:
            return tuple(self(item) for item in value["tuple"])
        if "handle" in value:
            return self.handle(value["handle"])
        if "struct" in value:
            return self._struct(self._class(value["struct"]), value["hex"])
        if "array" in value:
            element = self._class(value["array"])
            return (element * len(value["hex"]))(
                *(self._struct(element, raw) for raw in value["hex"])
            )
        if "friendly" in value:
            return self._nvml.nvmlFriendlyObject(
                {key: self(item) for key, item in value["friendly"].items()}
            )
        raise TraceError(f"unknown recorded value {value!r}")

    @staticmethod
    def _struct(cls: type, raw: str) -> Any:
        data = bytes.fromhex(raw)
        if len(data) != ctypes.sizeof(cls):
            raise TraceError(
                f"{cls.__name__} was {len(data)} bytes when recorded and is "
                f"{ctypes.sizeof(cls)} bytes in this pynvml: use the recording's version"
            )
        return cls.from_buffer_copy(data)


def _is_function(name: str, value: Any) -> bool:
    """An NVML function (pynvml's, or a fake's bound method), not a class or constant."""
    return name.startswith("nvml") and callable(value) and not isinstance(value, type)


def _key(function: str, args: list[Any]) -> str:
    return json.dumps([function, args], separators=(",", ":"))


def snapshot_json(snapshot: Any) -> Any:
    """A DeviceSnapshot (or any dataclass tree) as plain JSON: tuple keys joined by '/'."""

    def plain(value: Any) -> Any:
        if is_dataclass(value) and not isinstance(value, type):
            return plain(asdict(value))
        if isinstance(value, Mapping):
            return {
                "/".join(map(str, key)) if isinstance(key, tuple) else str(key): plain(item)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return plain(snapshot)


# --------------------------------------------------------------------- recording


class RecordingNvml:
    """The pynvml module, with every NVML function call written down."""

    def __init__(self, nvml: Any, clock: Any = time.monotonic) -> None:
        self._nvml = nvml
        self._clock = clock
        self._start = clock()
        self._lock = threading.Lock()
        self._calls: list[dict[str, Any]] = []
        self._absent: set[str] = set()
        self._wrapped: dict[str, Any] = {}
        self._opaque: dict[int, tuple[int, Any]] = {}  # id -> (number, object kept alive)

    def _number(self, handle: Any) -> int:
        with self._lock:
            known = self._opaque.setdefault(id(handle), (len(self._opaque) + 1, handle))
        return known[0]

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._nvml, name, None)
        if real is None:
            if name.startswith("nvml"):
                with self._lock:
                    self._absent.add(name)  # the source asks for it and learns it is missing
            raise AttributeError(name)
        if not _is_function(name, real):
            return real  # constants, structure classes, error classes
        wrapped = self._wrapped.get(name)
        if wrapped is None:
            wrapped = self._wrapped.setdefault(name, self._recorder(name, real))
        return wrapped

    def _recorder(self, name: str, real: Any) -> Any:
        def call(*args: Any) -> Any:
            entry: dict[str, Any] = {"fn": name, "args": encode(list(args), self._number)}
            entry["thread"] = threading.current_thread().name
            entry["t"] = round(self._clock() - self._start, 6)
            try:
                result = real(*args)
            except self._nvml.NVMLError as error:
                entry["error"] = int(error.value)
                self._append(entry)
                raise
            except Exception as error:
                entry["exception"] = f"{type(error).__name__}: {error}"
                self._append(entry)
                raise
            entry["result"] = encode(result, self._number)
            self._append(entry)
            return result

        call.__name__ = name
        return call

    def _append(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._calls.append(entry)

    def trace(self, **extra: Any) -> dict[str, Any]:
        """The recording so far, with `extra` fields (snapshots, notes)."""
        with self._lock:
            calls, absent = list(self._calls), sorted(self._absent)
        version = getattr(self._nvml, "__version__", None)
        if version is None:
            try:
                from importlib.metadata import version as package_version

                version = package_version("nvidia-ml-py")
            except Exception:  # a fake module in tests
                version = "unknown"
        return {"format": FORMAT, "pynvml": version, "absent": absent, "calls": calls, **extra}


def save(trace: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    data = json.dumps(trace, separators=(",", ":")).encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = path.read_bytes()
    trace = json.loads(gzip.decompress(data) if path.suffix == ".gz" else data)
    if trace.get("format") != FORMAT:
        raise TraceError(
            f"{path}: trace format {trace.get('format')!r}, this reader knows {FORMAT}"
        )
    return trace


# --------------------------------------------------------------------- replay


class ReplayedNvml:
    """A fake pynvml answering from a trace. Constants, structure and error classes are
    the installed pynvml's (`nvml`), as the real module's would be."""

    def __init__(self, trace: Mapping[str, Any], nvml: Any = None) -> None:
        if nvml is None:
            import pynvml as nvml
        self._nvml = nvml
        self._decode = _Decoder(nvml)
        self._answers: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._functions: set[str] = set()
        for call in trace["calls"]:
            self._answers[_key(call["fn"], call["args"])].append(call)
            self._functions.add(call["fn"])
        self._absent = set(trace.get("absent", ()))
        self._lock = threading.Lock()
        self.divergences: list[str] = []

    def __getattr__(self, name: str) -> Any:
        if name in self._absent:
            raise AttributeError(name)
        real = getattr(self._nvml, name)
        if not _is_function(name, real):
            return real
        return lambda *args: self._replay(name, args)

    def remaining(self, functions: Iterable[str] | None = None) -> list[str]:
        """Recorded calls not asked again (optionally of these functions only)."""
        wanted = set(functions) if functions is not None else None
        with self._lock:
            return [
                key
                for key, queue in self._answers.items()
                for call in queue
                if wanted is None or call["fn"] in wanted
            ]

    def _replay(self, name: str, args: tuple[Any, ...]) -> Any:
        key = _key(name, encode(list(args)))
        with self._lock:
            queue = self._answers.get(key)
            call = queue.popleft() if queue else None
            if call is None and name not in WAIT_FUNCTIONS:
                self.divergences.append(key)
        if call is None:
            if name in WAIT_FUNCTIONS:
                time.sleep(min(float(args[-1]) / 1000, 0.05))
                raise self._nvml.NVMLError(self._nvml.NVML_ERROR_TIMEOUT)
            raise self._nvml.NVMLError(self._nvml.NVML_ERROR_UNKNOWN)
        if "error" in call:
            raise self._nvml.NVMLError(call["error"])
        if "exception" in call:
            raise RuntimeError(f"recorded: {call['exception']}")
        return self._decode(call["result"])
