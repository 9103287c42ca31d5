"""The exporter end to end in process: collection loop, collectors, HTTP, faults."""

import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalogue as cat
from exporter.app import Exporter
from exporter.attribution import Attribution
from exporter.model import ProcessReading
from tests.exporter.devices import (
    GIB,
    ScriptedSource,
    assign,
    h100,
    mig_gpu,
    pod,
    static_attribution,
)

GOLDEN = Path(__file__).parent / "golden" / "exposition.txt"


def fleet_attribution(gpus):
    shared, migs = gpus[1], gpus[2]
    devices = assign(gpus[0].uuid, pod("train-0"))
    devices |= assign(
        shared.uuid, pod("nb-1", "team-b"), pod("nb-2", "team-b"), resource="nvidia.com/gpu.shared"
    )
    for i, mig in enumerate(migs.mig):
        devices |= assign(mig.uuid, pod(f"infer-{i}", "team-c"), resource="nvidia.com/mig-1g.10gb")
    return Attribution(
        devices=devices, processes={41: pod("nb-1", "team-b"), 42: pod("nb-2", "team-b")}
    )


def fleet():
    shared = h100(
        1,
        utilization=0.5,
        processes=(
            ProcessReading(pid=41, used_memory_bytes=3 * GIB, sm_utilization=0.3),
            ProcessReading(pid=42, used_memory_bytes=5 * GIB, sm_utilization=0.1),
        ),
        xid_counts={79: 1},
        last_xid_timestamp=1_700_000_500.0,
    )
    return [h100(0), shared, mig_gpu(2, instances=3)]


def families(text):
    return {f.name: f for f in text_string_to_metric_families(text)}


def scrape(url, path="/metrics"):
    with urllib.request.urlopen(url + path, timeout=5) as response:
        return response.status, response.read().decode()


def collect_text(exporter, times=3):
    for _ in range(times):
        exporter.loop.collect_once()
    return exporter.renderer.render().decode()


def test_exposition_matches_the_golden_file():
    gpus = fleet()
    exporter = Exporter(
        ScriptedSource(gpus),
        "node-a",
        static_attribution(fleet_attribution(gpus)),
        dcgm_compat=True,
    )
    text = collect_text(exporter)
    # Lines that change from run to run: durations, wall-clock times, versions.
    stable = (
        "\n".join(
            line
            for line in text.splitlines()
            if not any(
                word in line
                for word in ("duration_seconds", "last_collection_timestamp", "build_info")
            )
        )
        + "\n"
    )
    committed = GOLDEN.read_text() if GOLDEN.exists() else ""
    if committed != stable:
        GOLDEN.with_suffix(".new").write_text(stable)
    assert committed == stable, (
        f"exposition changed: compare {GOLDEN} with {GOLDEN.with_suffix('.new')}"
    )


def test_every_gpuledger_series_is_in_the_catalogue_with_its_labels():
    gpus = fleet()
    exporter = Exporter(ScriptedSource(gpus), "node-a", static_attribution(fleet_attribution(gpus)))
    seen = set()
    for family in text_string_to_metric_families(collect_text(exporter)):
        for sample in family.samples:
            assert sample.name.startswith(cat.PREFIX), sample.name
            spec = cat.CATALOGUE.get(family.name) or cat.CATALOGUE.get(family.name + "_total")
            assert spec is not None, f"{family.name} is not in the catalogue"
            labels = set(sample.labels) - {"le"}
            assert labels == set(spec.labels), f"{sample.name}: {labels} != {spec.labels}"
            seen.add(spec.name)
    assert cat.POD_GPU_BUSY_SECONDS.name in seen and cat.GPU_XID_ERRORS.name in seen


def test_pod_counters_add_up_to_the_gpu():
    gpus = fleet()
    exporter = Exporter(
        ScriptedSource(gpus, step=1.0), "node-a", static_attribution(fleet_attribution(gpus))
    )
    parsed = families(collect_text(exporter, times=5))  # 4 periods of 1 s
    busy = {(s.labels["pod"]): s.value for s in parsed["gpuledger_pod_gpu_busy_seconds"].samples}
    assert busy["nb-1"] + busy["nb-2"] == pytest.approx(4 * 0.5)
    assert busy["nb-1"] == pytest.approx(4 * 0.5 * 0.75)
    held = {s.labels["pod"]: s.value for s in parsed["gpuledger_pod_gpu_allocated_seconds"].samples}
    assert held["train-0"] == pytest.approx(4.0)
    assert held["nb-1"] == pytest.approx(2.0)
    assert held["infer-0"] == pytest.approx(4 / 7)


def test_a_departed_pod_keeps_its_counters_for_the_last_scrape_but_no_gauges():
    gpus = [h100(0, utilization=1.0)]
    held = Attribution(devices=assign(gpus[0].uuid, pod("train-0")))
    current = {"attribution": held}
    exporter = Exporter(
        ScriptedSource(gpus, step=1.0), "node-a", lambda snapshot: current["attribution"]
    )
    before = families(collect_text(exporter, times=3))
    assert {"gpuledger_pod_gpu_allocated", "gpuledger_pod_gpu_utilization_ratio"} <= set(before)
    current["attribution"] = Attribution()
    parsed = families(collect_text(exporter, times=1))
    counter = parsed["gpuledger_pod_gpu_allocated_seconds"]
    held_s = {s.labels["pod"]: s.value for s in counter.samples}
    assert held_s == {"train-0": pytest.approx(2.0)}  # frozen at its last credited period
    assert "gpuledger_pod_gpu_allocated" not in parsed  # it holds nothing now
    assert "gpuledger_pod_gpu_utilization_ratio" not in parsed


def test_dcgm_compat_names_units_and_labels():
    gpus = fleet()
    exporter = Exporter(
        ScriptedSource(gpus),
        "node-a",
        static_attribution(fleet_attribution(gpus)),
        dcgm_compat=True,
    )
    parsed = families(collect_text(exporter))
    util = {
        s.labels["gpu"] + "/" + s.labels["pod"]: s.value
        for s in parsed["DCGM_FI_DEV_GPU_UTIL"].samples
    }
    assert util["0/train-0"] == pytest.approx(50.0)  # percent
    assert util["1/nb-1"] + util["1/nb-2"] == pytest.approx(50.0)  # split, not repeated
    fb = {
        s.labels["gpu"]: s.value
        for s in parsed["DCGM_FI_DEV_FB_USED"].samples
        if s.labels["pod"] == "train-0"
    }
    assert fb["0"] == pytest.approx(40 * 1024)  # MiB
    energy = parsed["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]
    sample = next(s for s in energy.samples if s.labels["gpu"] == "0")
    assert sample.name == "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"  # dcgm-exporter's name, no _total
    assert sample.value == pytest.approx(1_000_000)  # mJ
    assert set(sample.labels) == {
        "gpu",
        "UUID",
        "device",
        "modelName",
        "Hostname",
        "container",
        "namespace",
        "pod",
    }
    assert sample.labels["device"] == "nvidia0" and sample.labels["Hostname"] == "node-a"
    assert {
        s.value for s in parsed["DCGM_FI_DEV_XID_ERRORS"].samples if s.labels["gpu"] == "1"
    } == {79.0}


def test_series_cap_drops_new_pods_and_counts_them():
    gpus = [mig_gpu(0, instances=7)]
    devices = {}
    for i, mig in enumerate(gpus[0].mig):
        devices |= assign(mig.uuid, pod(f"p{i}"))
    exporter = Exporter(
        ScriptedSource(gpus),
        "n",
        static_attribution(Attribution(devices=devices)),
        max_pod_series=5,
    )
    parsed = families(collect_text(exporter))
    assert len(parsed["gpuledger_pod_gpu_allocated"].samples) == 5
    assert parsed["gpuledger_exporter_dropped_series"].samples[0].value == 2


def test_departed_pods_counters_count_against_the_series_cap():
    gpus = [mig_gpu(0, instances=4)]
    current = {}

    def attribution(names):
        devices = {}
        for name, mig in zip(names, gpus[0].mig, strict=False):
            devices |= assign(mig.uuid, pod(name))
        return Attribution(devices=devices)

    exporter = Exporter(
        ScriptedSource(gpus, step=1.0),
        "n",
        lambda snapshot: current["attribution"],
        max_pod_series=4,
    )
    current["attribution"] = attribution(["p0", "p1", "p2", "p3"])
    collect_text(exporter, times=2)
    current["attribution"] = attribution(["q0", "q1"])  # two leave, two new ones come
    parsed = families(collect_text(exporter, times=1))
    held = {s.labels["pod"] for s in parsed["gpuledger_pod_gpu_allocated_seconds"].samples}
    # 2 live + 4 departed would be 6 series: the 2 live stay, 2 departed fit.
    assert len(held) == 4 and {"q0", "q1"} <= held
    assert parsed["gpuledger_exporter_dropped_series"].samples[0].value == 2


def test_lost_gpu_is_down_and_the_others_keep_their_series():
    gpus = [h100(0), h100(1, up=False, error="GPU is lost")]
    exporter = Exporter(ScriptedSource(gpus), "n")
    parsed = families(collect_text(exporter))
    up = {s.labels["gpu"]: s.value for s in parsed["gpuledger_gpu_up"].samples}
    assert up == {"0": 1.0, "1": 0.0}
    assert {s.labels["gpu"] for s in parsed["gpuledger_gpu_utilization_ratio"].samples} == {"0"}


def test_source_crash_keeps_serving_and_is_reported():
    source = ScriptedSource([h100(0)])
    exporter = Exporter(source, "n")
    exporter.loop.collect_once()
    source.fail_with = RuntimeError("driver wedged")
    parsed = families(collect_text(exporter, times=2))
    assert {
        s.labels["collector"]: s.value for s in parsed["gpuledger_exporter_collector_up"].samples
    }["device"] == 0
    errors = {
        (s.labels["source"], s.labels["reason"]): s.value
        for s in parsed["gpuledger_exporter_attribution_errors"].samples
    }
    assert errors[("device", "RuntimeError")] == 2
    assert parsed["gpuledger_gpu_up"].samples[0].value == 1.0  # last good snapshot still served


def test_attribution_crash_keeps_the_last_mapping_and_marks_it_stale():
    gpus = [h100(0)]
    good = Attribution(devices=assign(gpus[0].uuid, pod("a")))
    calls = {"n": 0}

    def flaky(snapshot):
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("kubelet gone")
        return good

    exporter = Exporter(ScriptedSource(gpus), "n", flaky)
    parsed = families(collect_text(exporter, times=3))
    assert [s.labels["pod"] for s in parsed["gpuledger_pod_gpu_allocated"].samples] == ["a"]
    stale = {
        s.labels["source"]: s.value for s in parsed["gpuledger_exporter_attribution_stale"].samples
    }
    assert stale["attribution"] == 1


def test_nvml_errors_are_exported_by_function_and_code():
    source = ScriptedSource([h100(0)])
    source.errors = {("nvmlDeviceGetPowerUsage", "Unknown"): 4}
    parsed = families(collect_text(Exporter(source, "n")))
    (sample,) = parsed["gpuledger_exporter_nvml_errors"].samples
    assert sample.labels == {"node": "n", "function": "nvmlDeviceGetPowerUsage", "code": "Unknown"}
    assert sample.value == 4


def test_http_endpoints_and_a_scrape_that_never_waits_for_hardware():
    release = threading.Event()
    source = ScriptedSource([h100(0)])
    exporter = Exporter(source, "n", interval_s=0.05)
    exporter.loop.collect_once()
    blocked = threading.Event()

    def block(_):
        blocked.set()
        release.wait(30)

    source.before_sample = block
    exporter.serve("127.0.0.1", 0)
    try:
        assert blocked.wait(5)
        # The device is stuck in sample(); the scrape still answers from the last state.
        status, text = scrape(exporter.url)
        assert status == 200 and "gpuledger_gpu_up" in text
        assert scrape(exporter.url, "/readyz")[0] == 200
        assert scrape(exporter.url, "/healthz")[0] == 200
        with pytest.raises(urllib.error.HTTPError) as missing:
            scrape(exporter.url, "/nope")
        assert missing.value.code == 404
        request = urllib.request.Request(
            exporter.url + "/metrics", headers={"Accept-Encoding": "gzip"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Encoding"] == "gzip"
    finally:
        release.set()
        exporter.stop()
    assert source.closed


def test_promtool_check_metrics_is_clean():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: run `make test`, which installs Debian's prometheus"
        )
    gpus = fleet()
    exporter = Exporter(
        ScriptedSource(gpus), "n", static_attribution(fleet_attribution(gpus)), dcgm_compat=False
    )
    text = collect_text(exporter)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", (
        result.stdout + result.stderr
    )
