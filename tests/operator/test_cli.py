"""`gdn-operator` / `python -m gdn_operator`: flags, and the real entry point run out of cluster
(a kubeconfig) against the FAKE API server until SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from gdn_operator.__main__ import build_config, parse_args
from gdn_operator.kube.resources import DEPLOYMENTS, NODES, RAYSERVICES
from tests.operator.fake_kube_apiserver import FakeApiServer
from tests.operator.k8s_binaries import ROOT
from tests.operator.operator_testlib import RTX4090, eventually, gpu_node


def test_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    monkeypatch.setenv("POD_NAME", "gdn-operator-abc")
    config = build_config(parse_args(["--serving-image", "img:1", "--namespace", "llm"]))
    assert config.identity == "gdn-operator-abc"
    assert config.lease is not None and config.lease.namespace == "ops"
    assert config.controller.namespace == "llm"
    assert config.controller.manifest.default_image == "img:1"
    assert parse_args([]).http_host == "127.0.0.1"  # loopback unless told (the chart: Pod IP)
    single = build_config(parse_args(["--no-leader-elect"]))
    assert single.lease is None and single.controller.namespace is None  # every namespace


def test_runs_out_of_cluster_until_sigterm(fake_api: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": fake_api.url}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "users": [{"name": "fake", "user": {"token": "not-checked"}}],
            }
        )
    )
    fake_api.put(NODES.path(), gpu_node("rtx-0", RTX4090))
    sample = yaml.safe_load((ROOT / "charts/qwen35-stack/examples/rtx4090-only.yaml").read_text())
    fake_api.put(DEPLOYMENTS.path("llm"), sample)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gdn_operator",
            "--kubeconfig",
            str(kubeconfig),
            "--serving-image",
            "img:1",
            "--http-port",
            "0",
            "--lease-namespace",
            "ops",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        eventually(lambda: fake_api.get(RAYSERVICES.path("llm", "qwen35-a3b-4090")), timeout_s=20)
        lease = fake_api.get("/apis/coordination.k8s.io/v1/namespaces/ops/leases/gdn-operator")
        assert lease is not None and lease["spec"]["holderIdentity"]
        listening = [
            c.laddr
            for c in psutil.Process(process.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        ]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    assert process.returncode == 0, output
    released = fake_api.get("/apis/coordination.k8s.io/v1/namespaces/ops/leases/gdn-operator")
    assert released is not None and not released["spec"].get("holderIdentity")
