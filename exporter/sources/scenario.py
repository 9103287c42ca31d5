"""Scenario files for the simulated device source: parse and validate.

A scenario describes one simulated GPU node: its GPUs, the pods that hold them and
a list of timed phases of load and faults. `load_scenario("default")` loads a
built-in scenario (exporter/sources/scenarios/*.yaml); `load_scenario("my.yaml")`
loads a file. `scenarios/default.yaml` is the annotated example of every key.

Top level:
  node: str                       node name (default "sim-node")
  description: str                free text
  at_end: loop | hold             after the last phase: start again, or stay in it
  noise: float                    relative noise on readings, 0-0.5 (default 0.02)
  gpus: [GPU entry]               GPUs get indices 0, 1, ... in file order
  pods: [pod entry]
  phases: [phase entry]

GPU entry: model, count (default 1), memory_gib and power_limit_watts (default from
the model), mig: [profile name | {profile, count}], time_slicing: {replicas: N}.
Pod entry: namespace, pod, container (default "main"), uid (default derived from
namespace/pod), resource (default from the device), devices: [{gpu: N} |
{gpu: N, mig: K}] (K: position of the instance in the GPU's mig list, from 0),
pids: [int] (pid i runs on device i modulo the number of devices).
Phase entry: name, duration_seconds, pods: {"namespace/pod": {utilization,
memory_gib} | "absent"}, pod_defaults: {utilization, memory_gib} (load of pods not
listed; without it they are absent in the phase), gpus: {N: {utilization, memory_gib,
power_watts, temperature_celsius, processes: [{pid, utilization, memory_gib}]}}
(load outside any pod), faults: [{gpu, at_seconds, one of xid: code |
ecc_uncorrected: n | ecc_corrected: n | row_remap_pending: true |
row_remap_failure: true | thermal_throttle: true | lost: true}].
"""

from __future__ import annotations

import difflib
import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

GIB = 1024**3
MIB = 1024**2
BUILTIN_DIR = Path(__file__).with_name("scenarios")
MIG_COMPUTE_SLICES = 7
MIG_MEMORY_SLICES = 8


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file, the entry and the fix."""


@dataclass(frozen=True)
class MigProfile:
    """A MIG GPU instance profile: its slices of the GPU and how many fit on one GPU."""

    name: str
    compute_slices: int  # of 7
    memory_slices: int  # of 8
    max_instances: int


def _profiles(one: int, two: int, half: int, full: int) -> dict[str, MigProfile]:
    """The seven profiles of a 7-slice GPU (A100, H100, H200), named by memory size.

    Source: NVIDIA MIG user guide, "Supported MIG Profiles" (A100-40GB: 1g.5gb ...
    7g.40gb; 80GB parts: 1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb).
    """
    table = [
        (f"1g.{one}gb", 1, 1, 7),
        (f"1g.{one}gb+me", 1, 1, 1),
        (f"1g.{two}gb", 1, 2, 4),
        (f"2g.{two}gb", 2, 2, 3),
        (f"3g.{half}gb", 3, 4, 2),
        (f"4g.{half}gb", 4, 4, 1),
        (f"7g.{full}gb", 7, 8, 1),
    ]
    return {name: MigProfile(name, c, m, n) for name, c, m, n in table}


MIG_40GB = _profiles(5, 10, 20, 40)
MIG_80GB = _profiles(10, 20, 40, 80)
MIG_94GB = _profiles(12, 24, 47, 94)
MIG_141GB = _profiles(18, 35, 71, 141)


@dataclass(frozen=True)
class GpuModel:
    """Defaults of a GPU model, as NVML names it (the price book keys on the name)."""

    name: str
    memory_mib: int
    power_limit_watts: float
    idle_watts: float
    max_sm_clock_mhz: int
    memory_clock_mhz: int
    pcie_bytes_per_second: float  # per direction
    nvlink_bytes_per_second: float  # per direction, all links; 0: no NVLink
    mig_profiles: Mapping[str, MigProfile] = field(default_factory=dict)


GPU_MODELS: dict[str, GpuModel] = {
    m.name: m
    for m in (
        GpuModel("NVIDIA H100 80GB HBM3", 81559, 700, 70, 1980, 2619, 64e9, 450e9, MIG_80GB),
        GpuModel("NVIDIA H100 PCIe", 81559, 350, 50, 1755, 1593, 64e9, 0, MIG_80GB),
        GpuModel("NVIDIA H100 NVL", 95830, 400, 55, 1785, 2619, 64e9, 300e9, MIG_94GB),
        GpuModel("NVIDIA H200", 143771, 700, 75, 1980, 3201, 64e9, 450e9, MIG_141GB),
        GpuModel("NVIDIA A100-SXM4-80GB", 81920, 400, 55, 1410, 1593, 32e9, 300e9, MIG_80GB),
        GpuModel("NVIDIA A100-SXM4-40GB", 40960, 400, 50, 1410, 1215, 32e9, 300e9, MIG_40GB),
        GpuModel("NVIDIA A100 80GB PCIe", 81920, 300, 45, 1410, 1512, 32e9, 0, MIG_80GB),
        GpuModel("NVIDIA A100-PCIE-40GB", 40960, 250, 40, 1410, 1215, 32e9, 0, MIG_40GB),
        GpuModel("NVIDIA L40S", 46068, 350, 35, 2520, 9001, 32e9, 0),
    )
}


@dataclass(frozen=True)
class MigInstanceSpec:
    position: int  # in the GPU's mig list, from 0
    profile: MigProfile
    memory_bytes: int

    @property
    def compute_fraction(self) -> float:
        return self.profile.compute_slices / MIG_COMPUTE_SLICES


@dataclass(frozen=True)
class GpuSpec:
    index: int
    model: GpuModel
    memory_bytes: int
    power_limit_watts: float
    mig: tuple[MigInstanceSpec, ...] = ()
    replicas: int = 1  # > 1: time-sliced among up to this many pods

    @property
    def mig_mode(self) -> bool:
        return bool(self.mig)

    @property
    def time_sliced(self) -> bool:
        return self.replicas > 1


@dataclass(frozen=True)
class DeviceRef:
    gpu: int
    mig: int | None = None  # position of the MIG instance on the GPU


@dataclass(frozen=True)
class PodSpec:
    namespace: str
    pod: str
    container: str
    uid: str
    resource: str
    devices: tuple[DeviceRef, ...]
    pids: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"

    def pids_on(self, position: int) -> tuple[int, ...]:
        """Pids running on the pod's `position`-th device (pid i on device i mod n)."""
        n = len(self.devices)
        return tuple(pid for i, pid in enumerate(self.pids) if i % n == position)


@dataclass(frozen=True)
class PodLoad:
    utilization: float = 0.0  # of each device the pod holds (of the instance for MIG)
    memory_bytes: int = 0  # on each device the pod holds


@dataclass(frozen=True)
class ProcessLoad:
    """A process on a GPU outside any pod (the kubelet does not know it)."""

    pid: int
    utilization: float
    memory_bytes: int


@dataclass(frozen=True)
class GpuLoad:
    utilization: float = 0.0  # busy time with no process visible
    memory_bytes: int = 0
    power_watts: float | None = None  # replaces the power model
    temperature_celsius: float | None = None
    processes: tuple[ProcessLoad, ...] = ()


EVENT_FAULTS = ("xid", "ecc_uncorrected", "ecc_corrected", "row_remap_pending", "row_remap_failure")
STATE_FAULTS = ("thermal_throttle", "lost")


@dataclass(frozen=True)
class Fault:
    """Events happen once each time the phase passes `at_seconds`; states last from
    `at_seconds` to the end of the phase."""

    gpu: int
    at_seconds: float
    kind: str  # one of EVENT_FAULTS or STATE_FAULTS
    value: int = 1  # the XID code, or the ECC error count

    @property
    def is_state(self) -> bool:
        return self.kind in STATE_FAULTS


@dataclass(frozen=True)
class Phase:
    name: str
    duration_seconds: float
    pods: Mapping[str, PodLoad]  # only the pods present in this phase
    gpus: Mapping[int, GpuLoad] = field(default_factory=dict)
    faults: tuple[Fault, ...] = ()


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str  # file path or "<inline>", for messages
    node: str
    at_end: str  # "loop" or "hold"
    noise: float
    gpus: tuple[GpuSpec, ...]
    pods: tuple[PodSpec, ...]
    phases: tuple[Phase, ...]
    description: str = ""

    def phase_index(self, name: str) -> int:
        for i, phase in enumerate(self.phases):
            if phase.name == name:
                return i
        known = ", ".join(p.name for p in self.phases)
        raise KeyError(f"scenario {self.name} has no phase {name!r}; its phases are: {known}")


# ---------------------------------------------------------------- loading


def builtin_scenarios() -> list[str]:
    """Names of the scenarios shipped in exporter/sources/scenarios/."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Load a built-in scenario by name ("default") or a scenario file by path."""
    text = str(name_or_path)
    path = Path(text)
    looks_like_path = path.suffix in (".yaml", ".yml") or "/" in text or path.exists()
    if not looks_like_path:
        if text not in builtin_scenarios():
            raise ScenarioError(
                f"{text}: no built-in scenario of that name and no such file; built-in "
                f"scenarios are {', '.join(builtin_scenarios())}, or give a path to a .yaml file"
            )
        path = BUILTIN_DIR / f"{text}.yaml"
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        raise ScenarioError(f"{path}: {where}: not valid YAML: {exc}") from None
    return parse_scenario(data, source=str(path), name=path.stem)


def parse_scenario(data: Any, source: str = "<inline>", name: str = "inline") -> Scenario:
    """Validate scenario data (as YAML loads it) and build a `Scenario`."""
    return _Parser(source).scenario(data, name)


# ---------------------------------------------------------------- validation


def _uid(seed_text: str) -> str:
    h = hashlib.sha256(seed_text.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class _Parser:
    """Validates as it builds; every error names the file and the entry."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, where: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {where}: {problem}")

    # -- small checks

    def mapping(
        self, where: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> dict:
        if not isinstance(value, dict):
            raise self.error(where, f"must be a mapping with keys {', '.join(required + optional)}")
        allowed = required + optional
        for key in value:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.error(
                    where, f"unknown key {key!r}{hint} (allowed keys: {', '.join(allowed)})"
                )
        for key in required:
            if key not in value:
                raise self.error(where, f"missing required key {key!r}")
        return value

    def number(
        self,
        where: str,
        value: Any,
        lo: float | None = None,
        hi: float | None = None,
        integer: bool = False,
        lo_open: bool = False,
    ) -> Any:
        kind = "an integer" if integer else "a number"
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            raise self.error(where, f"must be {kind}, got {value!r}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            bound = f"greater than {lo}" if lo_open else f"at least {lo}"
            raise self.error(where, f"is {value}; it must be {bound}")
        if hi is not None and value > hi:
            raise self.error(where, f"is {value}; it must be at most {hi}")
        return value

    def text(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(where, f"must be a non-empty string, got {value!r}")
        return value

    def sequence(self, where: str, value: Any, allow_empty: bool = True) -> list:
        if not isinstance(value, list):
            raise self.error(where, f"must be a list, got {type(value).__name__}")
        if not value and not allow_empty:
            raise self.error(where, "must not be empty")
        return value

    def true(self, where: str, value: Any) -> None:
        if value is not True:
            raise self.error(where, f"must be true, got {value!r}")

    # -- entries

    def scenario(self, data: Any, name: str) -> Scenario:
        top = self.mapping(
            "top level",
            data,
            ("gpus", "phases"),
            ("node", "description", "at_end", "noise", "pods"),
        )
        node = self.text("node", top.get("node", "sim-node"))
        at_end = top.get("at_end", "loop")
        if at_end not in ("loop", "hold"):
            raise self.error("at_end", f"is {at_end!r}; use loop or hold")
        noise = self.number("noise", top.get("noise", 0.02), 0, 0.5)
        gpus = self.gpus(top["gpus"])
        pods = self.pods(top.get("pods") or [], gpus)
        phases = self.phases(top["phases"], gpus, pods)
        description = str(top.get("description", ""))
        return Scenario(
            name, self.source, node, at_end, float(noise), gpus, pods, phases, description
        )

    def gpus(self, value: Any) -> tuple[GpuSpec, ...]:
        entries = self.sequence("gpus", value, allow_empty=False)
        gpus: list[GpuSpec] = []
        for i, entry in enumerate(entries):
            where = f"gpus[{i}]"
            e = self.mapping(
                where,
                entry,
                ("model",),
                ("count", "memory_gib", "power_limit_watts", "mig", "time_slicing"),
            )
            model_name = self.text(f"{where}.model", e["model"])
            model = GPU_MODELS.get(model_name)
            count = self.number(f"{where}.count", e.get("count", 1), 1, 1024, integer=True)
            if model is None:
                for key in ("memory_gib", "power_limit_watts"):
                    if key not in e:
                        raise self.error(
                            where,
                            f"model {model_name!r} is not one the simulator knows "
                            f"({', '.join(GPU_MODELS)}): give {key} for it",
                        )
            default_memory = model.memory_mib / 1024 if model else None
            default_power = model.power_limit_watts if model else None
            memory_gib = self.number(f"{where}.memory_gib", e.get("memory_gib", default_memory), 1)
            power_limit = self.number(
                f"{where}.power_limit_watts", e.get("power_limit_watts", default_power), 1
            )
            memory_bytes = int(memory_gib * GIB)
            if model is None:
                # An unknown model: no MIG, no NVLink, generic clocks, 10% idle power.
                model = GpuModel(
                    model_name, int(memory_gib * 1024), power_limit, power_limit * 0.1,
                    1500, 1500, 32e9, 0,
                )  # fmt: skip
            mig = self.mig(where, e.get("mig"), model, memory_bytes)
            replicas = 1
            if "time_slicing" in e:
                ts = self.mapping(f"{where}.time_slicing", e["time_slicing"], ("replicas",), ())
                replicas = self.number(
                    f"{where}.time_slicing.replicas", ts["replicas"], 2, 64, integer=True
                )
                if mig:
                    raise self.error(
                        where, "has both mig and time_slicing; the simulator shares a GPU one way"
                    )
            for _ in range(count):
                gpus.append(
                    GpuSpec(len(gpus), model, memory_bytes, float(power_limit), mig, replicas)
                )
        return tuple(gpus)

    def mig(
        self, where: str, value: Any, model: GpuModel, memory_bytes: int
    ) -> tuple[MigInstanceSpec, ...]:
        if value is None:
            return ()
        entries = self.sequence(f"{where}.mig", value, allow_empty=False)
        if not model.mig_profiles:
            capable = [m.name for m in GPU_MODELS.values() if m.mig_profiles]
            raise self.error(
                f"{where}.mig",
                f"model {model.name!r} has no MIG in the simulator; MIG models: {', '.join(capable)}",
            )
        profiles: list[MigProfile] = []
        for j, item in enumerate(entries):
            w = f"{where}.mig[{j}]"
            if isinstance(item, str):
                name, count = item, 1
            else:
                m = self.mapping(w, item, ("profile",), ("count",))
                name = self.text(f"{w}.profile", m["profile"])
                count = self.number(f"{w}.count", m.get("count", 1), 1, 7, integer=True)
            profile = model.mig_profiles.get(name)
            if profile is None:
                raise self.error(
                    w,
                    f"{name!r} is not a MIG profile of {model.name}; valid profiles: "
                    f"{', '.join(model.mig_profiles)}",
                )
            profiles.extend([profile] * count)
        counts = Counter(p.name for p in profiles)
        for pname, n in counts.items():
            limit = model.mig_profiles[pname].max_instances
            if n > limit:
                raise self.error(
                    f"{where}.mig",
                    f"{n} instances of {pname}, but at most {limit} fit on one {model.name}",
                )
        compute = sum(p.compute_slices for p in profiles)
        memory = sum(p.memory_slices for p in profiles)
        if compute > MIG_COMPUTE_SLICES or memory > MIG_MEMORY_SLICES:
            raise self.error(
                f"{where}.mig",
                f"the profiles need {compute} compute slices and {memory} memory slices; a GPU "
                f"has {MIG_COMPUTE_SLICES} and {MIG_MEMORY_SLICES}: remove or shrink instances",
            )
        slice_bytes = memory_bytes // MIG_MEMORY_SLICES
        return tuple(
            MigInstanceSpec(pos, p, p.memory_slices * slice_bytes) for pos, p in enumerate(profiles)
        )

    def device(self, where: str, value: Any, gpus: tuple[GpuSpec, ...]) -> DeviceRef:
        d = self.mapping(where, value, ("gpu",), ("mig",))
        index = self.number(f"{where}.gpu", d["gpu"], 0, integer=True)
        if index >= len(gpus):
            raise self.error(
                where, f"gpu {index} does not exist; the scenario has GPUs 0 to {len(gpus) - 1}"
            )
        gpu = gpus[index]
        if "mig" not in d:
            if gpu.mig_mode:
                raise self.error(
                    where,
                    f"GPU {index} is in MIG mode: name an instance with mig: 0 to {len(gpu.mig) - 1}",
                )
            return DeviceRef(index)
        if not gpu.mig_mode:
            raise self.error(where, f"GPU {index} has no MIG instances; remove mig or add them")
        pos = self.number(f"{where}.mig", d["mig"], 0, integer=True)
        if pos >= len(gpu.mig):
            raise self.error(
                where,
                f"GPU {index} has MIG instances 0 to {len(gpu.mig) - 1}, not {pos}",
            )
        return DeviceRef(index, pos)

    def pods(self, value: Any, gpus: tuple[GpuSpec, ...]) -> tuple[PodSpec, ...]:
        entries = self.sequence("pods", value)
        pods: list[PodSpec] = []
        holders: dict[DeviceRef, list[str]] = {}
        seen_pids: dict[int, str] = {}
        seen_keys: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"pods[{i}]"
            e = self.mapping(
                where,
                entry,
                ("namespace", "pod", "devices"),
                ("container", "uid", "resource", "pids"),
            )
            namespace = self.text(f"{where}.namespace", e["namespace"])
            name = self.text(f"{where}.pod", e["pod"])
            where = f"pods[{i}] ({namespace}/{name})"
            if "/" in namespace or "/" in name:
                raise self.error(where, "namespace and pod names cannot contain '/'")
            key = f"{namespace}/{name}"
            if key in seen_keys:
                raise self.error(where, "is listed twice; give each pod one entry")
            seen_keys.add(key)
            container = self.text(f"{where}.container", e.get("container", "main"))
            uid = self.text(f"{where}.uid", e.get("uid", _uid(key)))
            devices = tuple(
                self.device(f"{where}.devices[{j}]", d, gpus)
                for j, d in enumerate(self.sequence(f"{where}.devices", e["devices"], False))
            )
            if len(set(devices)) != len(devices):
                raise self.error(f"{where}.devices", "lists the same device twice")
            resource = self.resource(where, e.get("resource"), devices, gpus)
            pids = tuple(
                self.number(f"{where}.pids[{j}]", p, 1, 4194304, integer=True)
                for j, p in enumerate(self.sequence(f"{where}.pids", e.get("pids", [])))
            )
            for pid in pids:
                if pid in seen_pids:
                    raise self.error(
                        f"{where}.pids", f"pid {pid} is already a process of {seen_pids[pid]}"
                    )
                seen_pids[pid] = key
            for d in devices:
                holders.setdefault(d, []).append(key)
            pods.append(PodSpec(namespace, name, container, uid, resource, devices, pids))
        for d, keys in holders.items():
            gpu = gpus[d.gpu]
            limit = gpu.replicas if d.mig is None else 1
            if len(keys) > limit:
                what = f"GPU {d.gpu}" if d.mig is None else f"MIG instance {d.mig} of GPU {d.gpu}"
                fix = (
                    f"it is time-sliced into {gpu.replicas} replicas"
                    if gpu.time_sliced
                    else "give it time_slicing: {replicas: N} to share it"
                    if d.mig is None
                    else "a MIG instance is held by one pod"
                )
                raise self.error("pods", f"{what} is held by {', '.join(keys)}; {fix}")
        return tuple(pods)

    def resource(
        self, where: str, value: Any, devices: tuple[DeviceRef, ...], gpus: tuple[GpuSpec, ...]
    ) -> str:
        first = devices[0]
        gpu = gpus[first.gpu]
        if first.mig is not None:
            default = f"nvidia.com/mig-{gpu.mig[first.mig].profile.name}"
        elif gpu.time_sliced:
            default = "nvidia.com/gpu.shared"
        else:
            default = "nvidia.com/gpu"
        if value is None:
            return default
        resource = self.text(f"{where}.resource", value)
        if "/" not in resource:
            raise self.error(
                f"{where}.resource", f"{resource!r} is not an extended resource like {default}"
            )
        for d in devices:
            if d.mig is not None and resource.startswith("nvidia.com/mig-"):
                profile = gpus[d.gpu].mig[d.mig].profile.name
                if resource != f"nvidia.com/mig-{profile}":
                    raise self.error(
                        f"{where}.resource",
                        f"{resource} does not match the {profile} instance it holds; "
                        f"use nvidia.com/mig-{profile}",
                    )
        return resource

    def load(self, where: str, value: Any) -> PodLoad:
        e = self.mapping(where, value, (), ("utilization", "memory_gib"))
        util = self.number(f"{where}.utilization", e.get("utilization", 0.0), 0, 1)
        mem = self.number(f"{where}.memory_gib", e.get("memory_gib", 0.0), 0)
        return PodLoad(float(util), int(mem * GIB))

    def gpu_load(self, where: str, value: Any, gpu: GpuSpec, used_pids: set[int]) -> GpuLoad:
        e = self.mapping(
            where,
            value,
            (),
            ("utilization", "memory_gib", "power_watts", "temperature_celsius", "processes"),
        )
        util = float(self.number(f"{where}.utilization", e.get("utilization", 0.0), 0, 1))
        mem = int(self.number(f"{where}.memory_gib", e.get("memory_gib", 0.0), 0) * GIB)
        power = e.get("power_watts")
        if power is not None:
            power = float(self.number(f"{where}.power_watts", power, 0, gpu.power_limit_watts))
        temp = e.get("temperature_celsius")
        if temp is not None:
            temp = float(self.number(f"{where}.temperature_celsius", temp, 0, 120))
        processes = []
        for j, p in enumerate(self.sequence(f"{where}.processes", e.get("processes", []))):
            w = f"{where}.processes[{j}]"
            pe = self.mapping(w, p, ("pid",), ("utilization", "memory_gib"))
            pid = self.number(f"{w}.pid", pe["pid"], 1, 4194304, integer=True)
            if pid in used_pids:
                raise self.error(w, f"pid {pid} is already used by a pod or another process")
            used_pids.add(pid)
            processes.append(
                ProcessLoad(
                    pid,
                    float(self.number(f"{w}.utilization", pe.get("utilization", 0.0), 0, 1)),
                    int(self.number(f"{w}.memory_gib", pe.get("memory_gib", 0.0), 0) * GIB),
                )
            )
        if gpu.mig_mode and (util or mem or processes):
            raise self.error(
                where,
                f"GPU {gpu.index} is in MIG mode: put load in a pod on one of its instances",
            )
        return GpuLoad(util, mem, power, temp, tuple(processes))

    def fault(self, where: str, value: Any, gpus: tuple[GpuSpec, ...], duration: float) -> Fault:
        kinds = EVENT_FAULTS + STATE_FAULTS
        e = self.mapping(where, value, ("gpu",), ("at_seconds",) + kinds)
        index = self.number(f"{where}.gpu", e["gpu"], 0, integer=True)
        if index >= len(gpus):
            raise self.error(
                where, f"gpu {index} does not exist; the scenario has GPUs 0 to {len(gpus) - 1}"
            )
        at = float(self.number(f"{where}.at_seconds", e.get("at_seconds", 0), 0))
        if at >= duration:
            raise self.error(f"{where}.at_seconds", f"is {at}, past the phase's {duration} seconds")
        given = [k for k in kinds if k in e]
        if len(given) != 1:
            raise self.error(
                where,
                f"needs exactly one fault kind of {', '.join(kinds)}; it has {given or 'none'}",
            )
        kind = given[0]
        if kind == "xid":
            code = self.number(f"{where}.xid", e["xid"], 1, 1000, integer=True)
            return Fault(index, at, kind, code)
        if kind in ("ecc_uncorrected", "ecc_corrected"):
            count = self.number(f"{where}.{kind}", e[kind], 1, integer=True)
            return Fault(index, at, kind, count)
        self.true(f"{where}.{kind}", e[kind])
        return Fault(index, at, kind)

    def phases(
        self, value: Any, gpus: tuple[GpuSpec, ...], pods: tuple[PodSpec, ...]
    ) -> tuple[Phase, ...]:
        entries = self.sequence("phases", value, allow_empty=False)
        by_key = {p.key: p for p in pods}
        phases: list[Phase] = []
        names: set[str] = set()
        for i, entry in enumerate(entries):
            where = f"phases[{i}]"
            e = self.mapping(
                where,
                entry,
                ("name", "duration_seconds"),
                ("pods", "pod_defaults", "gpus", "faults"),
            )
            name = self.text(f"{where}.name", e["name"])
            where = f"phases[{i}] ({name})"
            if name in names:
                raise self.error(where, "another phase has this name; phase names must be unique")
            names.add(name)
            duration = float(
                self.number(f"{where}.duration_seconds", e["duration_seconds"], 0, lo_open=True)
            )
            listed = e.get("pods") or {}
            if not isinstance(listed, dict):
                raise self.error(f"{where}.pods", "must be a mapping of namespace/pod to load")
            loads: dict[str, PodLoad] = {}
            for key, load in listed.items():
                if key not in by_key:
                    close = difflib.get_close_matches(str(key), list(by_key), n=1)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                    raise self.error(f"{where}.pods", f"{key!r} is not a pod of the scenario{hint}")
                if load == "absent":
                    continue
                loads[key] = self.load(f"{where}.pods[{key}]", load)
            if "pod_defaults" in e:
                default = self.load(f"{where}.pod_defaults", e["pod_defaults"])
                for key in by_key:
                    if key not in listed:
                        loads[key] = default
            used_pids = {pid for p in pods for pid in p.pids}
            gpu_loads: dict[int, GpuLoad] = {}
            for key, load in (e.get("gpus") or {}).items():
                index = key
                if isinstance(key, str) and key.isdigit():
                    index = int(key)
                if not isinstance(index, int) or isinstance(index, bool) or index >= len(gpus):
                    raise self.error(
                        f"{where}.gpus",
                        f"{key!r} is not a GPU index of the scenario (0 to {len(gpus) - 1})",
                    )
                gpu_loads[index] = self.gpu_load(
                    f"{where}.gpus[{index}]", load, gpus[index], used_pids
                )
            faults = tuple(
                self.fault(f"{where}.faults[{j}]", f, gpus, duration)
                for j, f in enumerate(self.sequence(f"{where}.faults", e.get("faults") or []))
            )
            phase = Phase(name, duration, loads, gpu_loads, faults)
            self.check_capacity(where, phase, gpus, by_key)
            phases.append(phase)
        return tuple(phases)

    def check_capacity(
        self, where: str, phase: Phase, gpus: tuple[GpuSpec, ...], by_key: dict[str, PodSpec]
    ) -> None:
        """A GPU cannot be more than fully busy or hold more memory than it has."""
        util: dict[int, float] = {}
        memory: dict[int, int] = {}
        for index, load in phase.gpus.items():
            util[index] = load.utilization + sum(p.utilization for p in load.processes)
            memory[index] = load.memory_bytes + sum(p.memory_bytes for p in load.processes)
        for key, load in phase.pods.items():
            for d in by_key[key].devices:
                gpu = gpus[d.gpu]
                if d.mig is not None:
                    instance = gpu.mig[d.mig]
                    if load.memory_bytes > instance.memory_bytes:
                        raise self.error(
                            f"{where}.pods[{key}]",
                            f"uses {load.memory_bytes / GIB:.1f} GiB but its "
                            f"{instance.profile.name} instance has "
                            f"{instance.memory_bytes / GIB:.1f} GiB",
                        )
                    continue
                util[d.gpu] = util.get(d.gpu, 0.0) + load.utilization
                memory[d.gpu] = memory.get(d.gpu, 0) + load.memory_bytes
        for index, total in util.items():
            if total > 1.0 + 1e-9:
                raise self.error(
                    where,
                    f"GPU {index} would be {total:.2f} busy (pods and processes on it add up); "
                    "the utilizations of one GPU must sum to at most 1",
                )
        for index, total in memory.items():
            if total > gpus[index].memory_bytes:
                raise self.error(
                    where,
                    f"GPU {index} would use {total / GIB:.1f} GiB of its "
                    f"{gpus[index].memory_bytes / GIB:.1f} GiB; lower memory_gib",
                )
