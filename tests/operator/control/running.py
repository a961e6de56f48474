"""The running operator against the FAKE API server (fake_kube_apiserver.py): start and stop
it, seed a cluster, read what it wrote. Shared by the tests in this folder."""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from gdn_operator.control.controller import ControllerOptions
from gdn_operator.control.leader import LeaseConfig
from gdn_operator.control.metrics import OperatorMetrics
from gdn_operator.control.runner import Operator, OperatorConfig
from gdn_operator.kube.api import KubeApi
from gdn_operator.kube.resources import DEPLOYMENTS, EVENTS, NODES, RAYSERVICES
from gdn_operator.plan.manifest import ManifestOptions
from tests.operator.fake_kube_apiserver import FakeApiServer
from tests.operator.k8s_binaries import ROOT
from tests.operator.operator_testlib import H100, RTX4090, gpu_node

MIXED_SAMPLE = yaml.safe_load((ROOT / "charts/qwen35-stack/examples/mixed.yaml").read_text())
CPU_SAMPLE = yaml.safe_load((ROOT / "charts/qwen35-stack/examples/tiny-cpu.yaml").read_text())
CPU_IMAGE = "gdn-serve-cpu:test"
NS = "llm"


@dataclass
class Running:
    operator: Operator
    registry: CollectorRegistry
    stop: threading.Event
    thread: threading.Thread
    returned: list[bool]  # what Operator.run returned, once it did

    def count(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def reconciles(self) -> float:
        return sum(
            self.count("gdn_operator_reconcile_duration_seconds_count", result=r)
            for r in ("ok", "requeue", "error")
        )


def start(
    kube: KubeApi,
    lease: LeaseConfig | None = None,
    namespace: str | None = None,
    identity: str = "op-0",
) -> Running:
    registry = CollectorRegistry()
    options = ControllerOptions(
        namespace=namespace,
        workers=2,
        watch_timeout_s=5,
        sync_timeout_s=5,
        manifest=ManifestOptions(default_image="gdn-serve:test", default_cpu_image=CPU_IMAGE),
    )
    operator = Operator(kube, OperatorConfig(identity, options, lease), OperatorMetrics(registry))
    stop = threading.Event()
    returned: list[bool] = []
    thread = threading.Thread(target=lambda: returned.append(operator.run(stop)), daemon=True)
    thread.start()
    return Running(operator, registry, stop, thread, returned)


def halt(running: Running) -> None:
    running.stop.set()
    running.thread.join(10)


def cluster(fake: FakeApiServer) -> None:
    for node in (
        gpu_node("rtx-0", RTX4090),
        gpu_node("rtx-1", RTX4090),
        gpu_node("h100-0", H100, gpus=8),
    ):
        fake.put(NODES.path(), node)


def create(
    fake: FakeApiServer, name: str = "qwen", spec: dict[str, Any] | None = None, namespace: str = NS
) -> dict[str, Any]:
    body = {
        "apiVersion": "gdnserve.io/v1alpha1",
        "kind": "Qwen35Deployment",
        "metadata": {"name": name},
        "spec": copy.deepcopy(spec if spec is not None else MIXED_SAMPLE["spec"]),
    }
    return fake.put(DEPLOYMENTS.path(namespace), body)


def rayservice(fake: FakeApiServer, name: str = "qwen") -> dict[str, Any] | None:
    return fake.get(RAYSERVICES.path(NS, name))


def groups(rs: dict[str, Any] | None) -> list[str]:
    return [
        g["groupName"]
        for g in (rs or {}).get("spec", {}).get("rayClusterConfig", {}).get("workerGroupSpecs", [])
    ]


def condition(fake: FakeApiServer, kind: str, name: str = "qwen") -> tuple[str, str] | None:
    cr = fake.get(DEPLOYMENTS.path(NS, name)) or {}
    for cond in (cr.get("status") or {}).get("conditions") or []:
        if cond["type"] == kind:
            return cond["status"], cond["reason"]
    return None


def event_reasons(fake: FakeApiServer) -> list[str]:
    return [e["reason"] for e in fake.all_objects(EVENTS.path())]


def kuberay_reports_ready(fake: FakeApiServer, name: str = "qwen") -> None:
    rs = rayservice(fake, name)
    assert rs is not None
    rs["status"] = {
        "observedGeneration": rs["metadata"]["generation"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "NonZeroServeEndpoints"}],
        "activeServiceStatus": {"applicationStatuses": {"qwen35": {"status": "RUNNING"}}},
    }
    fake.put(RAYSERVICES.path(NS), rs)
