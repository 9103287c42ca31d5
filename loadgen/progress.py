"""What people see: a live line on a terminal, plain log lines otherwise, and a
summary table at the end, one row per phase, in the manner of nccl-tests."""

from __future__ import annotations

import logging
import statistics
import sys
import time
from typing import Any

log = logging.getLogger("gpuledger.loadgen")


class Progress:
    """Progress of rank 0. mode: auto (rich on a terminal, else plain), rich, plain, off."""

    def __init__(self, mode: str, *, planned_s: float, profile: str, log_every_s: float = 10.0):
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode, self.planned_s, self.profile = mode, planned_s, profile
        self.log_every_s = log_every_s
        self._live: Any = None
        self._phase = ""
        self._phase_label = ""
        self._last_shown = 0.0
        self._run_start = time.monotonic()
        if mode == "rich":
            from rich.live import Live

            self._live = Live("", refresh_per_second=4, transient=True)
            self._live.start()

    def phase_start(self, index: int, count: int, name: str, kind: str, planned_s: float | None):
        self._phase = name
        self._phase_label = f"phase {index + 1}/{count} {name} ({kind})"
        if self.mode == "plain":
            length = f" for {planned_s:.0f} s" if planned_s else ""
            log.info(f"{self.profile}: {self._phase_label} starts{length}")
        self._show(f"{self._phase_label}: starting")

    def step(self, record: dict[str, Any]) -> None:
        now = time.monotonic()
        interval = 0.25 if self.mode == "rich" else self.log_every_s
        if now - self._last_shown < interval:
            return
        self._last_shown = now
        parts = [f"step {record['step']}", f"{record['step_s'] * 1000:.0f} ms"]
        if record["tokens"]:
            parts.append(f"{record['tokens_per_s']:,.0f} tok/s")
        if record["mfu"] is not None and record["tokens"]:
            parts.append(f"MFU {record['mfu'] * 100:.1f}%")
        if record["loss"] is not None:
            parts.append(f"loss {record['loss']:.3f}")
        if record["busbw_bytes_per_s"]:
            parts.append(f"busbw {record['busbw_bytes_per_s'] / 1e9:.2f} GB/s")
        line = f"{self._phase_label}: " + ", ".join(parts)
        if self.mode == "plain":
            log.info(line)
        self._show(line)

    def _show(self, line: str) -> None:
        if self._live is None:
            return
        elapsed = time.monotonic() - self._run_start
        of = f"/{self.planned_s:.0f}" if self.planned_s else ""
        self._live.update(f"[bold]{self.profile}[/] {elapsed:.0f}{of} s  {line}")

    def phase_end(self, summary: dict[str, Any]) -> None:
        if self.mode == "plain":
            log.info(
                f"{self.profile}: phase {summary['phase']} ended after "
                f"{summary['duration_s']:.1f} s, {summary['steps']} steps"
            )

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


COLUMNS = (
    ("phase", "<"),
    ("kind", "<"),
    ("time s", ">"),
    ("steps", ">"),
    ("step ms", ">"),
    ("tokens/s", ">"),
    ("TFLOP/s", ">"),
    ("MFU %", ">"),
    ("busy %", ">"),
    ("busbw GB/s", ">"),
    ("slowest", ">"),
)


def summary_rows(per_rank: list[list[dict[str, Any]]]) -> list[list[str]]:
    """One row per phase from every rank's phase_end records (rank-major lists).

    tokens/s and TFLOP/s add up over ranks; step time, MFU, busy and bus bandwidth
    are means over ranks; `slowest` is the rank with the most compute + injected time.
    """
    rows = []
    for phase_records in zip(*per_rank, strict=False):
        first = phase_records[0]

        def mean(key: str, records: tuple = phase_records) -> float | None:
            values = [r[key] for r in records if r.get(key) is not None]
            return statistics.fmean(values) if values else None

        mfu, busbw, busy, step = (
            mean("mfu"),
            mean("busbw_bytes_per_s"),
            mean("busy_ratio"),
            mean("step_s_median"),
        )
        slowest = max(phase_records, key=lambda r: r.get("work_s", 0.0))
        rows.append(
            [
                first["phase"],
                first["kind"],
                f"{first['duration_s']:.1f}",
                str(first["steps"]),
                f"{step * 1000:.1f}" if step else "-",
                f"{sum(r['tokens_per_s'] for r in phase_records):,.0f}",
                f"{sum(r['flops_per_s'] for r in phase_records) / 1e12:.3f}",
                f"{mfu * 100:.1f}" if mfu is not None and first["tokens"] else "-",
                f"{busy * 100:.0f}" if busy is not None else "-",
                f"{busbw / 1e9:.3f}" if busbw else "-",
                str(slowest["rank"]) if len(phase_records) > 1 and slowest.get("work_s") else "-",
            ]
        )
    return rows


def format_table(rows: list[list[str]]) -> str:
    """A plain-text table with aligned columns."""
    header = [name for name, _ in COLUMNS]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = []
    for row in [header, *rows]:
        cells = [f"{c:{align}{w}}" for c, (_, align), w in zip(row, COLUMNS, widths, strict=False)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_summary(rows: list[list[str]], *, rich_output: bool, title: str) -> None:
    if rich_output:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for name, align in COLUMNS:
            table.add_column(name, justify="left" if align == "<" else "right")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        print(title)
        print(format_table(rows), flush=True)
