"""`gdn-operator` / `python -m gdn_operator`: run the Qwen35Deployment operator."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry

from gdn_operator.control.controller import ControllerOptions
from gdn_operator.control.endpoints import OperatorHTTPServer
from gdn_operator.control.leader import LeaseConfig
from gdn_operator.control.metrics import OperatorMetrics
from gdn_operator.control.runner import Operator, OperatorConfig
from gdn_operator.kube.api import KubeApi
from gdn_operator.kube.client import load_configuration, new_api_client
from gdn_operator.plan.manifest import RAY_VERSION, ManifestOptions

SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _default_namespace() -> str:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    return SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.exists() else "default"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gdn-operator", description=__doc__)
    p.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)"
    )
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument(
        "--namespace",
        default=os.environ.get("WATCH_NAMESPACE", ""),
        help="watch only this namespace (default: all; env WATCH_NAMESPACE)",
    )
    p.add_argument("--workers", type=int, default=4, help="concurrent reconciles")
    p.add_argument(
        "--serving-image",
        default=os.environ.get("GDN_SERVING_IMAGE"),
        help="image for Ray Pods when a deployment sets none (env GDN_SERVING_IMAGE)",
    )
    p.add_argument(
        "--serving-cpu-image",
        default=os.environ.get("GDN_SERVING_CPU_IMAGE"),
        help="image for the Ray Pods of a deployment that lists arch cpu and sets no image"
        " (env GDN_SERVING_CPU_IMAGE)",
    )
    p.add_argument("--ray-version", default=RAY_VERSION)
    p.add_argument("--resync", type=float, default=600.0, help="seconds between full resyncs")
    p.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address of /healthz, /readyz, /metrics (default loopback; the chart passes the"
        " Pod IP so that the kubelet's probes and Prometheus reach it)",
    )
    p.add_argument("--http-port", type=int, default=8080, help="/healthz, /readyz, /metrics")
    p.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--lease-name", default="gdn-operator")
    p.add_argument(
        "--lease-namespace",
        default=None,
        help="namespace of the Lease (default: the operator's own)",
    )
    p.add_argument("--lease-duration", type=float, default=15.0)
    p.add_argument("--renew-deadline", type=float, default=10.0)
    p.add_argument("--retry-period", type=float, default=2.0)
    p.add_argument(
        "--identity",
        default=os.environ.get("POD_NAME"),
        help="leader election identity (default: env POD_NAME, else host + random)",
    )
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> OperatorConfig:
    identity = args.identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    lease = None
    if args.leader_elect:
        lease = LeaseConfig(
            name=args.lease_name,
            namespace=args.lease_namespace or _default_namespace(),
            identity=identity,
            lease_duration_s=args.lease_duration,
            renew_deadline_s=args.renew_deadline,
            retry_period_s=args.retry_period,
        )
    controller = ControllerOptions(
        namespace=args.namespace or None,
        workers=args.workers,
        resync_s=args.resync,
        manifest=ManifestOptions(
            default_image=args.serving_image,
            ray_version=args.ray_version,
            default_cpu_image=args.serving_cpu_image,
        ),
    )
    return OperatorConfig(identity=identity, controller=controller, lease=lease)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = build_config(args)
    configuration = load_configuration(args.kubeconfig, args.context)
    api = KubeApi(new_api_client(configuration))
    # Lease calls must fail fast: a leader stuck on a slow request could outlive its lease. Its
    # own client, without urllib3 connect retries; each call is further bounded by what is left
    # of the renew deadline (LeaderElector).
    lease_api = KubeApi(
        new_api_client(configuration, connect_retries=0),
        timeout_s=(2.0, max(1.0, args.renew_deadline / 2)),
    )
    registry = CollectorRegistry()
    operator = Operator(api, config, OperatorMetrics(registry), lease_api)
    server = OperatorHTTPServer(
        args.http_host, args.http_port, registry, operator.healthy, operator.ready
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    logging.getLogger(__name__).info(
        "gdn-operator %s starting (namespace: %s)", config.identity, args.namespace or "all"
    )
    try:
        clean = operator.run(stop)
    finally:
        server.stop()
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
