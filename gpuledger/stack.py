"""The whole gpuledger stack on one machine, started and stopped as one.

`LocalStack(workdir, profile=...)` starts, in this order:
- the exporter, in this process: NVML when a GPU driver answers (and lists GPUs), else
  simulated GPUs (scenario `calibration`) that follow the load generator's timeline
  phase by phase; `source_name` and `source_detail` say which, and why;
- an alert receiver: a webhook in this process that records every notification
  Alertmanager sends, and on which route (receiver) it came;
- Alertmanager with the example routing (alerts/alertmanager/alertmanager.yaml), its
  receivers pointed at the alert receiver;
- Prometheus scraping the exporter (job gpuledger-exporter) and the load generator's
  ranks (job gpuledger-loadgen) every second, with gpuledger's recording and alerting
  rules generated on a time scale of seconds (`fast_rules_config`).
Then `start_loadgen()` runs `gpuledger loadgen` in its own process group, its
collectives reported by the in-job probe to the exporter's probe socket (pods
`local/pid-<pid>` on a simulated node).

Prometheus and Alertmanager are Debian packages; when one is missing the rest still
runs and `missing` says what is absent and how to install it.

`stop()` (also on leaving `with`, on error and on KeyboardInterrupt) stops everything it
started: process groups get SIGTERM, then SIGKILL, and a last sweep ends any process
that still carries the stack's marker in its environment. `gpuledger demo` and
`gpuledger calibrate` both run on this.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from exporter.app import Exporter
from gpuledger.services import (
    Alertmanager,
    MissingService,
    Prometheus,
    free_port,
    scrape_job,
    wait_until,
)

if TYPE_CHECKING:
    from alerts.config import RulesConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "calibration"
EXPORTER_JOB = "gpuledger-exporter"  # the rules' default exporter selector
LOADGEN_JOB = "gpuledger-loadgen"
# Every process the stack starts carries this variable (a fresh id per stack), so
# that a last sweep finds whatever survived its process group.
MARKER_ENV = "GPULEDGER_STACK_ID"
PROBE_SOCKET_ENV = "GPULEDGER_PROBE_SOCKET"
# The scenario plays `waiting` until the run's first phase, `finished` after its end.
BEFORE_RUN, AFTER_RUN = "waiting", "finished"
INSTALL_HINT = (
    "install them with `bash scripts/setup.sh` (or `sudo apt-get install prometheus "
    "prometheus-alertmanager`)"
)

# The rules on the stack's time scale: phases of 15 s to a few minutes, scraped every
# second. Production defaults (alerts/config.py) wait minutes to hours.
FAST_RULES: dict[str, Any] = {
    "exporter_selector": f'job="{EXPORTER_JOB}"',
    "rate_window": "5s",
    "idle_for": "3s",
    "memory_full_for": "3s",
    "throttle_for": "3s",
    "error_window": "1m",
    "row_remap_pending_for": "3s",
    "gpu_lost_for": "3s",
    "bandwidth_baseline_window": "30s",
    "bandwidth_baseline_offset": "10s",
    # gloo's bandwidth over 5 s windows swings 2-5x on a busy 2-core machine: only a
    # fall under a fifth of the baseline, held 10 s, is a drop at this time scale.
    "bandwidth_drop_ratio": 0.8,
    "bandwidth_drop_for": "10s",
    "straggler_for": "5s",
    "exporter_down_for": "5s",
    "exporter_absent_for": "10s",
    "node_without_exporter_for": "10s",
    "collection_stale_seconds": 5.0,
    "collection_stale_for": "3s",
    "attribution_stale_for": "3s",
}


class StackError(RuntimeError):
    """The stack cannot start as asked; the message says what to change."""


def fast_rules_config(**overrides: Any) -> RulesConfig:
    """gpuledger's rules configuration with waits and windows of seconds (FAST_RULES)."""
    from alerts.config import from_mapping

    return from_mapping({**FAST_RULES, **overrides})


# ---------------------------------------------------------------- alerts received


@dataclass(frozen=True)
class ReceivedAlert:
    """One alert in one notification from Alertmanager."""

    receiver: str  # the route's receiver: the webhook path it was posted to
    name: str
    status: str  # firing or resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str  # as Alertmanager gives it (RFC 3339)
    received_at: float  # unix seconds


class AlertReceiver:
    """A webhook on a free loopback port; Alertmanager posts to <url>/<receiver>."""

    def __init__(self) -> None:
        self._received: list[ReceivedAlert] = []
        self._lock = threading.Lock()
        self._listeners: list[Callable[[ReceivedAlert], None]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    receiver._take(self.path.strip("/"), json.loads(body))
                    self.send_response(200)
                except (ValueError, TypeError, AttributeError):
                    self.send_response(400)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="alert-receiver", daemon=True
        )
        self._thread.start()

    def _take(self, receiver: str, payload: dict[str, Any]) -> None:
        now = time.time()
        alerts = [
            ReceivedAlert(
                receiver=receiver,
                name=a["labels"].get("alertname", ""),
                status=a.get("status", payload.get("status", "")),
                labels=dict(a["labels"]),
                annotations=dict(a.get("annotations") or {}),
                starts_at=a.get("startsAt", ""),
                received_at=now,
            )
            for a in payload["alerts"]
        ]
        with self._lock:
            self._received.extend(alerts)
            listeners = list(self._listeners)
        for alert in alerts:
            for listener in listeners:
                listener(alert)

    def on_alert(self, listener: Callable[[ReceivedAlert], None]) -> None:
        """Call `listener` (from the server's thread) with each alert as it arrives."""
        with self._lock:
            self._listeners.append(listener)

    def received(self) -> list[ReceivedAlert]:
        with self._lock:
            return list(self._received)

    def firing(self) -> list[ReceivedAlert]:
        """The first firing notification of each (alert, receiver, labels), in order."""
        seen: set[tuple] = set()
        first = []
        for alert in self.received():
            key = (alert.receiver, tuple(sorted(alert.labels.items())))
            if alert.status == "firing" and key not in seen:
                seen.add(key)
                first.append(alert)
        return first

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def alertmanager_config(receiver_url: str, example: Path | None = None) -> dict[str, Any]:
    """The example routing with every receiver's webhook on `receiver_url`, and waits cut
    to a second so that notifications come within the stack's time scale."""
    from alerts.cli import ALERTMANAGER_EXAMPLE

    config = yaml.safe_load(Path(example or ALERTMANAGER_EXAMPLE).read_text())
    for receiver in config.get("receivers", []):
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = f"{receiver_url}/{receiver['name']}"
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    return config


# ---------------------------------------------------------------- processes


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def _live_pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            fields = _stat_fields(int(entry))
            if fields and fields[0] not in ("Z", "X"):  # zombies are gone already
                yield int(entry)


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group `pgid`."""
    return [pid for pid in _live_pids() if (f := _stat_fields(pid)) and int(f[2]) == pgid]


def marked_processes(marker: str, env: str = MARKER_ENV) -> list[int]:
    """Live processes (other than this one) whose environment holds env=marker."""
    needle = f"{env}={marker}".encode()
    found = []
    for pid in _live_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the process's group, wait up to `timeout`, then SIGKILL what is left."""
    pgid = process.pid  # the leader of a group of its own (start_new_session)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_members(pgid) or process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=5)
        wait_until(lambda: not group_members(pgid), timeout=5, what=f"process group {pgid} gone")


class LoadgenProcess:
    """`gpuledger loadgen` running in its own process group; output in `log_path`."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started_at = time.time()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(log_path.parent),
            start_new_session=True,
        )
        self.ended_at: float | None = None

    @property
    def returncode(self) -> int | None:
        code = self.process.poll()
        if code is not None and self.ended_at is None:
            self.ended_at = time.time()
        return code

    def running(self) -> bool:
        return self.returncode is None

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, or None if it still runs after `timeout` seconds."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout)
        return self.returncode

    def tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        stop_process_group(self.process, timeout)
        self.returncode  # noqa: B018 - records ended_at
        self._log.close()


def _free_port_run(count: int, attempts: int = 50) -> int:
    """A port p with p .. p+count-1 all free on loopback (one per local rank)."""
    for _ in range(attempts):
        base = free_port()
        if base + count > 65535:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise StackError(f"found no {count} consecutive free ports for the load generator's metrics")


def _phase_driver(timeline: Path) -> Callable[[], tuple[str, float | None] | None]:
    """What the simulated source plays: the kind of rank 0's running phase, `waiting`
    before the run's first phase and `finished` after its end."""
    from exporter.sources.simulated import TimelineFollower

    phases = TimelineFollower(timeline, rank=0, phase_key="kind")
    # run_end records carry no phase: read their type as the "phase" that starts.
    ended = TimelineFollower(timeline, rank=0, phase_key="type", start_events=("run_end",))

    def driver() -> tuple[str, float | None] | None:
        if ended() is not None:
            return (AFTER_RUN, None)
        return phases()

    return driver


# ---------------------------------------------------------------- the stack


@dataclass
class StackPlan:
    """What the stack will run, checked before anything starts."""

    profile: str
    profile_name: str
    nproc: int
    time_scale: float
    phases: list[tuple[str, str, float | None]]  # (name, kind, planned seconds)
    planned_seconds: float


def plan_profile(profile: str, nproc: int | None = None, time_scale: float = 1.0) -> StackPlan:
    """Load and check a load generator profile (a built-in name or a YAML file), its
    phase durations times `time_scale` (as the load generator's --time-scale does)."""
    from loadgen import profile as profiles

    try:
        loaded = profiles.scaled(profiles.load(profile), time_scale)
        world = nproc if nproc is not None else (loaded.nproc or 1)
        if world < 1:
            raise StackError(f"--nproc must be 1 or more, got {world}")
        profiles.check_world(loaded, world, gpu=False)
    except profiles.ProfileError as error:
        raise StackError(str(error)) from None
    return StackPlan(
        profile=profile,
        profile_name=loaded.name,
        nproc=world,
        time_scale=time_scale,
        phases=[(p.name, p.kind, p.duration_s) for p in loaded.phases],
        planned_seconds=loaded.planned_seconds,
    )


@dataclass
class LocalStack:
    """Exporter, alert receiver, Alertmanager, Prometheus and the load generator.

    `device`: auto (NVML when a GPU driver answers, else simulated), nvml or simulated.
    `loadgen_device`: the load generator's --device (auto: the GPUs when torch sees
    enough of them for the profile's ranks, else the CPU).
    `nvml`: the pynvml module to read GPUs with (None imports it; tests pass a fake).
    """

    workdir: Path
    profile: str = "quick"
    device: str = "auto"
    scenario: str = SCENARIO
    nproc: int | None = None
    time_scale: float = 1.0
    loadgen_device: str = "auto"
    rules_overrides: dict[str, Any] = field(default_factory=dict)
    scrape_interval: str = "1s"
    with_prometheus: bool = True
    with_alertmanager: bool = True
    nvml: Any = None

    # What started (None when it did not).
    exporter: Exporter | None = field(default=None, init=False)
    receiver: AlertReceiver | None = field(default=None, init=False)
    alertmanager: Alertmanager | None = field(default=None, init=False)
    prometheus: Prometheus | None = field(default=None, init=False)
    loadgen: LoadgenProcess | None = field(default=None, init=False)
    source_name: str = field(default="", init=False)
    source_detail: str = field(default="", init=False)
    fallback_reason: str | None = field(default=None, init=False)
    missing: list[str] = field(default_factory=list, init=False)
    started_at: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.device not in ("auto", "nvml", "simulated"):
            raise StackError(f"device must be auto, nvml or simulated, got {self.device!r}")
        self.plan = plan_profile(self.profile, self.nproc, self.time_scale)
        self.workdir = Path(self.workdir).absolute()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StackError(
                f"cannot create the working directory {self.workdir}: {error.strerror}; "
                "choose another output directory"
            ) from None
        if not os.access(self.workdir, os.W_OK):
            raise StackError(f"{self.workdir} is not writable: choose another output directory")
        self.marker = uuid.uuid4().hex
        self.timeline_path = self.workdir / "loadgen-timeline.jsonl"
        self.metrics_port: int | None = None
        self._socket_dir: str | None = None
        self._stopped = False

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def probe_socket(self) -> str:
        assert self._socket_dir is not None, "start() first"
        return os.path.join(self._socket_dir, "probe.sock")

    def start(self) -> None:
        """Start everything but the load generator; returns when Prometheus scrapes the
        exporter (or at once when Prometheus is missing)."""
        self.started_at = time.time()
        # A socket path must stay under 108 bytes: keep it short, outside workdir.
        self._socket_dir = tempfile.mkdtemp(prefix="gpuledger-stack-")
        for stale in ("prometheus", "alertmanager", "rules"):
            shutil.rmtree(self.workdir / stale, ignore_errors=True)
        self.timeline_path.unlink(missing_ok=True)
        self.exporter = self._start_exporter()
        self.receiver = AlertReceiver()
        if self.with_alertmanager:
            self.alertmanager = Alertmanager(
                self.workdir / "alertmanager", config=alertmanager_config(self.receiver.url)
            )
            try:
                self.alertmanager.start()
            except MissingService:
                self.alertmanager.stop()
                self.alertmanager = None
                self.missing.append(
                    f"Alertmanager is not installed: alerts are read from Prometheus, "
                    f"without routes; {INSTALL_HINT}"
                )
        self.metrics_port = _free_port_run(self.plan.nproc)
        if self.with_prometheus:
            self._start_prometheus()

    def _start_prometheus(self) -> None:
        from alerts import rules

        rule_files = rules.write(self.workdir / "rules", fast_rules_config(**self.rules_overrides))
        assert self.exporter is not None and self.metrics_port is not None
        exporter_target = self.exporter.url.removeprefix("http://")
        loadgen_targets = [
            f"127.0.0.1:{self.metrics_port + rank}" for rank in range(self.plan.nproc)
        ]
        interval = self.scrape_interval
        prometheus = Prometheus(
            self.workdir / "prometheus",
            scrape_configs=[
                scrape_job(EXPORTER_JOB, [exporter_target], interval=interval),
                scrape_job(LOADGEN_JOB, loadgen_targets, interval=interval),
            ],
            rule_files=rule_files,
            alertmanager_url=self.alertmanager.url if self.alertmanager else None,
            scrape_interval=interval,
            evaluation_interval=interval,
        )
        try:
            prometheus.start()
        except MissingService:
            prometheus.stop()
            self.missing.append(
                "Prometheus is not installed: nothing scrapes the exporter, no rule is "
                f"evaluated and no usage can be ingested into the ledger; {INSTALL_HINT}"
            )
            return
        except BaseException:
            prometheus.stop()
            raise
        self.prometheus = prometheus
        prometheus.wait_until(
            lambda: prometheus.value(f'up{{job="{EXPORTER_JOB}"}}') == 1,
            timeout=60,
            what="Prometheus scraping the exporter",
        )

    def _start_exporter(self) -> Exporter:
        from exporter import wiring

        if self.device in ("auto", "nvml"):
            exporter = self._nvml_exporter()
            if exporter is not None:
                return exporter
        exporter = wiring.simulated_exporter(scenario=self.scenario, probe_socket=self.probe_socket)
        source = exporter.source
        source.follow(_phase_driver(self.timeline_path))
        scenario = source.scenario
        models = sorted({g.model.name for g in scenario.gpus})
        self.source_name = "simulated"
        self.source_detail = (
            f"{len(scenario.gpus)} x {', '.join(models)} on node {scenario.node} "
            f"(scenario {scenario.name}, following the load generator's phases)"
        )
        exporter.serve("127.0.0.1", 0)
        return exporter

    def _nvml_exporter(self) -> Exporter | None:
        """An exporter on this machine's GPUs, or None (with the reason) when NVML has
        none; with device=nvml, StackError instead of None."""
        from exporter import wiring
        from exporter.sources.nvml import NvmlUnavailable

        try:
            exporter = wiring.nvml_exporter(
                node=socket.gethostname(),
                kubelet_socket=None,
                pod_watch=False,
                probe_socket=self.probe_socket,
                nvml=self.nvml,
            )
        except NvmlUnavailable as error:
            reason = str(error)
        else:
            gpus = exporter.source.sample().gpus
            if gpus:
                models = sorted({g.model for g in gpus})
                self.source_name = "nvml"
                self.source_detail = f"{len(gpus)} x {', '.join(models)} on this machine"
                exporter.serve("127.0.0.1", 0)
                return exporter
            exporter.stop()
            reason = "NVML answered but lists no GPU"
        if self.device == "nvml":
            raise StackError(f"device nvml: {reason}; use device auto or simulated")
        self.fallback_reason = reason.split(". ")[0]
        return None

    # ------------------------------------------------------------ the load generator

    def loadgen_argv(self, extra: Iterable[str] = ()) -> list[str]:
        assert self.metrics_port is not None, "start() first"
        argv = [
            sys.executable,
            "-m",
            "gpuledger.cli",
            "--log-format",
            "text",
            "loadgen",
            "--profile",
            str(self.plan.profile),
            "--nproc",
            str(self.plan.nproc),
            "--device",
            self._loadgen_device(),
            "--timeline",
            str(self.timeline_path),
            "--metrics-port",
            str(self.metrics_port),
            "--progress",
            "plain",
        ]
        if self.plan.time_scale != 1.0:
            argv += ["--time-scale", repr(self.plan.time_scale)]
        return [*argv, *extra]

    def _loadgen_device(self) -> str:
        if self.loadgen_device != "auto":
            return self.loadgen_device
        if self.source_name != "nvml":
            return "cpu"  # no GPU here: torch would find none either
        import torch

        return "cuda" if torch.cuda.device_count() >= self.plan.nproc else "cpu"

    def loadgen_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env[PROBE_SOCKET_ENV] = self.probe_socket
        env[MARKER_ENV] = self.marker
        return env

    def start_loadgen(self, extra_args: Iterable[str] = ()) -> LoadgenProcess:
        """Start the load generator; the timeline restarts from nothing."""
        if self.loadgen is not None and self.loadgen.running():
            raise StackError("the load generator is already running")
        self.timeline_path.unlink(missing_ok=True)
        self.loadgen = LoadgenProcess(
            self.loadgen_argv(extra_args), self.loadgen_env(), self.workdir / "loadgen.log"
        )
        return self.loadgen

    # ------------------------------------------------------------ what happened

    def alerts_fired(self) -> list[ReceivedAlert]:
        """Alerts that fired: as Alertmanager delivered them (with their route), or,
        without Alertmanager, as Prometheus has them now (receiver empty)."""
        if self.alertmanager is not None and self.receiver is not None:
            return self.receiver.firing()
        if self.prometheus is None:
            return []
        now = time.time()
        return [
            ReceivedAlert(
                receiver="",
                name=a["labels"].get("alertname", ""),
                status=a["state"],
                labels=a["labels"],
                annotations=a.get("annotations", {}),
                starts_at=a.get("activeAt", ""),
                received_at=now,
            )
            for a in self.prometheus.alerts()
            if a["state"] == "firing"
        ]

    # ------------------------------------------------------------ stopping

    def stop(self) -> None:
        """Stop everything that started, the load generator first; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.loadgen is not None:
            steps.append(("load generator", self.loadgen.stop))
        if self.prometheus is not None:
            steps.append(("Prometheus", self.prometheus.stop))
        if self.alertmanager is not None:
            steps.append(("Alertmanager", self.alertmanager.stop))
        if self.receiver is not None:
            steps.append(("alert receiver", self.receiver.stop))
        if self.exporter is not None:
            steps.append(("exporter", self.exporter.stop))
        steps.append(("leftover processes", self._sweep))
        for what, stop in steps:
            try:
                stop()
            except Exception as error:  # stopping must go on whatever fails
                log.warning("error while stopping the %s: %r", what, error)
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def _sweep(self) -> None:
        """End processes that carry the stack's marker and outlived their group."""
        for pid in marked_processes(self.marker):
            log.warning("process %d outlived its process group; killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
