"""gpuledger.logs: JSON lines on whatever stderr is at the time of the record."""

import io
import json
import logging
import sys

from gpuledger import logs


def test_records_follow_stderr_after_it_is_swapped_and_the_old_one_closed(monkeypatch):
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        logs.configure("info")
        logging.getLogger("gpuledger.test").info("one", extra={"pod": "a"})
        first.close()  # as pytest closes a test's capture; a thread may still log later
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("gpuledger.test").warning("two")
    finally:
        logging.getLogger().handlers[:], level = saved
        logging.getLogger().setLevel(level)
    record = json.loads(second.getvalue())
    assert record["msg"] == "two" and record["level"] == "warning"
    assert record["logger"] == "gpuledger.test"


def test_plain_text_for_people(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    saved = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        logs.configure("warning", json_lines=False)
        logging.getLogger("gpuledger.test").info("hidden")
        logging.getLogger("gpuledger.test").error("shown")
    finally:
        logging.getLogger().handlers[:], level = saved
        logging.getLogger().setLevel(level)
    assert "shown" in out.getvalue() and "hidden" not in out.getvalue()
    assert not out.getvalue().lstrip().startswith("{")
