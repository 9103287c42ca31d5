"""docs/cost-model.md's worked numbers, checked against the code."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from accounting.chargeback import chargeback
from accounting.ledger import HOUR, Ledger
from tests.accounting import worked_example

END = worked_example.START + 10 * HOUR


def doc_table(marker: str) -> tuple[list[str], list[list[str]]]:
    """The markdown table that follows `<!-- worked-example: marker -->`."""
    text = worked_example.DOC.read_text()
    at = text.index(f"<!-- worked-example: {marker} -->")
    lines = []
    for line in text[at:].splitlines()[1:]:
        if not line.startswith("|"):
            break
        lines.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, rows = lines[0], [r for r in lines[2:]]
    return header, rows


def clean(cell: str) -> str:
    return cell.replace("\\_", "_").replace("**", "")


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(str(tmp_path / "ledger.sqlite")).create()
    worked_example.build(ledger)
    return ledger


FORMATS = {"efficiency": "{:.4f}"}
# doc column -> chargeback column
COLUMNS = {
    "held GPU-h": "gpu_hours_held",
    "busy GPU-h": "gpu_hours_busy",
    "efficiency": "efficiency",
    "energy kWh": "energy_kwh",
}


def check_table(frame, marker: str) -> None:
    header, rows = doc_table(marker)
    by_team = {row.team: row for row in frame.itertuples(index=False)}
    body = [r for r in rows if clean(r[0]) != "total"]
    assert sorted(clean(r[0]) for r in body) == sorted(by_team), marker
    for row in body:
        got = by_team[clean(row[0])]
        for name, cell in zip(header[1:], row[1:], strict=True):
            column = COLUMNS.get(name, name)
            value = getattr(got, column)
            if isinstance(value, Decimal):
                assert str(value) == clean(cell), (marker, row[0], name)
            else:
                assert FORMATS.get(column, "{:.2f}").format(value) == clean(cell), (
                    marker,
                    row[0],
                    name,
                )
    total = next(r for r in rows if clean(r[0]) == "total")
    for name, cell in zip(header[1:], total[1:], strict=True):
        if not cell:
            continue
        column = COLUMNS.get(name, name)
        summed = sum(getattr(r, column) for r in frame.itertuples(index=False))
        if isinstance(summed, Decimal):
            assert str(summed) == clean(cell), (marker, "total", name)
        else:
            assert f"{summed:.2f}" == clean(cell), (marker, "total", name)


def test_team_report_with_idle_as_a_row_matches_the_document(ledger):
    frame = chargeback(
        ledger, worked_example.START, END, price_book=worked_example.doc_price_book()
    )
    check_table(frame, "team row")
    assert frame.attrs["total_cost"] == Decimal("245.00")
    assert frame.attrs["missing_hours"] == []


def test_team_report_with_idle_shared_matches_the_document(ledger):
    frame = chargeback(
        ledger,
        worked_example.START,
        END,
        price_book=worked_example.doc_price_book(),
        idle="share",
    )
    check_table(frame, "team share")


def test_the_pool_costs_in_the_document_follow_from_its_price_book():
    prices = worked_example.doc_price_book()
    h100 = prices.price(worked_example.H100)
    assert h100.rate(8) == Decimal("2.50")
    assert 80 * h100.rate(8) + 40 * h100.price_per_kwh == Decimal("204.00")
    a100 = prices.price(worked_example.A100)
    assert 40 * a100.rate(4) + 10 * a100.price_per_kwh == Decimal("41.00")
    text = worked_example.DOC.read_text()
    assert re.search(r"cluster's cost is \*\*245\.00\*\*", text)
