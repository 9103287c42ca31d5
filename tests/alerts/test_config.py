"""The rules configuration: defaults are valid, overrides apply, bad input says what to fix."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from alerts import config as cfg


def test_defaults_are_valid_and_documented() -> None:
    config = cfg.RulesConfig()
    assert config.idle_busy_ratio == 0.05
    assert {g.name for g in config.xid_groups} >= {"UncorrectableMemory", "Nvlink", "FellOffBus"}
    # Every XID the issue names has a group, and no code is in two groups.
    codes = [code for g in config.xid_groups for code in g.codes]
    assert sorted(codes) == sorted(set(codes))
    assert {48, 63, 64, 74, 79, 92, 94, 95} <= set(codes)


def test_every_default_has_a_comment_saying_why() -> None:
    source = Path(cfg.__file__).read_text().splitlines()
    start = next(i for i, line in enumerate(source) if line.startswith("class RulesConfig"))
    end = next(i for i, line in enumerate(source) if "def __post_init__" in line)
    checked = 0
    for i, line in enumerate(source[start:end], start):
        match = re.match(r"    (\w+): [^=]+ = ", line)
        if not match:
            continue
        above = source[i - 1].strip()
        # A comment right above, or the setting shares the comment of the line above.
        assert above.startswith("#") or re.match(r"\w+: [^=]+ = ", above), (
            f"{match.group(1)} has no comment justifying its default"
        )
        checked += 1
    assert checked == len(dataclasses.fields(cfg.RulesConfig))


def test_overrides_apply() -> None:
    config = cfg.from_mapping(
        {
            "idle_busy_ratio": 0.1,
            "idle_for": "1h",
            "straggler_min_ranks": 4,
            "thermal_reasons": ["x"],
        }
    )
    assert config.idle_busy_ratio == 0.1
    assert config.idle_for == "1h"
    assert config.straggler_min_ranks == 4
    assert config.thermal_reasons == ("x",)


def test_an_integer_is_accepted_for_a_float_setting() -> None:
    assert cfg.from_mapping({"collection_stale_seconds": 90}).collection_stale_seconds == 90.0


def test_xid_groups_override() -> None:
    config = cfg.from_mapping(
        {
            "xid_groups": [
                {
                    "name": "Gsp",
                    "codes": [119, 120],
                    "severity": "critical",
                    "meaning": "m",
                    "action": "a",
                }
            ]
        }
    )
    assert config.xid_groups == (cfg.XidGroup("Gsp", (119, 120), "critical", "m", "a"),)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"idle_ratio": 0.1}, "unknown setting(s) idle_ratio"),
        ({"idle_for": "30 minutes"}, "idle_for: '30 minutes' is not a Prometheus duration"),
        ({"idle_busy_ratio": 1.5}, "idle_busy_ratio: 1.5 must be a ratio between 0 and 1"),
        ({"idle_busy_ratio": "low"}, "idle_busy_ratio: expected a float"),
        ({"straggler_min_ranks": 2}, "straggler_min_ranks: 2 is too small"),
        ({"straggler_min_ranks": 3.5}, "straggler_min_ranks: expected a int"),
        ({"thermal_reasons": "hw_thermal_slowdown"}, "thermal_reasons: expected a list of strings"),
        ({"workload_pod_suffix_regex": "(unclosed"}, "workload_pod_suffix_regex: not a regular"),
        ({"cluster_label": "my-cluster"}, "cluster_label: 'my-cluster' is not a Prometheus label"),
        ({"collection_stale_seconds": 0}, "collection_stale_seconds must be positive"),
        ({"xid_groups": {"name": "X"}}, "xid_groups: expected a list"),
        ({"xid_groups": [{"name": "X", "codes": [1]}]}, "xid_groups: each entry needs name"),
        (
            {
                "xid_groups": [
                    {"name": "x", "codes": [1], "severity": "warning", "meaning": "", "action": ""}
                ]
            },
            "xid_groups: name 'x' must be CamelCase",
        ),
        (
            {
                "xid_groups": [
                    {"name": "X", "codes": [1], "severity": "page", "meaning": "", "action": ""}
                ]
            },
            "severity 'page' is not one of",
        ),
        (
            {
                "xid_groups": [
                    {"name": "X", "codes": [], "severity": "warning", "meaning": "", "action": ""}
                ]
            },
            "xid_groups: X has no XID codes",
        ),
    ],
)
def test_bad_overrides_say_what_is_wrong(overrides: dict, message: str) -> None:
    with pytest.raises(cfg.ConfigError) as error:
        cfg.from_mapping(overrides)
    assert message in str(error.value)


def test_duplicate_xid_group_names_are_refused() -> None:
    group = {"name": "X", "codes": [1], "severity": "warning", "meaning": "", "action": ""}
    with pytest.raises(cfg.ConfigError, match="group names must be unique"):
        cfg.from_mapping({"xid_groups": [group, group]})


def test_load_reads_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("idle_for: 2h\nmemory_full_ratio: 0.99\n")
    config = cfg.load(path)
    assert (config.idle_for, config.memory_full_ratio) == ("2h", 0.99)
    assert cfg.load(None) == cfg.RulesConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- idle_for: 2h\n", "expected a mapping of setting: value"),
        ("idle_for: [unclosed\n", "is not valid YAML"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.load(path)


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(cfg.ConfigError, match="cannot read rules config .*missing.yaml"):
        cfg.load(tmp_path / "missing.yaml")
