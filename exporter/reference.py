"""Write the metric reference (docs/metrics.md) from the catalogue.

    python -m exporter.reference > docs/metrics.md

A test checks that the committed file is current, so the reference cannot drift.
"""

from __future__ import annotations

from exporter.catalogue import CATALOGUE


def render() -> str:
    lines = [
        "# Metric reference",
        "",
        "Generated from `exporter/catalogue.py` by `python -m exporter.reference`; do not edit.",
        "",
        "| name | type | unit | labels | help |",
        "| --- | --- | --- | --- | --- |",
    ]
    for spec in CATALOGUE.values():
        labels = ", ".join(f"`{label}`" for label in spec.labels)
        lines.append(
            f"| `{spec.name}` | {spec.type.value} | {spec.unit or '—'} | {labels} | "
            f"{spec.help.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
