"""The local stack: simulated GPUs that follow the training's phases, real Prometheus and
Alertmanager, real gloo training whose collectives reach Prometheus, and nothing left
running afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import uuid
from pathlib import Path

import pytest
import yaml

from exporter.sources.scenario import load_scenario
from exporter.sources.simulated import SimulatedSource
from gpuledger import stack as st
from gpuledger.services import http_get, require_binary
from loadgen import timeline
from loadgen.profile import KINDS

TEST_MARK = "GPULEDGER_TEST_MARK"


def write_profile(folder: Path, phases: list[dict], nproc: int = 2) -> Path:
    path = folder / "profile.yaml"
    path.write_text(
        yaml.safe_dump({"name": "stack-test", "model": "tiny", "nproc": nproc, "phases": phases})
    )
    return path


@pytest.fixture
def test_mark(monkeypatch: pytest.MonkeyPatch) -> str:
    """A marker every process started by the test inherits, to find any left behind."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(TEST_MARK, mark)
    return mark


# ---------------------------------------------------------------- the scenario


def test_scenario_has_a_phase_for_every_loadgen_kind() -> None:
    names = {p.name for p in load_scenario(st.SCENARIO).phases}
    assert set(KINDS) | {st.BEFORE_RUN, st.AFTER_RUN} <= names


def _record(path: Path, **fields: object) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"rank": 0, "ts": time.time(), **fields}) + "\n")


def test_simulated_gpus_follow_the_timeline_by_phase_kind(tmp_path: Path) -> None:
    path = tmp_path / "timeline.jsonl"
    now = [1000.0]
    source = SimulatedSource(st.SCENARIO, clock=lambda: now[0], wall_clock=lambda: now[0])
    source.follow(st._phase_driver(path))

    def sample(seconds: float = 1.0):
        now[0] += seconds
        return source.sample()

    def pods() -> set[str]:
        return {p.pod for p in source.pods_at(now[0])}

    sample()
    assert source.current_phase == st.BEFORE_RUN
    assert pods() == {"vit-eval-0"}  # the training pods are not scheduled yet

    _record(path, type="phase_start", phase="held-idle", kind="idle", start=now[0])
    snapshot = sample(5)
    assert source.current_phase == "idle"
    assert pods() == {"llm-train-0", "llm-train-1", "vit-eval-0"}
    assert snapshot.gpus[0].utilization == 0.0 and snapshot.gpus[0].memory_used_bytes > 0

    # Between two phases the last one holds; then the straggler's GPU throttles.
    _record(path, type="phase_end", phase="held-idle", kind="idle")
    sample()
    assert source.current_phase == "idle"
    _record(path, type="phase_start", phase="slow-rank", kind="straggler", start=now[0])
    snapshot = sample(2)
    assert source.current_phase == "straggler"
    assert snapshot.gpus[1].clock_events.get("hw_thermal_slowdown") is True
    assert not snapshot.gpus[0].clock_events.get("hw_thermal_slowdown")

    # Another rank's records do not move it; rank 0's run_end does.
    with path.open("a") as f:
        f.write(json.dumps({"type": "run_end", "rank": 1, "status": "ok"}) + "\n")
    sample()
    assert source.current_phase == "straggler"
    _record(path, type="run_end", status="ok")
    sample()
    assert source.current_phase == st.AFTER_RUN
    assert pods() == {"vit-eval-0"}


# ---------------------------------------------------------------- rules and routes


def test_fast_rules_are_valid_for_promtool(tmp_path: Path) -> None:
    from alerts import rules

    paths = rules.write(tmp_path, st.fast_rules_config())
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", *map(str, paths)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = yaml.safe_load(paths[1].read_text())
    fors = {r["alert"]: r.get("for", "0s") for g in alerts["groups"] for r in g["rules"]}
    # Waits of seconds, so that alerts fire within phases of 15 s.
    assert fors["GpuledgerGpuHeldIdle"] == "3s"
    assert all(f.endswith("s") and not f.endswith("ms") for f in fors.values())


def test_bad_rules_override_is_refused() -> None:
    from alerts.config import ConfigError

    with pytest.raises(ConfigError, match="idle_for"):
        st.fast_rules_config(idle_for="soon")


def test_alertmanager_routes_every_receiver_to_the_local_webhook() -> None:
    config = st.alertmanager_config("http://127.0.0.1:1234")
    urls = [w["url"] for r in config["receivers"] for w in r["webhook_configs"]]
    names = [r["name"] for r in config["receivers"]]
    assert urls == [f"http://127.0.0.1:1234/{name}" for name in names]
    assert config["route"]["group_wait"] == "1s"


# ---------------------------------------------------------------- bad input


def test_unknown_profile_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(st.StackError, match="no profile 'no-such-profile'.*quick"):
        st.LocalStack(tmp_path / "out", profile="no-such-profile")
    assert not (tmp_path / "out").exists()


def test_profile_that_needs_more_ranks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(st.StackError, match="--nproc 2"):
        st.LocalStack(tmp_path, profile="quick", nproc=1)


def test_zero_ranks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(st.StackError, match="--nproc must be 1 or more, got 0"):
        st.LocalStack(tmp_path, nproc=0)


def test_unknown_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(st.StackError, match="auto, nvml or simulated"):
        st.LocalStack(tmp_path, device="gpu")


def test_unwritable_workdir_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(st.StackError, match="choose another output directory"):
        st.LocalStack(blocker / "out")


def test_nvml_asked_for_without_a_driver_says_what_to_do(tmp_path: Path) -> None:
    from exporter.sources.nvml import NvmlSource, NvmlUnavailable

    try:
        NvmlSource(xid_events=False).close()
        pytest.skip("this machine has an NVIDIA driver")
    except NvmlUnavailable:
        pass
    stack = st.LocalStack(tmp_path, device="nvml")
    with (
        pytest.raises(st.StackError, match="device nvml: NVML could not start.*auto or simulated"),
        stack,
    ):
        pass
    assert stack.exporter is None and stack.prometheus is None


def test_a_gpu_that_nvml_reads_is_used_instead_of_simulated_ones(tmp_path: Path) -> None:
    from tests.fakes.fake_pynvml import make_fake_pynvml

    nvml = make_fake_pynvml(2)
    with st.LocalStack(
        tmp_path, device="auto", nvml=nvml, with_prometheus=False, with_alertmanager=False
    ) as stack:
        assert stack.source_name == "nvml" and stack.fallback_reason is None
        assert stack.source_detail.startswith("2 x ")
        body = st.wait_until(
            lambda: (
                (text := http_get(f"{stack.exporter.url}/metrics").decode())
                and "gpuledger_gpu_up{" in text
                and text
            ),
            what="GPU metrics",
        )
        assert 'source="nvml"' in body and 'source="simulated"' not in body


def test_nvml_without_gpus_falls_back_to_simulated_and_says_why(tmp_path: Path) -> None:
    from tests.fakes.fake_pynvml import make_fake_pynvml

    with st.LocalStack(
        tmp_path, nvml=make_fake_pynvml(0), with_prometheus=False, with_alertmanager=False
    ) as stack:
        assert stack.source_name == "simulated"
        assert stack.fallback_reason == "NVML answered but lists no GPU"


def test_without_prometheus_and_alertmanager_the_exporter_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with st.LocalStack(tmp_path / "out", profile="quick") as stack:
        assert stack.prometheus is None and stack.alertmanager is None
        assert len(stack.missing) == 2
        assert all("apt-get install prometheus prometheus-alertmanager" in m for m in stack.missing)
        assert stack.source_name == "simulated"
        assert stack.exporter is not None
        body = st.wait_until(
            lambda: http_get(f"{stack.exporter.url}/metrics").decode(), what="metrics"
        )
        assert "gpuledger_gpu_info{" in body and 'source="simulated"' in body
        assert stack.alerts_fired() == []


# ---------------------------------------------------------------- the whole stack


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_stack_scrapes_the_exporter_and_real_collectives_then_stops_everything(
    tmp_path: Path, test_mark: str
) -> None:
    profile = write_profile(
        tmp_path,
        [
            {"name": "train", "kind": "steady", "duration_s": "6s"},
            {"name": "talk", "kind": "communication", "duration_s": "3s", "message_bytes": "1MiB"},
        ],
    )
    stack = st.LocalStack(tmp_path / "stack", profile=str(profile))
    with stack:
        prom = stack.prometheus
        assert prom is not None and stack.alertmanager is not None
        assert prom.value(f'up{{job="{st.EXPORTER_JOB}"}}') == 1
        assert prom.value('count(gpuledger_gpu_info{source="simulated"})') == 4
        loadgen = stack.start_loadgen(["--peak-flops", "1e10", "--threads", "1"])
        assert loadgen.wait(timeout=180) == 0, loadgen.tail()

        records = timeline.read(stack.timeline_path)
        truth = sum(r["collective_bytes"] for r in timeline.steps(records))
        assert truth > 0
        rank_pods = {f"pid-{r['pid']}" for r in records if r["type"] == "run_start"}
        assert len(rank_pods) == 2
        query = 'sum(gpuledger_collective_bytes_total{namespace="local", operation="all_reduce"})'
        # Exactly the bytes the training all-reduced, once the last report is scraped.
        prom.wait_until(lambda: prom.value(query) == truth, timeout=30, what=f"{query} == {truth}")
        pods = {
            s["metric"]["pod"]
            for s in prom.query('gpuledger_collective_bytes_total{namespace="local"}')
        }
        assert pods == rank_pods
        # Both ranks' own metrics were scraped too.
        up = prom.query(f'max_over_time(up{{job="{st.LOADGEN_JOB}"}}[5m])')
        assert sorted(float(s["value"][1]) for s in up) == [1.0, 1.0]
        prometheus_url, socket_dir = prom.url, Path(stack.probe_socket).parent

    assert st.marked_processes(test_mark, env=TEST_MARK) == []
    assert not socket_dir.exists()
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        http_get(f"{prometheus_url}/-/ready", timeout=2)
    assert os.environ[TEST_MARK] == test_mark  # the marker was there to inherit
