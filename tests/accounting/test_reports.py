"""Report files: the CSV writer writes what pandas's to_csv writes, byte for byte."""

from __future__ import annotations

import math
from decimal import Decimal

import hypothesis.strategies as st
import pandas as pd
from hypothesis import given, settings

from accounting.reports import write_csv

# Text a CSV must quote or escape, and text it must not touch.
texts = st.text(alphabet=st.sampled_from(list('ab ,"\n\r\t;é#0')), max_size=6)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1.5e-7, 123456789.123456789, 2.5e-6, 0.0000005]
)
decimals = st.decimals(allow_nan=False, allow_infinity=False, places=4) | st.sampled_from(
    [Decimal("12.30"), Decimal("-0.00"), Decimal("1E+3")]
)


@st.composite
def frames(draw) -> pd.DataFrame:
    rows = draw(st.integers(0, 6))
    kinds = draw(
        st.lists(
            st.sampled_from(["float", "object", "str", "money", "bool", "int"]),
            min_size=1,
            max_size=6,
        )
    )
    columns = {}
    for i, kind in enumerate(kinds):
        name = draw(texts) + str(i)
        if kind == "float":
            values = pd.Series(draw(st.lists(floats, min_size=rows, max_size=rows)), dtype=float)
        elif kind == "object":
            values = pd.Series(
                draw(st.lists(texts | st.none(), min_size=rows, max_size=rows)), dtype=object
            )
        elif kind == "str":
            values = pd.Series(draw(st.lists(texts | st.none(), min_size=rows, max_size=rows)))
        elif kind == "money":
            values = pd.Series(
                draw(st.lists(decimals | st.none(), min_size=rows, max_size=rows)), dtype=object
            )
        elif kind == "bool":
            values = pd.Series(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)))
        else:
            values = pd.Series(draw(st.lists(st.integers(), min_size=rows, max_size=rows)))
        columns[name] = values.astype(values.dtype)  # empty lists keep the kind's dtype
    return pd.DataFrame(columns)


@settings(max_examples=300, deadline=None)
@given(frame=frames())
def test_csv_is_byte_for_byte_what_pandas_writes(frame, tmp_path_factory):
    folder = tmp_path_factory.mktemp("csv")
    write_csv(frame, folder / "fast.csv")
    frame.to_csv(folder / "pandas.csv", index=False, float_format="%.6f")
    assert (folder / "fast.csv").read_bytes() == (folder / "pandas.csv").read_bytes()


def test_a_single_empty_field_is_quoted_as_the_csv_module_does(tmp_path):
    frame = pd.DataFrame({"": ["", "a", None], "x": [math.nan, 1.0, 2.0]})[[""]]
    write_csv(frame, tmp_path / "fast.csv")
    frame.to_csv(tmp_path / "pandas.csv", index=False, float_format="%.6f")
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()


def test_a_long_file_written_in_parts_is_one_file(tmp_path):
    rows = 45_000  # more than one part of 20,000 rows
    frame = pd.DataFrame(
        {
            "team": [f"team,{i % 7}" for i in range(rows)],
            "cost": [Decimal(i).scaleb(-2) for i in range(rows)],
            "hours": [i / 3 for i in range(rows)],
        }
    )
    write_csv(frame, tmp_path / "fast.csv")
    frame.to_csv(tmp_path / "pandas.csv", index=False, float_format="%.6f")
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
