"""Small PromQL helpers: build label selectors, and list the metric names an expression reads.

The name lister is not a PromQL parser; it is enough for the expressions this project
writes (rules and dashboard panels), so tests can check every name against the metric
catalogue and the recording rules.
"""

from __future__ import annotations

import re

# Words that look like identifiers in PromQL but are not metric names.
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_IDENT = re.compile(r"(?<![\w:$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?")


def selector(*matchers: str) -> str:
    """`{a, b}` from label matchers, skipping empty ones; "" when none is left."""
    kept = [m.strip() for m in matchers if m and m.strip()]
    return "{" + ", ".join(kept) + "}" if kept else ""


def metric_names(expr: str) -> set[str]:
    """Metric names (including recording-rule names) that a PromQL expression reads."""
    text = _STRING.sub('""', expr)
    # Grafana's ${var} and $var are not names; drop them before braces are matched.
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)
    previous = None
    while previous != text:  # nested braces: strip innermost first
        previous = text
        text = _BRACES.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names
