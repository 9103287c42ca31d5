"""`gpuledger alerts`: generate the rule files, or check them (current, valid, tested)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from alerts import config as rules_config
from alerts import rules

PACKAGE_DIR = Path(__file__).parent
TESTS_DIR = PACKAGE_DIR / "tests"
ALERTMANAGER_EXAMPLE = PACKAGE_DIR / "alertmanager" / "alertmanager.yaml"


def register(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="alerts_action", metavar="ACTION", required=True)

    generate = actions.add_parser("generate", help="write the recording and alerting rule files")
    generate.add_argument(
        "--config",
        type=Path,
        help="YAML file of settings overriding alerts/config.py's defaults",
    )
    generate.add_argument(
        "--out", type=Path, default=rules.RULES_DIR, help="directory to write the rule files to"
    )
    generate.set_defaults(func=run_generate)

    check = actions.add_parser(
        "check",
        help="fail if the committed rule files are out of date, invalid (promtool check "
        "rules), fail their unit tests (promtool test rules), or the Alertmanager example "
        "is invalid (amtool check-config)",
    )
    check.add_argument("--dir", type=Path, default=rules.RULES_DIR, help="rule files to check")
    check.set_defaults(func=run_check)


def run_generate(args: argparse.Namespace) -> int:
    try:
        config = rules_config.load(args.config)
    except rules_config.ConfigError as error:
        print(f"gpuledger alerts generate: {error}", file=sys.stderr)
        return 2
    for path in rules.write(args.out, config):
        print(path)
    return 0


def _tool(name: str) -> str | None:
    path = shutil.which(name)
    if path is None:
        print(
            f"{name} is not installed (Debian: apt-get install "
            f"{'prometheus' if name == 'promtool' else 'prometheus-alertmanager'})",
            file=sys.stderr,
        )
    return path


def _run(argv: list[str]) -> bool:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}", file=sys.stderr)
    return result.returncode == 0


def run_check(args: argparse.Namespace) -> int:
    ok = True
    stale = rules.stale_files(args.dir)
    if stale:
        ok = False
        print(f"out of date: {', '.join(stale)}; run `gpuledger alerts generate`", file=sys.stderr)
    promtool, amtool = _tool("promtool"), _tool("amtool")
    if promtool is None or amtool is None:
        return 1
    rule_files = [str(args.dir / rules.RECORDING_FILE), str(args.dir / rules.ALERTS_FILE)]
    ok &= _run([promtool, "check", "rules", *rule_files])
    # The unit tests name their rule files relative to themselves (../rules/...).
    if args.dir.resolve() == rules.RULES_DIR.resolve():
        ok &= _run([promtool, "test", "rules", *map(str, sorted(TESTS_DIR.glob("*.yaml")))])
    ok &= _run([amtool, "check-config", str(ALERTMANAGER_EXAMPLE)])
    print("alerts: ok" if ok else "alerts: FAILED", file=sys.stderr if not ok else sys.stdout)
    return 0 if ok else 1
