"""`gpuledger dashboards`: generate the dashboards' JSON and ConfigMaps, or push them to Grafana."""

from __future__ import annotations

import argparse
import os
import sys

from dashboards import generate


def register(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dashboards_action", metavar="ACTION", required=True)

    gen = actions.add_parser(
        "generate", help="write dashboards/json/*.json and the ConfigMaps in deploy/dashboards/"
    )
    gen.add_argument(
        "--check",
        action="store_true",
        help="write nothing; fail if the committed files differ from what the code builds",
    )
    gen.set_defaults(func=run_generate)

    push = actions.add_parser("push", help="upload the dashboards to Grafana (grafana-client)")
    push.add_argument(
        "--url", required=True, help="Grafana's base URL, e.g. https://grafana.example"
    )
    push.add_argument(
        "--token",
        default=os.environ.get("GRAFANA_TOKEN"),
        help="a service account token (default: $GRAFANA_TOKEN)",
    )
    push.add_argument("--folder", default="gpuledger", help="folder uid and title to put them in")
    push.add_argument(
        "--dashboard",
        action="append",
        choices=sorted(generate.BUILDERS),
        help="push only this dashboard (repeatable; default: all)",
    )
    push.set_defaults(func=run_push)


def run_generate(args: argparse.Namespace) -> int:
    if args.check:
        stale = generate.stale_files()
        if stale:
            print(
                f"out of date: {', '.join(stale)}; run `gpuledger dashboards generate`",
                file=sys.stderr,
            )
            return 1
        print("dashboards: up to date")
        return 0
    for path in generate.write():
        print(path)
    return 0


def run_push(args: argparse.Namespace) -> int:
    from dashboards.push import PushError, push

    if not args.token:
        print(
            "gpuledger dashboards push: no token; pass --token or set GRAFANA_TOKEN to a "
            "Grafana service account token",
            file=sys.stderr,
        )
        return 2
    models = generate.build_all()
    if args.dashboard:
        models = {uid: models[uid] for uid in args.dashboard}
    try:
        for url in push(
            args.url, args.token, models, folder_uid=args.folder, folder_title=args.folder
        ):
            print(url)
    except PushError as error:
        print(f"gpuledger dashboards push: {error}", file=sys.stderr)
        return 1
    return 0
