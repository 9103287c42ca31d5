from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import catalogue as cat
from loadgen.metrics import LoadgenMetrics

LOADGEN_SPECS = [s for n, s in cat.CATALOGUE.items() if n.startswith(cat.PREFIX + "loadgen_")]


def step(phase: str, **fields) -> dict:
    record = {
        "phase": phase,
        "step_s": 0.5,
        "compute_s": 0.3,
        "stall_s": 0.1,
        "straggle_s": 0.0,
        "busy_ratio": 0.6,
        "memory_bytes": 1000,
        "tokens": 512,
        "flops_per_s": 2e9,
        "mfu": 0.2,
        "loss": 3.5,
        "collective_bytes": 4096,
        "collective_s": 0.1,
        "busbw_bytes_per_s": 40960.0,
    }
    return {**record, **fields}


def samples(metrics: LoadgenMetrics) -> dict[tuple[str, tuple], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_every_loadgen_metric_of_the_catalogue_is_exported_with_its_labels() -> None:
    m = LoadgenMetrics("job-a", 1)
    m.set_peak(1e12)
    m.phase("warm", "steady", True)
    m.step(step("warm"))
    got = samples(m)
    names = {name for name, _ in got}
    assert names == {n for s in LOADGEN_SPECS for n in s.exposed_names}
    for spec in LOADGEN_SPECS:
        labels = next(dict(lbl) for name, lbl in got if name == spec.name)
        assert tuple(sorted(labels)) == tuple(sorted(spec.labels))


def test_step_figures() -> None:
    m = LoadgenMetrics("j", 0)
    m.step(step("warm"))
    m.step(step("warm", stall_s=0.0))
    got = samples(m)
    key = (("job", "j"), ("phase", "warm"), ("rank", "0"))
    assert got[(cat.LOADGEN_STEPS.name, key)] == 2
    assert got[(cat.LOADGEN_TOKENS.name, key)] == 1024
    assert got[(cat.LOADGEN_BUSY_SECONDS.name, key)] == 0.6
    assert got[(cat.LOADGEN_STALL_SECONDS.name, key)] == 0.1
    assert got[(cat.LOADGEN_COLLECTIVE_BYTES.name, key)] == 8192
    assert got[(cat.LOADGEN_STEP_WORK_SECONDS.name, key)] == 0.3  # compute, no stall
    assert got[(cat.LOADGEN_MFU.name, key)] == 0.2


def test_a_finished_phase_keeps_its_counters_and_drops_its_present() -> None:
    m = LoadgenMetrics("j", 0)
    m.phase("warm", "steady", True)
    m.step(step("warm"))
    m.phase("warm", "steady", False)
    m.phase("rest", "idle", True)
    m.idle("rest")
    got = samples(m)
    warm = (("job", "j"), ("phase", "warm"), ("rank", "0"))
    rest = (("job", "j"), ("phase", "rest"), ("rank", "0"))
    assert got[(cat.LOADGEN_STEPS.name, warm)] == 1
    assert (cat.LOADGEN_STEP_SECONDS.name, warm) not in got
    assert (cat.LOADGEN_BUSY.name, warm) not in got
    assert got[(cat.LOADGEN_BUSY.name, rest)] == 0
    assert (
        got[
            (
                cat.LOADGEN_PHASE.name,
                (("job", "j"), ("kind", "steady"), ("phase", "warm"), ("rank", "0")),
            )
        ]
        == 0
    )
    assert (
        got[
            (
                cat.LOADGEN_PHASE.name,
                (("job", "j"), ("kind", "idle"), ("phase", "rest"), ("rank", "0")),
            )
        ]
        == 1
    )
