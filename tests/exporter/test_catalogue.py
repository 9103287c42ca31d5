"""The metric catalogue follows Prometheus conventions, and its reference is current."""

import re
from pathlib import Path

import pytest

from exporter import catalogue as cat
from exporter.reference import render

ROOT = Path(__file__).resolve().parents[2]
# Scaled or non-base units that Prometheus conventions rule out.
NOT_BASE_UNITS = re.compile(
    r"(milli|micro|kilo|mega|giga|^k|^m[bs]$|mib|gib|percent|kwh|mhz|mw$|minutes|hours)"
)


@pytest.mark.parametrize("spec", list(cat.CATALOGUE.values()), ids=lambda s: s.name)
def test_names_units_and_labels_follow_conventions(spec):
    assert re.fullmatch(r"gpuledger_[a-z0-9_]+", spec.name)
    assert (
        spec.help
        and (spec.help[0].isupper() or spec.help[0].isdigit())
        and spec.help.endswith((".", ")"))
    )
    assert len(set(spec.labels)) == len(spec.labels)
    if spec.type is cat.MetricType.COUNTER:
        assert spec.name.endswith("_total")
    else:
        assert not spec.name.endswith("_total")
    for unit, suffix in (
        ("bytes", "_bytes"),
        ("seconds", "_seconds"),
        ("joules", "_joules"),
        ("ratio", "_ratio"),
    ):
        if spec.unit == unit and spec.type is not cat.MetricType.HISTOGRAM:
            assert spec.name.removesuffix("_total").endswith(suffix), (
                f"{spec.name} should end in {suffix}"
            )
    assert not NOT_BASE_UNITS.search(spec.unit), (
        f"{spec.name}: unit {spec.unit!r} is not a base unit"
    )


def test_duplicate_definition_is_refused():
    with pytest.raises(ValueError, match="defined twice"):
        cat._define("gpu_up", cat.MetricType.GAUGE, "", "Again.", ("node",))


def test_counter_without_total_is_refused():
    with pytest.raises(ValueError, match="must end in _total"):
        cat._define("gpu_new_counter", cat.MetricType.COUNTER, "", "New.", ("node",))


def test_lookup_by_short_or_full_name_and_a_clear_miss():
    assert cat.spec("gpu_up") is cat.GPU_UP is cat.spec("gpuledger_gpu_up")
    with pytest.raises(KeyError, match="not in the metric catalogue"):
        cat.spec("gpu_uptime")


def test_metric_reference_is_current():
    committed = (ROOT / "docs" / "metrics.md").read_text()
    assert committed == render(), (
        "docs/metrics.md is stale: run `python -m exporter.reference > docs/metrics.md`"
    )
