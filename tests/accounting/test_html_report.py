"""The HTML report: its content, and what headless Chromium actually draws of it."""

from __future__ import annotations

import re
import struct
import subprocess
import zlib
from decimal import Decimal
from pathlib import Path

import pytest

from accounting import html_report
from accounting.costmodel import IDLE, UNATTRIBUTED, WORKLOAD
from accounting.html_report import render_html, write_html_report
from accounting.reports import build_report
from tests.accounting.sample_ledger import PRICE_BOOK, build_ledger
from tests.realservices import require_binary

MONTH = "2026-11"
DAYS = 12
WIDTH, HEIGHT = 1400, 1000


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    ledger = build_ledger(tmp_path_factory.mktemp("ledger") / "ledger.sqlite", MONTH, DAYS)
    try:
        yield build_report(ledger, MONTH, price_book=PRICE_BOOK)
    finally:
        ledger.dispose()


def test_page_has_four_charts_tables_and_totals(report):
    page = render_html(report)
    for chart in ("cost-by-team", "efficiency-by-team", "daily-trend", "top-waste"):
        assert f'id="chart-{chart}"' in page
    for table in ("team", "jobs", "daily", "model"):
        assert f'id="table-{table}"' in page
    # Every team of the chargeback is in the team table, and the total is the month's.
    team_table = page[page.index('id="table-team"') :].split("</table>")[0]
    for name in report.frames["team"]["team"]:
        assert f"<td>{name}</td>" in team_table
    assert f"${report.total_cost:,.2f}" in team_table.split("<tfoot>")[1]
    # Self-contained: nothing to run and nothing to fetch when the page opens.
    assert "<script" not in page
    assert not re.search(r"\b(src|href)\s*=|url\(|@import", page)


def test_simulated_banner_only_for_simulated_data(report):
    plain = render_html(report)
    simulated = render_html(report, simulated=True)
    assert "simulated-banner" not in plain
    assert 'id="simulated-banner"' in simulated
    assert "<title>SIMULATED DATA" in simulated


def test_report_attribute_sets_the_banner(report, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "simulated", True, raising=False)
    path = write_html_report(report, tmp_path)
    assert path == tmp_path / f"gpuledger-{MONTH}-report.html"
    assert 'id="simulated-banner"' in path.read_text()
    # An explicit flag wins over the attribute.
    assert (
        "simulated-banner" not in write_html_report(report, tmp_path, simulated=False).read_text()
    )


def test_partial_month_says_how_many_hours_are_missing(report):
    page = render_html(report)
    missing = (30 - DAYS) * 24
    assert 'id="coverage-warning"' in page
    assert f"{report.hours_ingested} of 720 hours" in page
    assert f"{missing} hours are missing (the first at 2026-11-{DAYS + 1:02d} 00:00)" in page


def test_waste_chart_and_table_rank_jobs_by_waste(report):
    jobs = report.frames["job"]
    workloads = jobs[jobs["category"] == WORKLOAD]
    worst = workloads.loc[
        workloads["idle_cost_in_allocation"].map(float).sort_values(ascending=False).index
    ].head(3)
    page = render_html(report, top_jobs=3)
    table = page[page.index('id="table-jobs"') :].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td>", table)
    assert rows == list(zip(worst["job"], worst["namespace"], strict=True))
    with pytest.raises(ValueError, match="top_jobs must be at least 1"):
        render_html(report, top_jobs=0)


def test_many_teams_are_capped_with_an_other_bar(report):
    team = report.frames["team"]
    workloads = team[team["category"] == WORKLOAD]
    rows = [workloads.iloc[0].to_dict() | {"team": f"team-{i:02d}"} for i in range(20)]
    import pandas as pd

    many = pd.concat([pd.DataFrame(rows), team[team["category"] != WORKLOAD]], ignore_index=True)
    capped = html_report._capped_team_rows(many)
    names = [r["team"] for r in capped]
    assert len(names) == html_report.MAX_TEAM_BARS + 2  # 13 teams, "others", unattributed, idle
    assert names[html_report.MAX_TEAM_BARS - 1] == "7 other teams"
    assert names[-2:] == [UNATTRIBUTED, IDLE]
    other = capped[html_report.MAX_TEAM_BARS - 1]["cost_allocation"]
    assert other == sum((Decimal(r["cost_allocation"]) for r in rows[13:]), Decimal(0))


# ---------------------------------------------------------------- in a real browser
def decode_png(data: bytes) -> tuple[int, int, int, bytearray]:
    """(width, height, bytes per pixel, pixels) of an 8-bit RGB(A) PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and interlace == 0 and colour_type in (2, 6), header
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    pixels = bytearray(height * stride)
    previous = bytearray(stride)
    offset = 0
    for y in range(height):
        kind, line = raw[offset], bytearray(raw[offset + 1 : offset + 1 + stride])
        offset += 1 + stride
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, previous, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = previous[i], previous[i - bpp] if i >= bpp else 0
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels[y * stride : (y + 1) * stride] = line
        previous = line
    return width, height, bpp, pixels


class Screenshot:
    def __init__(self, path: Path) -> None:
        self.width, self.height, self.bpp, pixels = decode_png(path.read_bytes())
        self.pixels = bytes(pixels)

    def row_runs(self, y: int, colours: set[str], x0: int, x1: int) -> int:
        """How many pixels of row y between x0 and x1 have one of the colours."""
        wanted = {bytes.fromhex(c[1:]) for c in colours}
        start = y * self.width * self.bpp
        return sum(
            self.pixels[start + x * self.bpp : start + x * self.bpp + 3] in wanted
            for x in range(x0, x1)
        )

    def where(self, colour: str, x0: int = 0, x1: int | None = None) -> list[tuple[int, int]]:
        """(x, y) of every pixel of this exact colour with x0 <= x < x1."""
        target = bytes.fromhex(colour[1:])
        x1 = self.width if x1 is None else x1
        found, at = [], self.pixels.find(target)
        while at >= 0:
            if at % self.bpp == 0:  # a pixel's start, not bytes across two pixels
                y, x = divmod(at // self.bpp, self.width)
                if x0 <= x < x1:
                    found.append((x, y))
            at = self.pixels.find(target, at + 1)
        return found


def bands(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Contiguous runs of rows that have any of the points: one per horizontal bar."""
    rows = sorted({y for _, y in points})
    runs: list[list[int]] = []
    for y in rows:
        if runs and y == runs[-1][1] + 1:
            runs[-1][1] = y
        else:
            runs.append([y, y])
    return [(a, b) for a, b in runs]


@pytest.fixture(scope="module")
def screenshot(report, tmp_path_factory) -> Screenshot:
    chromium = require_binary("chromium")
    out = tmp_path_factory.mktemp("html")
    page = write_html_report(report, out, simulated=True)
    png = out / "screenshot.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--force-device-scale-factor=1",
            "--hide-scrollbars",
            f"--user-data-dir={out / 'profile'}",
            f"--screenshot={png}",
            f"--window-size={WIDTH},{HEIGHT}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    return Screenshot(png)


def test_browser_draws_cost_bars_in_proportion(report, screenshot):
    team = report.frames["team"]
    workloads = team[team["category"] == WORKLOAD]
    colours = {html_report.USED_COLOUR, html_report.WASTE_COLOUR}
    # The cost chart is the left column: bars of the "busy" colour, one band per team.
    used = screenshot.where(html_report.USED_COLOUR, 0, WIDTH // 2)
    team_bands = [b for b in bands(used) if b[1] - b[0] >= 14]  # bars, not the legend swatch
    assert len(team_bands) == len(workloads)
    lengths = [screenshot.row_runs((a + b) // 2, colours, 0, WIDTH // 2) for a, b in team_bands]
    costs = [float(c) for c in workloads["cost_allocation"]]
    for length, cost in zip(lengths, costs, strict=True):
        assert length == pytest.approx(lengths[0] * cost / costs[0], abs=2.5)
    # The idle row is drawn below the teams, in its own colour.
    idle = [p for p in screenshot.where(html_report.IDLE_COLOUR, 0, WIDTH // 2) if p[1] < 700]
    assert idle and min(y for _, y in idle) > team_bands[-1][1]


def test_browser_draws_efficiency_and_waste_charts(report, screenshot):
    team = report.frames["team"]
    workloads = team[team["category"] == WORKLOAD]
    green = screenshot.where(html_report.EFFICIENCY_COLOUR)
    assert green and min(x for x, _ in green) > WIDTH // 2  # right column
    eff_bands = bands(green)
    assert len(eff_bands) == len(workloads)
    plot_width = 640 - 170 - 90  # horizontal_bars' defaults: the axis runs 0..100%
    for (a, b), efficiency in zip(eff_bands, workloads["efficiency"], strict=True):
        drawn = screenshot.row_runs((a + b) // 2, {html_report.EFFICIENCY_COLOUR}, 0, WIDTH)
        # The average's dashed line may cross a bar: allow its width.
        assert drawn == pytest.approx(plot_width * efficiency, abs=3)
    orange = screenshot.where(html_report.JOB_WASTE_COLOUR)
    waste_bands = bands(orange)
    assert len(waste_bands) == 10
    assert min(y for _, y in orange) > max(y for _, y in green)  # below the efficiency chart
    first, last = (
        screenshot.row_runs((a + b) // 2, {html_report.JOB_WASTE_COLOUR}, 0, WIDTH)
        for a, b in (waste_bands[0], waste_bands[-1])
    )
    assert first > last > 0


def test_browser_draws_daily_columns_and_banner(report, screenshot):
    daily = report.frames["daily"]
    top_team = report.frames["team"].iloc[0]["team"]
    colour = html_report.TEAM_PALETTE[0]
    points = screenshot.where(colour, 0, WIDTH // 2)
    assert points, f"no column of {top_team} drawn"
    cost_chart_bottom = max(y for _, y in screenshot.where(html_report.USED_COLOUR, 0, WIDTH // 2))
    assert min(y for _, y in points) > cost_chart_bottom  # below the cost chart
    # One column per day: count runs of the top team's colour along the row just above
    # the axis, where it is the bottom of every column (the legend has one swatch).
    rows = [y for _, y in points]
    row = max(set(rows), key=rows.count)
    xs = sorted(x for x, y in points if y == row)
    columns = 1 + sum(1 for a, b in zip(xs, xs[1:], strict=False) if b > a + 1)
    assert columns == daily["day"].nunique() == DAYS
    banner = screenshot.where("#fef3c7", 0, WIDTH)
    assert banner and max(y for _, y in banner) < 120  # the simulated banner is on top


def test_a_month_without_pods_renders(tmp_path):
    from accounting.ledger import Ledger
    from tests.accounting.sample_ledger import H100, month_start

    ledger = Ledger(str(tmp_path / "idle.sqlite")).create()
    capacity = [
        {"node": "h1", "model": H100, "gpus": 8, "capacity_ms": 8 * 3_600_000, "busy_ms": 0}
        | {"energy_mj": 0}
    ]
    for hour in range(3):
        ledger.write_hour(month_start(MONTH) + hour * 3600, [], capacity, "test")
    page = render_html(build_report(ledger, MONTH, price_book=PRICE_BOOK))
    ledger.dispose()
    # Only idle capacity: 24 GPU-hours at $2.50; the job table says there is nothing.
    assert "<td>__idle__</td>" in page and "$60.00" in page
    assert "nothing in this period" in page.split('id="table-jobs"')[1].split("</table>")[0]
