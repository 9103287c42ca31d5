"""The `gpuledger` command: one entry point, one subcommand per part.

Each part registers its own arguments through `register(subparsers)` in its `cli`
module. The modules are imported only when their subcommand is asked for, so that
the exporter's image does not need torch, pandas or the accounting stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gpuledger import __version__, logs

# subcommand -> (module that implements it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "exporter": ("exporter.cli", "run the node exporter (NVML or simulated GPUs)"),
    "loadgen": ("loadgen.cli", "run real training steps with a known timeline"),
    "calibrate": ("gpuledger.calibrate", "run a profile end to end and compare with ground truth"),
    "accounting": ("accounting.cli", "ingest usage into the ledger and write chargeback reports"),
    "dashboards": ("dashboards.cli", "generate or push the Grafana dashboards"),
    "alerts": ("alerts.cli", "generate the Prometheus rules and their tests"),
    "demo": ("gpuledger.demo", "run the whole stack on this machine"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuledger", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"gpuledger {__version__}")
    parser.add_argument("--log-level", default="info", help="debug, info, warning or error")
    parser.add_argument(
        "--log-format", choices=["json", "text"], default="json", help="log line format"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if only is not None and name != only:
            subparsers.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        module.register(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the module of the subcommand asked for (help lists them all).
    only = next((a for a in argv if a in SUBCOMMANDS), None)
    parser = build_parser(only=only or "__none__")
    args = parser.parse_args(argv)
    if not getattr(args, "command", None) or not hasattr(args, "func"):
        parser.print_help()
        return 2
    logs.configure(args.log_level, json_lines=args.log_format == "json")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
