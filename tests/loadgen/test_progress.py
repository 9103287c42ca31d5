from loadgen.progress import format_table, summary_rows


def end(rank: int, **fields) -> dict:
    record = {
        "rank": rank,
        "phase": "slow",
        "kind": "straggler",
        "duration_s": 10.0,
        "steps": 20,
        "tokens": 10240,
        "tokens_per_s": 1024.0,
        "flops_per_s": 2e12,
        "mfu": 0.4,
        "busy_ratio": 0.5,
        "step_s_median": 0.5,
        "busbw_bytes_per_s": 2e9,
        "work_s": 3.0,
    }
    return {**record, **fields}


def test_summary_adds_throughput_and_averages_ratios_over_ranks() -> None:
    rows = summary_rows([[end(0)], [end(1, work_s=9.0, mfu=0.2, busbw_bytes_per_s=4e9)]])
    assert rows == [
        ["slow", "straggler", "10.0", "20", "500.0", "2,048", "4.000", "30.0", "50", "3.000", "1"]
    ]


def test_idle_phase_row_has_no_rates() -> None:
    idle = end(0, kind="idle", steps=0, tokens=0, tokens_per_s=0.0, flops_per_s=0.0, mfu=None)
    idle.update(step_s_median=None, busbw_bytes_per_s=None, busy_ratio=0.0, work_s=0.0)
    (row,) = summary_rows([[idle]])
    assert row[4] == "-" and row[7] == "-" and row[9] == "-" and row[10] == "-"


def test_table_aligns_columns_under_a_rule() -> None:
    text = format_table(summary_rows([[end(0)]]))
    header, rule, row = text.splitlines()
    assert header.split()[:2] == ["phase", "kind"] and set(rule) <= {"-", " "}
    assert row.split()[0] == "slow" and len(rule) >= len(row)
