"""`gpuledger alerts generate` and `gpuledger alerts check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts import rules
from gpuledger.cli import main


def test_generate_writes_both_files_with_the_overrides(tmp_path: Path) -> None:
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("idle_busy_ratio: 0.1\nexporter_selector: 'job=\"gpu\"'\n")
    assert main(["alerts", "generate", "--config", str(overrides), "--out", str(tmp_path)]) == 0
    alerts_text = (tmp_path / rules.ALERTS_FILE).read_text()
    assert "ratio_rate5m < 0.1" in alerts_text
    assert 'up{job="gpu"} == 0' in alerts_text
    assert (tmp_path / rules.RECORDING_FILE).exists()


def test_generate_with_a_bad_config_says_what_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text("idle_for: soon\n")
    assert main(["alerts", "generate", "--config", str(overrides), "--out", str(tmp_path)]) == 2
    assert "idle_for: 'soon' is not a Prometheus duration" in capsys.readouterr().err
    assert not (tmp_path / rules.ALERTS_FILE).exists()


def test_check_passes_on_the_committed_files(capsys: pytest.CaptureFixture) -> None:
    assert main(["alerts", "check"]) == 0
    assert "alerts: ok" in capsys.readouterr().out


def test_check_fails_on_stale_or_invalid_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rules.write(tmp_path)
    alerts_file = tmp_path / rules.ALERTS_FILE
    alerts_file.write_text(alerts_file.read_text().replace("expr: up{", "expr: up{{"))
    assert main(["alerts", "check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "promtool check rules" in err
