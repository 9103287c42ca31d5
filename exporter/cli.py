"""`gpuledger exporter`: the node agent's command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading

from exporter.app import Exporter
from exporter.server import parse_listen

log = logging.getLogger(__name__)

DEFAULT_KUBELET_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
DEFAULT_PROBE_SOCKET = "/var/run/gpuledger/probe.sock"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="0.0.0.0:9400", help="HOST:PORT to serve /metrics on")
    parser.add_argument(
        "--device",
        choices=["auto", "nvml", "simulated"],
        default="auto",
        help="where GPU readings come from; auto: NVML when a GPU driver answers, else fail "
        "(pass --simulated to run without a GPU)",
    )
    parser.add_argument(
        "--simulated",
        nargs="?",
        const="default",
        metavar="SCENARIO",
        help="use simulated GPUs following SCENARIO (a built-in name or a YAML file; "
        "default: 'default'). Every series is labelled source=\"simulated\".",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated fleet")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between collections")
    parser.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME") or None,
        help="this node's name (default: $NODE_NAME, else the scenario's, else the hostname)",
    )
    parser.add_argument(
        "--dcgm-compat",
        action="store_true",
        help="also emit dcgm-exporter's default metric names and labels",
    )
    parser.add_argument(
        "--max-pod-series",
        type=int,
        default=10_000,
        help="cap on pod-on-device series, departed pods' frozen counters included; "
        "live pods come first, the rest are dropped and counted",
    )
    parser.add_argument(
        "--departed-grace",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="keep a departed pod's counters (frozen) this long, so that Prometheus scrapes "
        "their last value; longer than the scrape interval (default 300)",
    )
    kube = parser.add_argument_group("attribution (real GPUs)")
    kube.add_argument(
        "--kubelet-socket", default=DEFAULT_KUBELET_SOCKET, help="the kubelet's PodResources socket"
    )
    kube.add_argument(
        "--resource-name",
        action="append",
        default=[],
        help="extra device resource name to attribute (repeatable)",
    )
    kube.add_argument(
        "--no-kubelet", action="store_true", help="do not ask the kubelet (no pod series)"
    )
    kube.add_argument("--proc-root", default="/proc", help="host /proc, for process -> pod")
    kube.add_argument(
        "--no-pod-watch",
        action="store_true",
        help="do not watch this node's pods (no names for shared-GPU splits)",
    )
    kube.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster config)"
    )
    collective = parser.add_argument_group("collectives and links")
    collective.add_argument(
        "--probe-socket",
        default=None,
        help=f"listen for the in-job probe on this unix socket (e.g. {DEFAULT_PROBE_SOCKET})",
    )
    collective.add_argument(
        "--inspector-dir",
        default=None,
        help="directory of NCCL Inspector Prometheus dumps to re-label",
    )
    collective.add_argument(
        "--sys-root", default="/sys", help="host /sys, for InfiniBand port counters"
    )
    parser.set_defaults(func=run)


def build_exporter(args: argparse.Namespace) -> Exporter:
    """An Exporter from command-line options; raises SystemExit with advice on bad input."""
    from exporter import wiring

    if args.simulated is not None or args.device == "simulated":
        return wiring.simulated_exporter(
            scenario=args.simulated or "default",
            seed=args.seed,
            node=args.node_name,
            interval_s=args.interval,
            dcgm_compat=args.dcgm_compat,
            max_pod_series=args.max_pod_series,
            probe_socket=args.probe_socket,
            departed_grace_s=args.departed_grace,
        )
    return wiring.nvml_exporter(
        node=args.node_name or socket.gethostname(),
        interval_s=args.interval,
        dcgm_compat=args.dcgm_compat,
        max_pod_series=args.max_pod_series,
        departed_grace_s=args.departed_grace,
        kubelet_socket=None if args.no_kubelet else args.kubelet_socket,
        extra_resource_names=args.resource_name,
        proc_root=args.proc_root,
        pod_watch=not args.no_pod_watch,
        kubeconfig=args.kubeconfig,
        probe_socket=args.probe_socket,
        inspector_dir=args.inspector_dir,
        sys_root=args.sys_root,
    )


def run(args: argparse.Namespace) -> int:
    from exporter.sources.nvml import NvmlUnavailable
    from exporter.sources.scenario import ScenarioError

    try:
        host, port = parse_listen(args.listen)
        exporter = build_exporter(args)
    except (ValueError, OSError, NvmlUnavailable, ScenarioError) as error:
        log.error(str(error))
        print(f"gpuledger exporter: {error}")
        return 2
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        exporter.serve(host, port)
    except OSError as error:
        exporter.stop()
        print(f"gpuledger exporter: cannot listen on {args.listen}: {error}")
        return 2
    print(
        f"gpuledger exporter: serving {exporter.url}/metrics (source: {exporter.source.name})",
        flush=True,
    )
    stop.wait()
    log.info("stopping")
    exporter.stop()
    return 0
