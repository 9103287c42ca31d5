"""The price book: parsing, lookups and the errors that name what to fix."""

from __future__ import annotations

from decimal import Decimal

import pytest

from accounting.pricebook import (
    ModelPrice,
    PriceBookError,
    UnknownGpuModel,
    load_price_book,
    parse_price_book,
)
from exporter.sources.scenario import GPU_MODELS


def test_the_default_price_book_prices_every_model_the_simulated_exporter_has():
    book = load_price_book()
    for model in GPU_MODELS:
        assert book.price(model).price_per_gpu_hour > 0, model
    assert book.currency == "USD"


def test_prices_are_exact_decimals_and_overhead_is_spread_over_the_node():
    book = parse_price_book(
        {
            "price_per_kwh": 0.1,
            "node_overhead_per_hour": 3,
            "gpu_models": {
                "NVIDIA H100 80GB HBM3": {"price_per_gpu_hour": 2.1},
                "NVIDIA L4": {"price_per_gpu_hour": 0.4, "node_overhead_per_hour": 0},
            },
        }
    )
    h100 = book.price("NVIDIA H100 80GB HBM3")
    assert h100 == ModelPrice(Decimal("2.1"), Decimal("3"), Decimal("0.1"))
    assert h100.rate(8) == Decimal("2.475") and h100.rate(0) == Decimal("2.1")
    assert book.price("nvidia  l4").rate(1) == Decimal("0.4")  # spacing and case differ


def test_an_unknown_model_names_itself_where_it_was_seen_and_the_file():
    book = parse_price_book({"gpu_models": {"NVIDIA L4": {"price_per_gpu_hour": 1}}}, "p.yaml")
    with pytest.raises(UnknownGpuModel) as error:
        book.check([("NVIDIA L4", "node a"), ("NVIDIA B300", "node gpu-7 at 2024-05-01T00:00Z")])
    message = str(error.value)
    assert "'NVIDIA B300' (seen on node gpu-7 at 2024-05-01T00:00Z)" in message
    assert "p.yaml" in message and "price_per_gpu_hour" in message


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(PriceBookError, match="cannot read the price book .*nope.yaml"):
        load_price_book(tmp_path / "nope.yaml")
    with pytest.raises(PriceBookError, match="needs price_per_gpu_hour"):
        parse_price_book({"gpu_models": {"X": {"price_per_kwh": 1}}})
