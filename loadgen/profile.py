"""Profiles: YAML files of phases, checked completely before anything starts.

A profile looks like this (`loadgen/profiles/*.yaml` are the built-in ones):

    name: quick
    description: steady training, an idle spell, a straggler, large all-reduces
    alert: GpuIdleWhileAllocated      # optional: the alert this profile exercises
    nproc: 2                          # optional: ranks when not started by torchrun/K8s
    model: tiny                       # optional: a preset name or {preset: ..., depth: ...}
    phases:
      - {name: warm, kind: steady, duration_s: 20}
      - {name: slow, kind: straggler, duration_s: 20, rank: 1, factor: 3}

Durations take seconds or a unit (`500ms`, `30s`, `5m`, `1h`); sizes take bytes or a
unit (`64MiB`, `1GiB`, `500MB`). Phase kinds and their parameters are in `KINDS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from loadgen.errors import ConfigError


class ProfileError(ConfigError):
    """A profile, or a profile against a world size or device, that cannot run."""


# kind -> {parameter: default}; REQUIRED marks parameters without a default.
REQUIRED = object()
KINDS: dict[str, dict[str, Any]] = {
    "steady": {},
    "idle": {},  # the device is held (model and optimizer state stay in memory), nothing runs
    # Allocate towards target_fraction of device memory (GPU) or cpu_target_bytes of
    # ballast (CPU) over ramp_s (default: half the phase), hold it, free it at the end.
    "memory_ramp": {"target_fraction": 0.95, "cpu_target_bytes": None, "ramp_s": None},
    # Back-to-back all_reduces of message_bytes (default: 64MiB on GPUs, 8MiB on the CPU).
    # delay_s > 0: before each call one rank in turn waits that long, so the others wait
    # inside the collective and see a lower bandwidth, as behind a slow link or peer.
    # slowdown f > 1: the delay is set so that every rank's mean all_reduce time grows
    # f times over the time of the phase's first (undelayed) calls.
    "communication": {"message_bytes": None, "delay_s": 0.0, "slowdown": None},
    # One rank sleeps (factor - 1) × its compute time each step.
    "straggler": {"rank": REQUIRED, "factor": REQUIRED},
    # Every `every`-th step waits stall_s for its data.
    "input_stall": {"stall_s": REQUIRED, "every": 1},
    # at_s into the phase, `rank` stops responding for hang_s (default: 3 × the
    # collective timeout); the others detect it by their collective timeout.
    "hang": {"rank": REQUIRED, "at_s": 2.0, "hang_s": None},
    # at_s into the phase, `rank` raises (mode raise) or exits at once (mode exit).
    "crash": {"rank": REQUIRED, "at_s": 2.0, "mode": "raise"},
}
# Phases that end the run: they must come last and take no duration.
TERMINAL_KINDS = frozenset({"hang", "crash"})
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_TIME_UNITS = {"": 1.0, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Phase:
    name: str
    kind: str
    duration_s: float | None  # None for hang and crash, which end the run
    params: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


@dataclass(frozen=True)
class Profile:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    alert: str | None = None
    nproc: int | None = None
    model: str | dict | None = None
    source: str = ""  # where it was read from, for messages

    @property
    def planned_seconds(self) -> float:
        return sum(p.duration_s or 0.0 for p in self.phases)

    def ranks_needed(self) -> int:
        """Smallest world size the profile can run with."""
        needed = 1
        for p in self.phases:
            if "rank" in p.params:
                needed = max(needed, p["rank"] + 1)
            if p.kind in TERMINAL_KINDS:
                needed = max(needed, 2)  # a peer must be there to notice
        return needed


def parse_size(value: Any, what: str) -> int:
    """Bytes from an int or a string like '64MiB'."""
    if isinstance(value, bool):
        raise ProfileError(f"{what}: expected a size like 64MiB, got {value!r}")
    if isinstance(value, int | float):
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ProfileError(f"{what}: expected a size like 8MiB or 1GiB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_seconds(value: Any, what: str) -> float:
    """Seconds from a number or a string like '30s', '5m', '500ms'."""
    if isinstance(value, bool):
        raise ProfileError(f"{what}: expected a duration like 30s, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-z]*)\s*", str(value))
    if not m or m.group(2) not in _TIME_UNITS:
        raise ProfileError(f"{what}: expected a duration like 500ms, 30s or 5m, got {value!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def _phase(raw: Any, index: int, problems: list[str]) -> Phase | None:
    where = f"phase {index + 1}"
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping with name and kind, got {raw!r}")
        return None
    raw = dict(raw)
    name = str(raw.pop("name", f"phase-{index + 1}"))
    where = f"phase {index + 1} ({name!r})"
    kind = raw.pop("kind", None)
    if kind not in KINDS:
        problems.append(f"{where}: unknown phase kind {kind!r}: the kinds are {', '.join(KINDS)}")
        return None
    duration = raw.pop("duration_s", None)
    try:
        duration_s = None if duration is None else parse_seconds(duration, f"{where} duration_s")
    except ProfileError as e:
        problems.append(str(e))
        duration_s = None
    if kind in TERMINAL_KINDS:
        if duration_s is not None:
            problems.append(f"{where}: a {kind} phase ends the run; give at_s, not duration_s")
    elif duration_s is None or duration_s <= 0:
        problems.append(f"{where}: duration_s must be a positive duration (e.g. 30s)")
    params: dict[str, Any] = {}
    missing = False
    for key, default in KINDS[kind].items():
        if key in raw:
            params[key] = raw.pop(key)
        elif default is REQUIRED:
            problems.append(f"{where}: a {kind} phase needs {key}")
            missing = True
        else:
            params[key] = default
    for key in raw:
        allowed = ", ".join(["name", "kind", "duration_s", *KINDS[kind]])
        problems.append(f"{where}: unknown field {key!r} for a {kind} phase (allowed: {allowed})")
    if missing:
        return None
    try:
        _check_params(kind, params, where, duration_s)
    except ProfileError as e:
        problems.append(str(e))
    return Phase(name, kind, duration_s, params)


def _check_params(kind: str, p: dict[str, Any], where: str, duration_s: float | None) -> None:
    """Normalise units in place and check ranges of one phase's parameters."""
    for key in ("ramp_s", "delay_s", "stall_s", "at_s", "hang_s"):
        if p.get(key) is not None:
            p[key] = parse_seconds(p[key], f"{where} {key}")
            if p[key] < 0:
                raise ProfileError(f"{where}: {key} must not be negative")
    for key in ("cpu_target_bytes", "message_bytes"):
        if p.get(key) is not None:
            p[key] = parse_size(p[key], f"{where} {key}")
            if p[key] <= 0:
                raise ProfileError(f"{where}: {key} must be positive")
    if "rank" in p and (
        not isinstance(p["rank"], int) or isinstance(p["rank"], bool) or p["rank"] < 0
    ):
        raise ProfileError(f"{where}: rank must be a rank number (0, 1, ...), got {p['rank']!r}")
    if kind == "straggler":
        factor = p["factor"]
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 1:
            raise ProfileError(f"{where}: factor must be a number above 1 (e.g. 3), got {factor!r}")
    if kind == "communication" and p["slowdown"] is not None:
        f = p["slowdown"]
        if isinstance(f, bool) or not isinstance(f, int | float) or f <= 1:
            raise ProfileError(f"{where}: slowdown must be a number above 1 (e.g. 2), got {f!r}")
        if p["delay_s"]:
            raise ProfileError(f"{where}: give delay_s or slowdown, not both")
    if kind == "memory_ramp":
        f = p["target_fraction"]
        if isinstance(f, bool) or not isinstance(f, int | float) or not 0 < f < 1:
            raise ProfileError(f"{where}: target_fraction must be between 0 and 1, got {f!r}")
        if p["ramp_s"] is not None and duration_s is not None and p["ramp_s"] > duration_s:
            raise ProfileError(f"{where}: ramp_s must not exceed duration_s")
    if kind == "input_stall" and (not isinstance(p["every"], int) or p["every"] < 1):
        raise ProfileError(f"{where}: every must be a positive whole number of steps")
    if kind == "crash" and p["mode"] not in ("raise", "exit"):
        raise ProfileError(f"{where}: mode must be raise or exit, got {p['mode']!r}")


def parse(data: Any, source: str = "<profile>") -> Profile:
    """A Profile from parsed YAML; every problem found is listed in one ProfileError."""
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping with name and phases")
    data = dict(data)
    problems: list[str] = []
    name = str(data.pop("name", Path(source).stem))
    raw_phases = data.pop("phases", None)
    if not isinstance(raw_phases, list) or not raw_phases:
        problems.append("phases: give a list of at least one phase")
        raw_phases = []
    phases = [p for i, raw in enumerate(raw_phases) if (p := _phase(raw, i, problems))]
    for p in phases[:-1]:
        if p.kind in TERMINAL_KINDS:
            problems.append(f"phase {p.name!r}: a {p.kind} phase ends the run, so it must be last")
    nproc = data.pop("nproc", None)
    if nproc is not None and (not isinstance(nproc, int) or isinstance(nproc, bool) or nproc < 1):
        problems.append(f"nproc must be a positive whole number, got {nproc!r}")
    names = [p.name for p in phases]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"phase name {dup!r} is used twice: phase names must be unique")
    profile = Profile(
        name=name,
        phases=tuple(phases),
        description=str(data.pop("description", "")),
        alert=data.pop("alert", None),
        nproc=nproc,
        model=data.pop("model", None),
        source=source,
    )
    for key in data:
        problems.append(
            f"unknown field {key!r} (allowed: name, description, alert, nproc, model, phases)"
        )
    if problems:
        raise ProfileError(f"{source}: " + "; ".join(problems))
    return profile


def scaled(profile: Profile, factor: float) -> Profile:
    """The profile with its timeline stretched or shrunk: phase durations, ramps and
    fault times times `factor` (per-step and per-call waits stay as they are)."""
    if factor <= 0:
        raise ProfileError(f"the time scale must be positive, got {factor}")
    phases = []
    for p in profile.phases:
        params = dict(p.params)
        for key in ("ramp_s", "at_s"):
            if params.get(key) is not None:
                params[key] *= factor
        duration = None if p.duration_s is None else p.duration_s * factor
        phases.append(Phase(p.name, p.kind, duration, params))
    return replace(profile, phases=tuple(phases))


def builtin_names() -> list[str]:
    """Names of the profiles shipped in loadgen/profiles/."""
    folder = resources.files("loadgen") / "profiles"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load(name_or_path: str) -> Profile:
    """A built-in profile by name, or a profile file by path."""
    path = Path(name_or_path)
    if name_or_path in builtin_names():
        text = (resources.files("loadgen") / "profiles" / f"{name_or_path}.yaml").read_text()
        source = f"built-in profile {name_or_path!r}"
    elif path.is_file():
        text, source = path.read_text(), str(path)
    else:
        raise ProfileError(
            f"no profile {name_or_path!r}: give a YAML file or a built-in name "
            f"({', '.join(builtin_names())})"
        )
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(f"{source}: not valid YAML: {e}") from None
    return parse(data, source)


def check_world(profile: Profile, world_size: int, *, gpu: bool) -> None:
    """Raise ProfileError if the profile cannot run with this many ranks on this device."""
    problems = []
    for p in profile.phases:
        rank = p.params.get("rank")
        if rank is not None and rank >= world_size:
            problems.append(
                f"phase {p.name!r} ({p.kind}) names rank {rank}, but the world has "
                f"{world_size} rank(s) (0..{world_size - 1}): run with --nproc {rank + 1} "
                "or more, or name a smaller rank"
            )
        elif p.kind in TERMINAL_KINDS and world_size < 2:
            problems.append(
                f"phase {p.name!r} ({p.kind}) needs at least 2 ranks, so that a peer "
                "notices: run with --nproc 2 or more"
            )
        if p.kind == "communication" and world_size < 2:
            problems.append(
                f"phase {p.name!r} (communication) needs at least 2 ranks to move any "
                "bytes: run with --nproc 2 or more"
            )
        if p.kind == "memory_ramp" and not gpu and p["cpu_target_bytes"] is None:
            problems.append(
                f"phase {p.name!r} (memory_ramp) needs cpu_target_bytes to run on the CPU "
                "(target_fraction applies to GPU memory)"
            )
    if problems:
        raise ProfileError(f"{profile.source}: " + "; ".join(problems))
