"""The checks that need a real NVIDIA GPU, in one run of a few minutes (docs/gpu-check.md).

    python3 scripts/gpu_check.py --out DIR                     # on a GPU machine, ~3 min
    python3 scripts/gpu_check.py --out DIR --scenario shared   # two pods time-slicing it
    python3 scripts/gpu_check.py --out DIR --fake              # rehearsal: fake NVML, CPU

The main scenario:
1. `nvidia-smi -q`: the card as found; `gpuledger exporter --device auto` finds the GPU
   by itself and stops cleanly on SIGTERM.
2. The exporter on the real GPU, in this process, with every NVML call recorded
   (tests/fakes/nvml_trace.py). The fake kubelet says pod gpu-check/trainer-0 holds
   the GPU, the fake API server knows the pod, and a fixture /proc maps the workloads'
   PIDs to its container, so the per-pod series are real NVML readings attributed
   through the real attribution code. The probe socket is on.
3. Workload A: the load generator on CUDA (bf16 autocast, fused AdamW): steady, idle,
   a memory ramp to half the card, steady again; its timeline is the ground truth.
4. Workload B: a one-rank NCCL group doing all_reduce with the in-job probe on (the
   CUDA-event path), counting its own bytes and timing itself with CUDA events. One GPU
   allows one rank (NCCL refuses two ranks on one device), whose all_reduce moves no
   data: bytes and calls are checked exactly, time only for being recorded.
5. /metrics scraped during the steady phase, the idle phase and at the end; then a
   larger model (--big-model, gpt-1b) trains alone for its throughput and MFU.
6. Checks, each with the numbers behind it: summary.json and a table printed last.

Outputs in --out (8 files at most, what a lent GPU machine sends back): nvidia-smi.txt,
nvml_trace.json.gz (the recording, with the source's snapshots: tests replay it),
metrics_steady.txt, metrics_idle.txt, metrics_end.txt, timeline.jsonl, summary.json,
log.txt. The shared scenario writes nvml_trace_shared.json.gz, metrics_shared_*.txt and
a timeline per tenant instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadgen.distributed import free_port  # noqa: E402

NODE = "gpu-check-node"
NAMESPACE, POD, CONTAINER = "gpu-check", "trainer-0", "trainer"
MIB = 1024**2


@dataclass(frozen=True)
class PodSpec:
    name: str
    uid: str
    container_id: str


# The main run: one pod holds the whole GPU. The shared run: two pods hold one
# time-sliced replica each (nvidia.com/gpu.shared, device IDs "<uuid>::<replica>").
EXCLUSIVE = (PodSpec(POD, "0c0ffee0-1234-4567-89ab-0123456789ab", "c" * 64),)
SHARED = (
    PodSpec("tenant-a", "aaaaaaaa-1234-4567-89ab-0123456789ab", "a" * 64),
    PodSpec("tenant-b", "bbbbbbbb-1234-4567-89ab-0123456789ab", "b" * 64),
)

log = logging.getLogger("gpu_check")


# --------------------------------------------------------------------- workloads

# Subprocesses import the project from this checkout (it need not be installed).
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def loadgen_command(
    profile: Path, device: str, timeline: Path, model: str, *extra: str
) -> list[str]:
    """`gpuledger loadgen` on a profile file, its timeline written, without the probe."""
    return [
        *(sys.executable, "-m", "gpuledger.cli", "loadgen", "--profile", str(profile)),
        *("--device", device, "--timeline", str(timeline), "--no-probe", "--model", model),
        *extra,
    ]


def loadgen_profile(folder: Path, scale: float) -> Path:
    """Steady, idle, memory ramp to half the card, steady: ~70 s at scale 1."""
    phases = [
        {"name": "steady", "kind": "steady", "duration_s": 25 * scale},
        {"name": "held-idle", "kind": "idle", "duration_s": 15 * scale},
        {
            "name": "fill",
            "kind": "memory_ramp",
            "duration_s": 15 * scale,
            "target_fraction": 0.5,
            "cpu_target_bytes": 256 * MIB,
        },
        {"name": "steady-again", "kind": "steady", "duration_s": 15 * scale},
    ]
    path = folder / "gpu-check.yaml"
    profile = {"name": "gpu-check", "description": "device check", "phases": phases}
    path.write_text(json.dumps(profile))  # JSON is YAML
    return path


def nccl_worker(args: argparse.Namespace) -> int:
    """One rank: all_reduce of several sizes, its own count and CUDA-event timing."""
    import torch
    import torch.distributed as dist

    import gpuledger.probe

    cuda = args.device == "cuda"
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port), WORLD_SIZE="1", RANK="0")
    gpuledger.probe.enable(socket_path=args.socket, interval_s=0.5)
    dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)
    device = torch.device("cuda:0" if cuda else "cpu")
    sizes = [1 * MIB, 16 * MIB, 256 * MIB, 1024 * MIB] if cuda else [1 * MIB, 8 * MIB]
    result: dict[str, Any] = {"backend": dist.get_backend(), "sizes": [], "bytes": 0, "calls": 0}
    result["torch"] = torch.__version__
    if cuda:
        result["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        result["device_name"] = torch.cuda.get_device_name(0)
    own_seconds = 0.0
    for size in sizes:
        tensor = torch.randn(size // 4, device=device)
        for _ in range(3):  # warm-up, counted by the probe like any call
            dist.all_reduce(tensor)
            result["bytes"] += size
            result["calls"] += 1
        iterations = 20
        if cuda:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iterations):
                dist.all_reduce(tensor)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            began = time.perf_counter()
            for _ in range(iterations):
                dist.all_reduce(tensor)
            seconds = time.perf_counter() - began
        result["bytes"] += size * iterations
        result["calls"] += iterations
        own_seconds += seconds
        result["sizes"].append(
            {
                "bytes": size,
                "iterations": iterations,
                "seconds": seconds,
            }
        )
    result["timed_seconds"] = own_seconds
    dist.destroy_process_group()
    gpuledger.probe.disable()  # the last report, before the process ends
    Path(args.result).write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------- the node


class Node:
    """The exporter on this machine's GPU, with kubelet, API server and /proc fixtures."""

    def __init__(self, work: Path, fake: bool, pods: tuple[PodSpec, ...] = EXCLUSIVE) -> None:
        from tests.fakes.fake_kubelet import FakeKubelet, pod_resources
        from tests.fakes.kube_apiserver import FakeKubeApiServer, make_pod
        from tests.fakes.nvml_trace import RecordingNvml

        self.work, self.fake, self.pods = work, fake, pods
        self.pids: dict[int, str] = {}  # pid -> pod name
        self.proc_root = work / "proc"
        self.proc_root.mkdir()
        self.probe_socket = str(work / "probe.sock")
        if fake:
            from tests.fakes.fake_pynvml import make_fake_pynvml

            self.nvml = make_fake_pynvml(1)
            self._fake_pids: dict[int, Path] = {}  # pid -> its timeline
            self._stop = threading.Event()
            threading.Thread(target=self._drive_fake, daemon=True).start()
        else:
            import pynvml

            self.nvml = pynvml
        self.uuid = self._gpu_uuid()
        self.recorder = RecordingNvml(self.nvml)
        self.kubelet = FakeKubelet(work).start()
        shared = len(pods) > 1
        self.kubelet.set_pods(
            [
                pod_resources(
                    pod.name,
                    NAMESPACE,
                    {CONTAINER: {"nvidia.com/gpu.shared": [f"{self.uuid}::{i}"]}}
                    if shared
                    else {CONTAINER: {"nvidia.com/gpu": [self.uuid]}},
                )
                for i, pod in enumerate(pods)
            ]
        )
        self.api = FakeKubeApiServer().start()
        for pod in pods:
            self.api.add(
                make_pod(
                    pod.name,
                    NAMESPACE,
                    node=NODE,
                    uid=pod.uid,
                    containers={CONTAINER: pod.container_id},
                )
            )
        self.snapshots: list[Any] = []
        self.exporter = self._exporter()

    def _gpu_uuid(self) -> str:
        nvml = self.nvml
        nvml.nvmlInit()
        try:
            uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            nvml.nvmlShutdown()
        return uuid.decode() if isinstance(uuid, bytes) else uuid

    def _exporter(self):
        from exporter.wiring import nvml_exporter
        from tests.fakes.nvml_trace import snapshot_json

        exporter = nvml_exporter(
            NODE,
            kubelet_socket=self.kubelet.socket_path,
            proc_root=str(self.proc_root),
            nvml=self.recorder,
            api_client=self.api.api_client(),
            probe_socket=self.probe_socket,
            sys_root=None,
            departed_grace_s=600,
            dcgm_compat=True,
        )
        source, sample = exporter.source, exporter.source.sample

        def sample_and_keep():
            snapshot = sample()
            self.snapshots.append(snapshot_json(snapshot))
            return snapshot

        source.sample = sample_and_keep  # the snapshots the replay test compares with
        exporter.serve(port=0)
        return exporter

    def adopt(self, pid: int, timeline: Path, pod: int = 0) -> None:
        """The process `pid` runs in the container of `pods[pod]`."""
        from tests.fakes.proc_tree import pod_process

        spec = self.pods[pod]
        pod_process(self.proc_root, pid, spec.uid, spec.container_id)
        self.pids[pid] = spec.name
        if self.fake:
            from tests.fakes.fake_pynvml import FakeProcess

            self.nvml.gpus[0].processes.append(FakeProcess(pid, 2 * 1024**3))
            self._fake_pids[pid] = timeline

    def _drive_fake(self) -> None:
        """The fake GPU is 90 % busy while any workload trains (shared evenly between
        those that do, as time-slicing would), and idle otherwise."""
        while not self._stop.wait(0.25):
            self.nvml.advance(0.25)
            timelines = list(self._fake_pids.items())
            busy = [pid for pid, t in timelines if _current_phase_kind(t) not in ("idle", None)]
            for pid, _ in timelines:
                sm = 90 // len(busy) if pid in busy else 0
                self.nvml.add_process_sample(0, pid, sm=sm, mem=20)
            self.nvml.gpus[0].utilization_gpu = 90 if busy else 0

    def scrape(self) -> str:
        with urllib.request.urlopen(self.exporter.url + "/metrics", timeout=10) as answer:
            return answer.read().decode()

    def close(self) -> dict[str, Any]:
        self.exporter.stop()
        self.api.stop()
        self.kubelet.stop()
        if self.fake:
            self._stop.set()
        return self.recorder.trace(
            snapshots=self.snapshots,
            recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            gpu_uuid=self.uuid,
            pods={str(pid): name for pid, name in self.pids.items()},
            fake=self.fake,
        )


# --------------------------------------------------------------------- checks


def series(text: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    found = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found.append((sample.labels, sample.value))
    return found


def one(text: str, name: str, **labels: str) -> float | None:
    values = [value for _, value in series(text, name, **labels)]
    return sum(values) if values else None


class Checks:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append({"check": name, "ok": bool(ok), "detail": detail})
        log.info("check %-34s %s  %s", name, "ok" if ok else "FAILED", detail)

    def info(self, name: str, detail: str) -> None:
        """A finding to report, not a pass/fail check."""
        self.rows.append({"check": name, "ok": None, "detail": detail})
        log.info("info  %-34s %s", name, detail)

    def table(self) -> str:
        width = max(len(r["check"]) for r in self.rows)
        lines = [f"{'check':<{width}}  result  detail"]
        lines += [f"{r['check']:<{width}}  {_result(r['ok']):<6}  {r['detail']}" for r in self.rows]
        return "\n".join(lines)


def check_all(
    checks: Checks,
    node: Node,
    scrapes: dict[str, str],
    timeline: list[dict[str, Any]],
    loadgen_pid: int,
    nccl: dict[str, Any] | None,
    trace: dict[str, Any],
) -> None:
    pod = {"namespace": NAMESPACE, "pod": POD}
    steady, idle, end = scrapes.get("steady", ""), scrapes.get("idle", ""), scrapes.get("end", "")
    gpus = [g for s in node.snapshots for g in s["gpus"]]
    checks.add(
        "nvml identity",
        bool(gpus) and bool(gpus[0]["model"]),
        f"{gpus[0]['model'] if gpus else '-'}; driver {gpus[0]['driver_version'] if gpus else '-'}; "
        f"memory {gpus[0]['memory_total_bytes'] if gpus else '-'} B",
    )
    utils = [g["utilization"] for g in gpus if g["utilization"] is not None]
    checks.add(
        "nvml utilization seen busy",
        bool(utils) and max(utils) >= 0.5,
        f"max {max(utils) if utils else None}, min {min(utils) if utils else None}",
    )
    energy = [g["energy_joules"] for g in gpus if g["energy_joules"] is not None]
    checks.add(
        "nvml energy counter grows",
        len(energy) > 2
        and energy[-1] > energy[0]
        and all(b >= a for a, b in zip(energy, energy[1:], strict=False)),
        f"{energy[0] if energy else None} -> {energy[-1] if energy else None} J "
        f"over {len(energy)} samples",
    )
    power = [g["power_watts"] for g in gpus if g["power_watts"] is not None]
    checks.add(
        "nvml power",
        bool(power) and 0 < max(power) <= (gpus[0]["power_limit_watts"] or 1e9) * 1.2,
        f"max {max(power) if power else None} W, limit {gpus[0]['power_limit_watts'] if gpus else None} W",
    )
    pids = {p["pid"] for g in gpus for p in g["processes"]}
    memory = [
        p["used_memory_bytes"] for g in gpus for p in g["processes"] if p["pid"] == loadgen_pid
    ]
    checks.add(
        "nvml lists the loadgen process",
        loadgen_pid in pids,
        f"pid {loadgen_pid}; NVML listed {sorted(pids)}; memory max "
        f"{max((m for m in memory if m), default=None)}",
    )
    sm = [
        p["sm_utilization"]
        for g in gpus
        for p in g["processes"]
        if p["pid"] == loadgen_pid and p["sm_utilization"] is not None
    ]
    checks.add(
        "nvml per-process SM samples",
        bool(sm),
        f"{len(sm)} readings, max {max(sm) if sm else None}",
    )
    errors: dict[str, int] = {}
    for s in node.snapshots:
        errors.update(s["errors"])
    checks.info(
        "nvml errors and gaps",
        f"errors counted {errors}; NotSupported {sorted(_unsupported(trace))}; "
        f"absent from pynvml {trace['absent']}",
    )
    held = one(steady, "gpuledger_pod_gpu_allocated", **pod)
    util_steady = one(steady, "gpuledger_pod_gpu_utilization_ratio", **pod)
    util_idle = one(idle, "gpuledger_pod_gpu_utilization_ratio", **pod)
    checks.add("pod attributed its GPU", held == 1, f"gpuledger_pod_gpu_allocated={held}")
    checks.add(
        "pod utilization steady > idle",
        (util_steady or 0) > 0.3 and (util_idle or 0) < 0.2,
        f"steady {util_steady}, idle {util_idle}",
    )
    busy = one(end, "gpuledger_pod_gpu_busy_seconds_total", **pod)
    seconds = one(end, "gpuledger_pod_gpu_allocated_seconds_total", **pod)
    truth = sum(
        r["busy_ratio"] * r["duration_s"]
        for r in timeline
        if r.get("type") == "phase_end" and r.get("busy_ratio") is not None
    )
    checks.add(
        "pod busy GPU-seconds vs timeline",
        busy is not None and truth > 0 and 0.7 <= busy / truth <= 1.4,
        f"exporter {busy} of {seconds} held s; loadgen's CUDA-event busy time {truth:.1f} s "
        f"(ratio {busy / truth if busy and truth else None})",
    )
    phases = {r["phase"]: r for r in timeline if r.get("type") == "phase_end"}
    steady_phase = phases.get("steady", {})
    run_end = next((r for r in timeline if r.get("type") == "run_end"), {})
    checks.add(
        "loadgen ran on CUDA",
        run_end.get("status") == "ok",
        f"status {run_end.get('status')}; steady MFU {steady_phase.get('mfu')}, "
        f"{steady_phase.get('tokens_per_s')} tokens/s, busy {steady_phase.get('busy_ratio')}",
    )
    fill = phases.get("fill", {}).get("memory_bytes_max") or 0
    total = (gpus[0]["memory_total_bytes"] or 0) if gpus else 0
    checks.add(
        "memory ramp reached half the card",
        fill > 0 if node.fake else fill >= 0.45 * total,
        f"max reserved {fill} B of {total} B",
    )
    if nccl is None:
        checks.add("nccl one-rank all_reduce", False, "worker failed: see log.txt")
        return
    probe_bytes = one(end, "gpuledger_collective_bytes_total", **pod)
    probe_calls = one(end, "gpuledger_collective_calls_total", **pod)
    probe_seconds = one(end, "gpuledger_collective_seconds_total", **pod)
    checks.add(
        "probe bytes exact",
        probe_bytes == nccl["bytes"],
        f"exporter {probe_bytes} B in {probe_calls} calls; worker {nccl['bytes']} B "
        f"in {nccl['calls']} calls ({nccl['backend']})",
    )
    timed = nccl["timed_seconds"]
    # One rank's all_reduce moves no data (NCCL returns after a launch), so its time says
    # nothing about bandwidth; what is checked is that the probe's CUDA-event path timed
    # every call and reported it.
    checks.add(
        "probe timed every NCCL call",
        probe_calls == nccl["calls"] and probe_seconds is not None and probe_seconds >= timed,
        f"probe {probe_seconds} s over {probe_calls} calls (first call's setup included); "
        f"worker's own events {timed:.4f} s over its timed loops; per call "
        + ", ".join(
            f"{s['bytes'] // MIB} MiB {s['seconds'] / s['iterations'] * 1e6:.0f} us"
            for s in nccl["sizes"]
        ),
    )


def _result(ok: bool | None) -> str:
    return "info" if ok is None else "ok" if ok else "FAILED"


def _unsupported(trace: dict[str, Any]) -> set[str]:
    import pynvml

    codes = {pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND}
    return {c["fn"] for c in trace["calls"] if c.get("error") in codes}


# --------------------------------------------------------------------- shared GPU


def run_shared(args: argparse.Namespace, out: Path, checks: Checks) -> dict[str, Any]:
    """Two pods time-slice the GPU: A trains throughout, B trains, idles, trains. The
    exporter splits the GPU between them by their processes' SM samples."""
    device = "cpu" if args.fake else "cuda"
    model = "tiny" if args.fake else args.model
    plans = {
        "a": [{"name": "steady", "kind": "steady", "duration_s": 55 * args.scale}],
        "b": [
            {"name": "steady", "kind": "steady", "duration_s": 20 * args.scale},
            {"name": "held-idle", "kind": "idle", "duration_s": 20 * args.scale},
            {"name": "steady-again", "kind": "steady", "duration_s": 10 * args.scale},
        ],
    }
    scrapes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        work = Path(folder)
        node = Node(work, args.fake, SHARED)
        runs: dict[str, tuple[subprocess.Popen, Path]] = {}
        for index, (tenant, phases) in enumerate(plans.items()):
            profile = work / f"{tenant}.yaml"
            profile.write_text(json.dumps({"name": f"tenant-{tenant}", "phases": phases}))
            timeline = out / f"timeline_{tenant}.jsonl"
            command = loadgen_command(
                profile, device, timeline, model, "--progress", "off", "--job", f"tenant-{tenant}"
            )
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            node.adopt(process.pid, timeline, pod=index)
            runs[tenant] = (process, timeline)
        (a, a_timeline), (b, b_timeline) = runs["a"], runs["b"]
        _wait_for_phase(a_timeline, "steady", a, timeout=240)
        _wait_for_phase(b_timeline, "steady", b, timeout=240)
        time.sleep(12 * args.scale)
        scrapes["both"] = node.scrape()
        _wait_for_phase(b_timeline, "held-idle", b, timeout=240)
        time.sleep(10 * args.scale)
        scrapes["b_idle"] = node.scrape()
        for tenant, (process, _) in runs.items():
            _, errors = process.communicate(timeout=600)
            log.info("tenant %s exited %s: %s", tenant, process.returncode, errors[-2000:])
            checks.add(
                f"tenant {tenant} finished", process.returncode == 0, f"exit {process.returncode}"
            )
        time.sleep(3)
        scrapes["end"] = node.scrape()
        trace = node.close()
    from tests.fakes import nvml_trace

    nvml_trace.save(trace, out / "nvml_trace_shared.json.gz")
    for name, text in scrapes.items():
        (out / f"metrics_shared_{name}.txt").write_text(text)
    check_shared(checks, scrapes, {t: timeline for t, (_, timeline) in runs.items()})
    return trace


def check_shared(checks: Checks, scrapes: dict[str, str], timelines: dict[str, Path]) -> None:
    def pods_and_gpu(text: str, pod_metric: str, gpu_metric: str) -> tuple[dict, float | None]:
        per_pod = {labels["pod"]: value for labels, value in series(text, pod_metric)}
        return per_pod, one(text, gpu_metric)

    held = {
        labels["pod"]: labels
        for labels, _ in series(scrapes["both"], "gpuledger_pod_gpu_allocated")
    }
    checks.add(
        "both pods hold the shared GPU",
        set(held) == {"tenant-a", "tenant-b"}
        and all(labels.get("sharing") == "shared" for labels in held.values()),
        f"{ {pod: labels.get('sharing') for pod, labels in held.items()} }",
    )
    util = "gpuledger_pod_gpu_utilization_ratio"
    both, gpu_both = pods_and_gpu(scrapes["both"], util, "gpuledger_gpu_utilization_ratio")
    idle, gpu_idle = pods_and_gpu(scrapes["b_idle"], util, "gpuledger_gpu_utilization_ratio")
    checks.add(
        "split while both train",
        gpu_both is not None
        and min(both.values(), default=0) > 0.1
        and abs(sum(both.values()) - gpu_both) <= 0.05,
        f"GPU {gpu_both}; pods {both}",
    )
    checks.add(
        "split while B idles",
        gpu_idle is not None
        and idle.get("tenant-b", 1) <= 0.05
        and abs(idle.get("tenant-a", 0) - gpu_idle) <= 0.05,
        f"GPU {gpu_idle}; pods {idle}",
    )
    busy, gpu_busy = pods_and_gpu(
        scrapes["end"], "gpuledger_pod_gpu_busy_seconds_total", "gpuledger_gpu_busy_seconds_total"
    )
    total = sum(busy.values())
    checks.add(
        "pods' busy seconds add up to the GPU's",
        gpu_busy is not None and gpu_busy > 0 and 0.9 <= total / gpu_busy <= 1.01,
        f"GPU {gpu_busy} s; pods {busy} (sum {total:.1f} s)",
    )
    rates = {}
    for tenant, path in timelines.items():
        records = [json.loads(line) for line in path.read_text().splitlines() if line]
        rates[tenant] = {
            r["phase"]: round(r["tokens_per_s"]) for r in records if r.get("type") == "phase_end"
        }
    checks.info("tokens/s by phase", f"{rates}")


# --------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
        handlers=[logging.FileHandler(out / "log.txt"), logging.StreamHandler()],
    )
    from tests.fakes import nvml_trace

    if not args.fake:
        smi = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, check=False)
        (out / "nvidia-smi.txt").write_text(smi.stdout + smi.stderr)
    device = "cpu" if args.fake else "cuda"
    checks = Checks()
    if args.scenario == "shared":
        trace = run_shared(args, out, checks)
        return finish(out, checks, calls_recorded=len(trace["calls"]), fake=args.fake)
    exporter_cli(checks, "simulated" if args.fake else "nvml")
    scrapes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        work = Path(folder)
        timeline_path = out / "timeline.jsonl"
        node = Node(work, args.fake)
        profile = loadgen_profile(work, args.scale)
        model = "tiny" if args.fake else args.model
        command = loadgen_command(profile, device, timeline_path, model, "--progress", "plain")
        log.info("loadgen: %s", " ".join(command))
        started = time.monotonic()
        loadgen = subprocess.Popen(
            command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        node.adopt(loadgen.pid, timeline_path)
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(loadgen.stdout), daemon=True)
        reader.start()
        # Scrape well inside the steady and idle phases (they start once the model is
        # built and on the device: wait for the timeline to say so).
        for name, phase, into in (("steady", "steady", 15), ("idle", "held-idle", 9)):
            _wait_for_phase(timeline_path, phase, loadgen, timeout=240)
            time.sleep(into * args.scale)
            scrapes[name] = node.scrape()
            (out / f"metrics_{name}.txt").write_text(scrapes[name])
        code = loadgen.wait(timeout=600)
        reader.join(5)
        log.info(
            "loadgen exited %s after %.0f s; last lines:\n%s",
            code,
            time.monotonic() - started,
            "".join(output[-25:]),
        )
        nccl = None
        result = work / "nccl.json"
        worker = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "nccl-worker",
                "--socket",
                node.probe_socket,
                "--result",
                str(result),
                "--device",
                device,
                "--port",
                str(free_port()),
            ],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        node.adopt(worker.pid, timeline_path)
        worker_out, _ = worker.communicate(timeout=300)
        log.info("nccl worker exited %s:\n%s", worker.returncode, worker_out[-3000:])
        if worker.returncode == 0:
            nccl = json.loads(result.read_text())
        time.sleep(3)  # the probe's last report, then one collection and a scrape
        scrapes["end"] = node.scrape()
        (out / "metrics_end.txt").write_text(scrapes["end"])
        trace = node.close()
        nvml_trace.save(trace, out / "nvml_trace.json.gz")
        big = throughput(args, work, device) if args.big_model else None
    timeline = [json.loads(line) for line in timeline_path.read_text().splitlines() if line]
    check_all(checks, node, scrapes, timeline, loadgen.pid, nccl, trace)
    if big is not None:
        checks.add(
            f"loadgen {big['model']} throughput",
            big.get("mfu") is not None,
            f"{big.get('tokens_per_s')} tokens/s, {big.get('flops_per_s')} FLOP/s, "
            f"MFU {big.get('mfu')}, busy {big.get('busy_ratio')}, "
            f"step median {big.get('step_s_median')} s, memory {big.get('memory_bytes_max')} B",
        )
    return finish(
        out,
        checks,
        big_model=big,
        nccl=nccl,
        calls_recorded=len(trace["calls"]),
        snapshots=len(trace["snapshots"]),
        fake=args.fake,
    )


def finish(out: Path, checks: Checks, **facts: Any) -> int:
    """summary.json, the table printed last; exit 1 if any check failed."""
    summary = {"checks": checks.rows, **facts}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(checks.table())
    return 0 if all(r["ok"] is not False for r in checks.rows) else 1


def exporter_cli(checks: Checks, source: str) -> None:
    """`gpuledger exporter` as a user starts it: finds the GPU by itself, stops on SIGTERM."""
    port = free_port()
    device = ["--simulated"] if source == "simulated" else ["--device", "auto"]
    command = [sys.executable, "-m", "gpuledger.cli", "exporter", *device]
    command += ["--listen", f"127.0.0.1:{port}", "--no-kubelet", "--no-pod-watch"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    text, deadline = "", time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
            if f'source="{source}"' in text:
                break
        except OSError:
            pass
        time.sleep(0.5)
    process.terminate()
    try:
        output, _ = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    up = max((v for _, v in series(text, "gpuledger_gpu_up", source=source)), default=None)
    log.info("exporter CLI output:\n%s", output.decode(errors="replace")[-2000:])
    checks.add(
        "exporter CLI finds the GPU",
        up == 1 and process.returncode == 0,
        f"gpuledger_gpu_up{{source={source}}}={up}; exit on SIGTERM {process.returncode}",
    )


def throughput(args: argparse.Namespace, work: Path, device: str) -> dict | None:
    """A larger model's steady training, alone on the GPU: its phase_end record."""
    profile = work / "throughput.yaml"
    phases = [{"name": "steady", "kind": "steady", "duration_s": 40 * args.scale}]
    profile.write_text(json.dumps({"name": "throughput", "description": "MFU", "phases": phases}))
    timeline = work / "throughput.jsonl"
    model = "tiny" if args.fake else args.big_model
    command = loadgen_command(profile, device, timeline, model, "--progress", "plain")
    done = subprocess.run(
        command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=400, check=False
    )
    log.info("%s exited %s:\n%s", model, done.returncode, (done.stdout + done.stderr)[-3000:])
    records = [json.loads(line) for line in timeline.read_text().splitlines() if line]
    end = next((r for r in records if r.get("type") == "phase_end"), None)
    return None if end is None else {**end, "model": model}


def _wait_for_phase(path: Path, phase: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = path.read_text().splitlines() if path.exists() else []
        if any(
            (r := json.loads(line)).get("type") == "phase_start" and r.get("phase") == phase
            for line in records
            if line
        ):
            return
        if process.poll() is not None:
            raise RuntimeError(f"the load generator exited ({process.returncode}) before {phase}")
        time.sleep(0.2)
    raise RuntimeError(f"the load generator did not reach {phase} in {timeout} s")


def _current_phase_kind(path: Path) -> str | None:
    kind = None
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        record = json.loads(line)
        if record.get("type") == "phase_start":
            kind = record.get("kind")
        elif record.get("type") == "phase_end":
            kind = None
    return kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("nccl-worker")
    worker.add_argument("--socket", required=True)
    worker.add_argument("--result", required=True)
    worker.add_argument("--device", default="cuda")
    worker.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", default="gpu-check")
    parser.add_argument("--fake", action="store_true", help="fake NVML and the CPU: a rehearsal")
    parser.add_argument("--model", default="gpt2-124m")
    parser.add_argument(
        "--scenario",
        choices=("main", "shared"),
        default="main",
        help="main: the checks above; shared: two pods time-slicing the GPU",
    )
    parser.add_argument(
        "--big-model", default="gpt-1b", help="model for the throughput run ('' to skip)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the phase durations")
    args = parser.parse_args(argv)
    if args.command == "nccl-worker":
        return nccl_worker(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
