"""The price book: what a GPU-hour of each model costs (docs/cost-model.md, section 2).

A YAML file with a currency, optional provider name and price per kWh, and per GPU
model a price per GPU-hour with optional node overhead and price per kWh. Prices are
kept as `Decimal` so that money is never a binary float.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PRICE_BOOK = Path(__file__).parent / "pricebooks" / "default.yaml"

_TOP_KEYS = {"currency", "provider", "price_per_kwh", "node_overhead_per_hour", "gpu_models"}
_MODEL_KEYS = {"price_per_gpu_hour", "node_overhead_per_hour", "price_per_kwh"}


class PriceBookError(ValueError):
    """The price book file is missing, malformed or lacks a price."""


class UnknownGpuModel(PriceBookError):
    """A GPU model was seen that the price book does not list."""

    def __init__(self, model: str, path: str, where: str = "") -> None:
        self.model, self.path = model, path
        seen = f" (seen on {where})" if where else ""
        super().__init__(
            f"GPU model {model!r}{seen} is not in the price book {path}: add it under "
            f"gpu_models with a price_per_gpu_hour, e.g.\n  gpu_models:\n    {model}:\n"
            "      price_per_gpu_hour: 2.00"
        )


@dataclass(frozen=True)
class ModelPrice:
    price_per_gpu_hour: Decimal
    node_overhead_per_hour: Decimal = Decimal(0)
    price_per_kwh: Decimal = Decimal(0)

    def rate(self, gpus_on_node: int) -> Decimal:
        """Cost of one GPU-hour on a node with this many GPUs (the overhead is spread)."""
        if self.node_overhead_per_hour and gpus_on_node > 0:
            return self.price_per_gpu_hour + self.node_overhead_per_hour / gpus_on_node
        return self.price_per_gpu_hour


@dataclass(frozen=True)
class PriceBook:
    models: Mapping[str, ModelPrice]
    currency: str = "USD"
    provider: str = "gpuledger"
    path: str = "<in memory>"

    def price(self, model: str, where: str = "") -> ModelPrice:
        """The price of a model; raises UnknownGpuModel naming the model and this file."""
        found = self.models.get(model)
        if found is None:
            found = self._normalised().get(_normalise(model))
        if found is None:
            raise UnknownGpuModel(model, self.path, where)
        return found

    def check(self, seen: Iterable[tuple[str, str]]) -> None:
        """Raise for the first (model, where) pair the price book has no price for."""
        for model, where in seen:
            self.price(model, where)

    def _normalised(self) -> dict[str, ModelPrice]:
        return {_normalise(name): price for name, price in self.models.items()}


def _normalise(model: str) -> str:
    return re.sub(r"\s+", " ", model).strip().casefold()


def _money(value: Any, what: str, path: str) -> Decimal:
    if isinstance(value, bool) or value is None:
        raise PriceBookError(f"{path}: {what} must be a number, got {value!r}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PriceBookError(f"{path}: {what} must be a number, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise PriceBookError(f"{path}: {what} must be a number >= 0, got {value!r}")
    return amount


def parse_price_book(data: Any, path: str = "<in memory>") -> PriceBook:
    """Build a PriceBook from the parsed YAML; every mistake names what to fix."""
    if not isinstance(data, Mapping):
        raise PriceBookError(
            f"{path}: expected a mapping with gpu_models, got {type(data).__name__}"
        )
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise PriceBookError(
            f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
        )
    currency = str(data.get("currency", "USD"))
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise PriceBookError(
            f"{path}: currency must be an ISO 4217 code like USD, got {currency!r}"
        )
    default_kwh = _money(data.get("price_per_kwh", 0), "price_per_kwh", path)
    default_overhead = _money(data.get("node_overhead_per_hour", 0), "node_overhead_per_hour", path)
    models = data.get("gpu_models")
    if not isinstance(models, Mapping) or not models:
        raise PriceBookError(f"{path}: gpu_models must map each GPU model to its prices")
    parsed: dict[str, ModelPrice] = {}
    for name, entry in models.items():
        where = f"gpu_models[{name!r}]"
        if not isinstance(entry, Mapping):
            raise PriceBookError(f"{path}: {where} must be a mapping with price_per_gpu_hour")
        unknown = set(entry) - _MODEL_KEYS
        if unknown:
            raise PriceBookError(
                f"{path}: {where} has unknown keys {sorted(unknown)}; allowed: "
                f"{sorted(_MODEL_KEYS)}"
            )
        if "price_per_gpu_hour" not in entry:
            raise PriceBookError(f"{path}: {where} needs price_per_gpu_hour")
        parsed[str(name)] = ModelPrice(
            price_per_gpu_hour=_money(
                entry["price_per_gpu_hour"], f"{where}.price_per_gpu_hour", path
            ),
            node_overhead_per_hour=_money(
                entry.get("node_overhead_per_hour", default_overhead),
                f"{where}.node_overhead_per_hour",
                path,
            ),
            price_per_kwh=_money(
                entry.get("price_per_kwh", default_kwh), f"{where}.price_per_kwh", path
            ),
        )
    return PriceBook(
        models=parsed,
        currency=currency,
        provider=str(data.get("provider", "gpuledger")),
        path=path,
    )


def load_price_book(path: str | Path | None = None) -> PriceBook:
    """Read a price book file (the example default when path is None)."""
    path = Path(path) if path else DEFAULT_PRICE_BOOK
    try:
        text = path.read_text()
    except OSError as error:
        raise PriceBookError(f"cannot read the price book {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PriceBookError(f"{path} is not valid YAML: {error}") from None
    return parse_price_book(data, str(path))
