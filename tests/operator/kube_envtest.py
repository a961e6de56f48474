"""A real control plane for tests, by the envtest convention: `$KUBEBUILDER_ASSETS` names a
directory with `etcd` and `kube-apiserver` (as `setup-envtest use -p path` prints). Both start
on 127.0.0.1 with throwaway state. No controller manager runs: no garbage collector, no
scheduler, no kubelet (Nodes are plain objects the tests create)."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from gdn_operator.kube.client import without_hidden_retries
from kubernetes import client

from gdn_serve.servers import free_port

ADMIN_TOKEN = "envtest-admin-token"  # group system:masters


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
        self._processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, timeout_s: float = 90.0) -> ControlPlane:
        self._start_etcd()
        self._start_apiserver()
        self._wait_ready(timeout_s)
        return self

    def stop(self) -> None:
        for process, _ in reversed(self._processes):
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self._processes.clear()

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
        with log.open("wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self._processes.append((process, log))

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
        certs.mkdir()
        sa_key = certs / "sa.key"
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

    def _wait_ready(self, timeout_s: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process, log in self._processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{log.stem} exited: {log.read_text()[-3000:]}")
            try:
                if urllib.request.urlopen(request, context=context, timeout=2).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        logs = "\n".join(log.read_text()[-2000:] for _, log in self._processes)
        raise RuntimeError(f"the API server was not ready within {timeout_s}s:\n{logs}")
