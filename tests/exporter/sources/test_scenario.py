"""Scenario files: the built-in ones load, and every malformed file says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from exporter.sources.scenario import (
    GIB,
    GPU_MODELS,
    DeviceRef,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
    parse_scenario,
)

H100 = "NVIDIA H100 80GB HBM3"


def base() -> dict:
    """A small valid scenario that each malformed case breaks in one place."""
    return {
        "node": "n1",
        "gpus": [
            {"model": H100, "count": 2},
            {"model": H100, "mig": [{"profile": "1g.10gb", "count": 7}]},
            {"model": H100, "time_slicing": {"replicas": 2}},
        ],
        "pods": [
            {"namespace": "a", "pod": "train", "devices": [{"gpu": 0}, {"gpu": 1}], "pids": [1, 2]},
            {"namespace": "a", "pod": "mig", "devices": [{"gpu": 2, "mig": 3}], "pids": [3]},
            {"namespace": "b", "pod": "s0", "devices": [{"gpu": 3}], "pids": [4]},
            {"namespace": "b", "pod": "s1", "devices": [{"gpu": 3}]},
        ],
        "phases": [
            {
                "name": "run",
                "duration_seconds": 60,
                "pods": {"a/train": {"utilization": 0.9, "memory_gib": 40}, "b/s1": "absent"},
                "pod_defaults": {"utilization": 0.3, "memory_gib": 2},
                "faults": [{"gpu": 0, "at_seconds": 10, "xid": 79}],
            }
        ],
    }


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def assert_error(tmp_path: Path, data: dict, *fragments: str) -> str:
    """Loading `data` from a file fails naming the file, the entry and the fix."""
    path = write(tmp_path, data)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------- valid scenarios


@pytest.mark.parametrize("name", ["default", "mig-large", "timesliced-large"])
def test_builtin_scenarios_load(name: str) -> None:
    assert name in builtin_scenarios()
    scenario = load_scenario(name)
    assert scenario.name == name
    assert len(scenario.gpus) == 8
    assert scenario.phases and all(p.duration_seconds > 0 for p in scenario.phases)


def test_default_scenario_has_the_sharing_shapes_it_promises() -> None:
    s = load_scenario("default")
    assert [g.mig_mode for g in s.gpus] == [False] * 6 + [True, False]
    assert [g.replicas for g in s.gpus] == [1, 1, 1, 1, 1, 4, 1, 1]
    assert [m.profile.name for m in s.gpus[6].mig] == ["1g.10gb"] * 7
    held = {d.gpu for p in s.pods for d in p.devices}
    assert 7 not in held  # the free GPU
    assert {p.namespace for p in s.pods if p.devices[0].gpu < 4} == {"team-nlp", "team-vision"}
    kinds = {f.kind for p in s.phases for f in p.faults}
    assert {"xid", "thermal_throttle", "lost"} <= kinds
    assert any(f.kind == "xid" and f.value == 79 for p in s.phases for f in p.faults)


def test_large_scenarios_have_their_pod_counts() -> None:
    mig = load_scenario("mig-large")
    assert len(mig.pods) == 56
    assert all(len(g.mig) == 7 for g in mig.gpus)
    assert {p.resource for p in mig.pods} == {"nvidia.com/mig-1g.10gb"}
    sliced = load_scenario("timesliced-large")
    assert len(sliced.pods) == 32
    assert {p.resource for p in sliced.pods} == {"nvidia.com/gpu.shared"}


def test_file_path_loads_and_defaults_apply(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, base()))
    assert s.at_end == "loop" and s.noise == 0.02 and s.node == "n1"
    assert [g.index for g in s.gpus] == [0, 1, 2, 3]
    assert s.gpus[0].memory_bytes == int(GPU_MODELS[H100].memory_mib / 1024 * GIB)
    assert s.gpus[0].power_limit_watts == 700
    train, mig, s0, s1 = s.pods
    assert train.resource == "nvidia.com/gpu"
    assert mig.resource == "nvidia.com/mig-1g.10gb"
    assert s0.resource == "nvidia.com/gpu.shared"
    assert train.container == "main" and len(train.uid) == 36
    assert train.devices == (DeviceRef(0), DeviceRef(1))
    assert train.pids_on(0) == (1,) and train.pids_on(1) == (2,)
    phase = s.phases[0]
    # Listed pods keep their load; "absent" removes one; pod_defaults fills the rest.
    assert phase.pods["a/train"].utilization == 0.9
    assert phase.pods["a/train"].memory_bytes == 40 * GIB
    assert "b/s1" not in phase.pods
    assert phase.pods["a/mig"].utilization == 0.3


def test_pods_not_listed_without_defaults_are_absent(tmp_path: Path) -> None:
    data = base()
    del data["phases"][0]["pod_defaults"]
    s = load_scenario(write(tmp_path, data))
    assert set(s.phases[0].pods) == {"a/train"}


def test_mixed_mig_layout_is_valid_with_its_fractions() -> None:
    data = base()
    data["gpus"][1]["mig"] = [{"profile": "2g.20gb", "count": 3}, "1g.10gb"]
    data["pods"][1]["devices"] = [{"gpu": 2, "mig": 3}]
    s = parse_scenario(data)
    instances = s.gpus[2].mig
    assert [m.profile.name for m in instances] == ["2g.20gb"] * 3 + ["1g.10gb"]
    assert [m.compute_fraction for m in instances] == [2 / 7] * 3 + [1 / 7]
    eighth = s.gpus[2].memory_bytes // 8
    assert [m.memory_bytes for m in instances] == [2 * eighth] * 3 + [eighth]


@pytest.mark.parametrize(
    ("model", "profile"),
    [
        ("NVIDIA A100-SXM4-80GB", "1g.10gb"),
        ("NVIDIA A100-SXM4-40GB", "1g.5gb"),
        ("NVIDIA A100-SXM4-40GB", "3g.20gb"),
        ("NVIDIA H200", "1g.18gb"),
        ("NVIDIA H200", "7g.141gb"),
        ("NVIDIA H100 NVL", "3g.47gb"),
    ],
)
def test_mig_profiles_of_each_model(model: str, profile: str) -> None:
    data = {
        "gpus": [{"model": model, "mig": [profile]}],
        "phases": [{"name": "p", "duration_seconds": 1}],
    }
    assert parse_scenario(data).gpus[0].mig[0].profile.name == profile


def test_unknown_model_with_memory_and_power_is_accepted() -> None:
    data = {
        "gpus": [{"model": "NVIDIA Future GPU", "memory_gib": 192, "power_limit_watts": 1000}],
        "phases": [{"name": "p", "duration_seconds": 1}],
    }
    gpu = parse_scenario(data).gpus[0]
    assert gpu.model.name == "NVIDIA Future GPU"
    assert gpu.memory_bytes == 192 * GIB and gpu.power_limit_watts == 1000


# ---------------------------------------------------------------- malformed scenarios


def test_unknown_top_level_key(tmp_path: Path) -> None:
    data = base()
    data["phase"] = []
    assert_error(tmp_path, data, "top level", "unknown key 'phase'", "did you mean 'phases'")


def test_unknown_key_in_a_pod(tmp_path: Path) -> None:
    data = base()
    data["pods"][0]["namesapce"] = "x"
    assert_error(tmp_path, data, "pods[0]", "unknown key 'namesapce'", "did you mean 'namespace'")


def test_unknown_key_in_a_phase_load(tmp_path: Path) -> None:
    data = base()
    data["phases"][0]["pods"]["a/train"]["util"] = 0.5
    assert_error(tmp_path, data, "phases[0] (run).pods[a/train]", "unknown key 'util'")


def test_pod_on_a_missing_gpu(tmp_path: Path) -> None:
    data = base()
    data["pods"][0]["devices"] = [{"gpu": 9}]
    assert_error(tmp_path, data, "pods[0] (a/train).devices[0]", "gpu 9 does not exist", "0 to 3")


def test_pod_on_a_missing_mig_instance(tmp_path: Path) -> None:
    data = base()
    data["pods"][1]["devices"] = [{"gpu": 2, "mig": 7}]
    assert_error(tmp_path, data, "pods[1] (a/mig)", "MIG instances 0 to 6, not 7")


def test_pod_on_a_mig_gpu_without_an_instance(tmp_path: Path) -> None:
    data = base()
    data["pods"][1]["devices"] = [{"gpu": 2}]
    assert_error(tmp_path, data, "pods[1] (a/mig)", "GPU 2 is in MIG mode", "mig: 0 to 6")


def test_invalid_mig_profile(tmp_path: Path) -> None:
    data = base()
    data["gpus"][1]["mig"] = [{"profile": "1g.5gb", "count": 7}]
    assert_error(
        tmp_path, data, "gpus[1].mig[0]", "'1g.5gb' is not a MIG profile of NVIDIA H100", "1g.10gb"
    )


def test_too_many_instances_of_one_profile(tmp_path: Path) -> None:
    data = base()
    data["gpus"][1]["mig"] = [{"profile": "3g.40gb", "count": 3}]
    data["pods"][1]["devices"] = [{"gpu": 2, "mig": 0}]
    assert_error(tmp_path, data, "gpus[1].mig", "3 instances of 3g.40gb", "at most 2")


def test_too_many_mig_slices(tmp_path: Path) -> None:
    data = base()
    data["gpus"][1]["mig"] = ["4g.40gb", {"profile": "2g.20gb", "count": 2}]
    data["pods"][1]["devices"] = [{"gpu": 2, "mig": 0}]
    assert_error(
        tmp_path, data, "gpus[1].mig", "8 compute slices", "a GPU has 7 and 8", "remove or shrink"
    )


def test_mig_on_a_model_without_mig(tmp_path: Path) -> None:
    data = base()
    data["gpus"][1]["model"] = "NVIDIA L40S"
    assert_error(tmp_path, data, "gpus[1].mig", "has no MIG in the simulator", H100)


def test_unknown_model_needs_its_memory(tmp_path: Path) -> None:
    data = base()
    data["gpus"][0] = {"model": "NVIDIA Mystery", "power_limit_watts": 300}
    assert_error(tmp_path, data, "gpus[0]", "'NVIDIA Mystery' is not one", "give memory_gib")


@pytest.mark.parametrize("duration", [-5, 0])
def test_non_positive_duration(tmp_path: Path, duration: int) -> None:
    data = base()
    data["phases"][0]["duration_seconds"] = duration
    assert_error(
        tmp_path, data, "phases[0] (run).duration_seconds", f"is {duration}", "greater than 0"
    )


@pytest.mark.parametrize("utilization", [1.5, -0.1])
def test_utilization_outside_zero_to_one(tmp_path: Path, utilization: float) -> None:
    data = base()
    data["phases"][0]["pods"]["a/train"]["utilization"] = utilization
    bound = "at most 1" if utilization > 1 else "at least 0"
    assert_error(tmp_path, data, "phases[0] (run).pods[a/train].utilization", bound)


def test_utilization_must_be_a_number(tmp_path: Path) -> None:
    data = base()
    data["phases"][0]["pods"]["a/train"]["utilization"] = "high"
    assert_error(tmp_path, data, "utilization", "must be a number, got 'high'")


def test_time_sliced_gpu_cannot_be_more_than_fully_busy(tmp_path: Path) -> None:
    data = base()
    data["phases"][0]["pods"]["b/s0"] = {"utilization": 0.7}
    data["phases"][0]["pods"]["b/s1"] = {"utilization": 0.6}
    assert_error(tmp_path, data, "phases[0] (run)", "GPU 3 would be 1.30 busy", "at most 1")


def test_memory_beyond_the_mig_instance(tmp_path: Path) -> None:
    data = base()
    data["phases"][0]["pods"]["a/mig"] = {"utilization": 0.5, "memory_gib": 12}
    assert_error(tmp_path, data, "pods[a/mig]", "uses 12.0 GiB", "1g.10gb instance has 10.0 GiB")


def test_two_pods_on_an_unshared_gpu(tmp_path: Path) -> None:
    data = base()
    data["pods"][2]["devices"] = [{"gpu": 0}]
    assert_error(tmp_path, data, "pods:", "GPU 0 is held by a/train, b/s0", "time_slicing")


def test_more_pods_than_time_slicing_replicas(tmp_path: Path) -> None:
    data = base()
    data["pods"].append({"namespace": "b", "pod": "s2", "devices": [{"gpu": 3}]})
    assert_error(tmp_path, data, "GPU 3 is held by b/s0, b/s1, b/s2", "2 replicas")


def test_phase_names_an_unknown_pod(tmp_path: Path) -> None:
    data = base()
    data["phases"][0]["pods"]["a/trian"] = {"utilization": 0.1}
    assert_error(tmp_path, data, "'a/trian' is not a pod", "did you mean 'a/train'")


def test_pid_owned_by_two_pods(tmp_path: Path) -> None:
    data = base()
    data["pods"][2]["pids"] = [1]
    assert_error(tmp_path, data, "pods[2] (b/s0).pids", "pid 1 is already a process of a/train")


def test_fault_after_the_phase_ends(tmp_path: Path) -> None:
    data = base()
    data["phases"][0]["faults"][0]["at_seconds"] = 60
    assert_error(tmp_path, data, "faults[0].at_seconds", "past the phase's 60.0 seconds")


def test_fault_with_two_kinds(tmp_path: Path) -> None:
    data = base()
    data["phases"][0]["faults"][0]["lost"] = True
    assert_error(tmp_path, data, "faults[0]", "exactly one fault kind", "['xid', 'lost']")


def test_mig_resource_that_does_not_match_the_instance(tmp_path: Path) -> None:
    data = base()
    data["pods"][1]["resource"] = "nvidia.com/mig-2g.20gb"
    assert_error(tmp_path, data, "pods[1] (a/mig).resource", "use nvidia.com/mig-1g.10gb")


def test_bad_at_end(tmp_path: Path) -> None:
    data = base()
    data["at_end"] = "repeat"
    assert_error(tmp_path, data, "at_end", "use loop or hold")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("gpus:\n  - model: [unclosed\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: line \d+: not valid YAML"):
        load_scenario(path)


def test_missing_file_and_unknown_builtin(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read the scenario file"):
        load_scenario(tmp_path / "absent.yaml")
    with pytest.raises(ScenarioError, match="no built-in scenario of that name.*default"):
        load_scenario("no-such-scenario")
