"""A real control plane for tests, by the envtest convention: `$KUBEBUILDER_ASSETS` names a
directory with `etcd` and `kube-apiserver` (as `setup-envtest use -p path` prints). Both start
on 127.0.0.1 with throwaway state; the API server can be stopped and started again on the same
port and etcd (fault tests). When the directory also holds `kube-controller-manager`, it runs
too (garbage collector, namespace and node lifecycle controllers: a cluster's behaviour). No
scheduler and no kubelet: Nodes are objects the tests create, kept Ready by `KubeletStandIn`."""

from __future__ import annotations

import logging
import os
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.client import without_hidden_retries
from gdn_operator.kube.resources import LEASES, NODES, Resource
from gdn_serve.serve.processes import free_port

ADMIN_TOKEN = "envtest-admin-token"  # group system:masters
log = logging.getLogger(__name__)


def assets_problem() -> str | None:
    """Why the real API server tests cannot run here, or None when they can."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        return (
            "KUBEBUILDER_ASSETS is not set (envtest convention: a directory with etcd and"
            " kube-apiserver, e.g. from `setup-envtest use -p path`)"
        )
    missing = [b for b in ("etcd", "kube-apiserver") if not (Path(assets) / b).is_file()]
    if missing:
        return f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}"
    if shutil.which("openssl") is None:
        return "openssl is needed to make the API server's service account key"
    return None


class ControlPlane:
    def __init__(self, workdir: Path) -> None:
        self.assets = Path(os.environ["KUBEBUILDER_ASSETS"])
        self.workdir = workdir
        self.etcd_port = free_port()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._processes: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    @property
    def controller_manager(self) -> bool:
        """Whether a kube-controller-manager runs (KUBEBUILDER_ASSETS has one)."""
        return (self.assets / "kube-controller-manager").is_file()

    def start(self, timeout_s: float = 90.0) -> ControlPlane:
        self._start_etcd()
        self.start_apiserver(timeout_s)
        if self.controller_manager:
            self._start_controller_manager()
        return self

    def start_apiserver(self, timeout_s: float = 90.0) -> None:
        self._start_apiserver()
        self._wait_ready(timeout_s)

    def stop_apiserver(self) -> None:
        """Stop the API server only (etcd keeps the state): clients see it gone."""
        self._terminate("kube-apiserver")

    def stop(self) -> None:
        for name in reversed(list(self._processes)):
            self._terminate(name)

    def _terminate(self, name: str) -> None:
        process, _ = self._processes.pop(name)
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def api_client(self, impersonate: str | None = None) -> client.ApiClient:
        """A client with admin rights, or acting as `impersonate` (e.g. a ServiceAccount)."""
        configuration = client.Configuration()
        configuration.host = self.url
        configuration.verify_ssl = False  # self-signed serving certificate
        configuration.api_key = {"BearerToken": ADMIN_TOKEN}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        api_client = client.ApiClient(without_hidden_retries(configuration))
        if impersonate:
            api_client.set_default_header("Impersonate-User", impersonate)
        return api_client

    def kubeconfig(self) -> Path:
        path = self.workdir / "kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: envtest\n"
            f"clusters:\n- name: envtest\n  cluster:\n    server: {self.url}\n"
            "    insecure-skip-tls-verify: true\n"
            "contexts:\n- name: envtest\n  context: {cluster: envtest, user: admin}\n"
            f"users:\n- name: admin\n  user: {{token: {ADMIN_TOKEN}}}\n"
        )
        return path

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:  # appended: a restarted API server keeps its earlier log
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self._processes[name] = (process, log)

    def _start_etcd(self) -> None:
        data = self.workdir / "etcd"
        self._spawn(
            "etcd",
            [
                str(self.assets / "etcd"),
                f"--data-dir={data}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls=http://127.0.0.1:0",
            ],
        )

    def _start_apiserver(self) -> None:
        certs = self.workdir / "certs"
        sa_key = certs / "sa.key"
        if not sa_key.exists():  # a restart keeps the keys and the serving certificate
            certs.mkdir(exist_ok=True)
            subprocess.run(
                ["openssl", "genrsa", "-out", str(sa_key), "2048"], check=True, capture_output=True
            )
        tokens = certs / "tokens.csv"
        tokens.write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
        self._spawn(
            "kube-apiserver",
            [
                str(self.assets / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--cert-dir={certs}",  # it writes a self-signed serving certificate here
                f"--secure-port={self.port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                f"--token-auth-file={tokens}",
                # No controller creates the default ServiceAccounts here (as in envtest).
                "--disable-admission-plugins=ServiceAccount",
                f"--service-account-issuer={self.url}",
                f"--service-account-key-file={sa_key}",
                f"--service-account-signing-key-file={sa_key}",
            ],
        )

    def _start_controller_manager(self) -> None:
        certs = self.workdir / "controller-manager"
        certs.mkdir(exist_ok=True)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.assets / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig()}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={certs}",
                f"--service-account-private-key-file={self.workdir / 'certs' / 'sa.key'}",
                "--use-service-account-credentials=false",
            ],
        )

    def _wait_ready(self, timeout_s: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process, log in self._processes.values():
                if process.poll() is not None:
                    raise RuntimeError(f"{log.stem} exited: {log.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(request, context=context, timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        logs = "\n".join(log.read_text()[-2000:] for _, log in self._processes.values())
        raise RuntimeError(f"the API server was not ready within {timeout_s}s:\n{logs}")


NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
NODE_LEASE_NS = "kube-node-lease"
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)


class KubeletStandIn:
    """What the kubelets and the node lifecycle controller of a cluster do for its Nodes, for the
    Nodes the tests create (a stand-in: no kubelet runs here).

    A real API server taints every new Node `node.kubernetes.io/not-ready:NoSchedule`
    (TaintNodesByCondition) until its kubelet reports Ready; a kube-controller-manager marks a
    Node whose kubelet stops renewing its Lease `Unknown` and taints it unreachable. So, every
    `beat_s`, for each Node: the Ready condition it should have (with a fresh heartbeat), a
    renewed Lease in kube-node-lease, and, while Ready, no not-ready/unreachable taint.
    """

    def __init__(self, api: KubeApi, beat_s: float = 5.0) -> None:
        self.api = api
        self.beat_s = beat_s
        self._ready: dict[str, bool] = {}
        self._since: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubelet-stand-in", daemon=True)

    def start(self) -> KubeletStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def add(self, node: dict[str, Any]) -> None:
        """Create the Node and bring it to Ready, untainted, as a kubelet's first report would."""
        self.api.create(NODES, node)
        self.set_ready(node["metadata"]["name"], True)

    def set_ready(self, name: str, ready: bool) -> None:
        with self._lock:
            if self._ready.get(name) != ready:
                self._since[name] = _micro_now()
            self._ready[name] = ready
        self._beat(name, ready)

    def _run(self) -> None:
        while not self._stop.wait(self.beat_s):
            with self._lock:
                nodes = dict(self._ready)
            for name, ready in nodes.items():
                try:
                    self._beat(name, ready)
                except ApiError as exc:  # the API server may be down in a fault test
                    log.warning("kubelet stand-in: node %s: %s", name, exc)

    def _beat(self, name: str, ready: bool) -> None:
        now = _micro_now()
        condition = {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": "kubelet stand-in (tests)",
            "lastHeartbeatTime": now,
            "lastTransitionTime": self._since.get(name, now),
        }
        self.api.patch(NODES, name, None, {"status": {"conditions": [condition]}}, "status")
        if ready:
            taints = self.api.get(NODES, name).get("spec", {}).get("taints") or []
            kept = [t for t in taints if t.get("key") not in NOT_READY_TAINTS]
            if kept != taints:
                self.api.patch(NODES, name, None, {"spec": {"taints": kept}})
        self._renew_lease(name, now)

    def _renew_lease(self, name: str, now: str) -> None:
        spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}
        try:
            lease = self.api.get(LEASES, name, NODE_LEASE_NS)
        except ApiError as exc:
            if not exc.not_found:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": name, "namespace": NODE_LEASE_NS},
                "spec": spec,
            }
            self._ensure_lease_namespace()
            self.api.create(LEASES, body)
            return
        self.api.replace(LEASES, {**lease, "spec": {**lease.get("spec", {}), **spec}})

    def _ensure_lease_namespace(self) -> None:
        """The API server creates kube-node-lease itself; make sure, without failing if so."""
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NODE_LEASE_NS}}
        try:
            self.api.create(NAMESPACES, namespace)
        except ApiError as exc:
            if not exc.conflict:
                raise


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
