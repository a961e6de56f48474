"""Run an OpenAI-compatible server as a child process tree, and take it down completely.

Used by the stack benchmark (our stack next to vLLM's own server) and by the end-to-end tests.
The child runs in a session of its own so that everything it starts can be found and ended.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from gdn_serve import envs
from gdn_serve.serve import loopback


def free_port() -> int:
    """A TCP port on the loopback address that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((loopback.LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_until_serving(
    api_url: str,
    timeout_s: float = 60.0,
    alive: subprocess.Popen[bytes] | None = None,
    api_key: str | None = None,
) -> None:
    """Poll `<api_url>/models` until it answers 200; fail early if `alive` exits. `api_key`:
    the key the server wants (default: `GDN_SERVE_API_KEY` here, what the local stack reads)."""
    models_url = api_url.rstrip("/") + "/models"
    key = envs.API_KEY.get() if api_key is None else api_key.strip()
    request = urllib.request.Request(
        models_url, headers={"Authorization": f"Bearer {key}"} if key else {}
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if alive is not None and alive.poll() is not None:
            raise RuntimeError(f"server exited with code {alive.returncode} before serving")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{models_url} did not answer within {timeout_s:.0f}s")
        time.sleep(0.5)


def child_environment(overrides: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment with `overrides` applied; a None value unsets a variable."""
    merged = {**os.environ, **overrides}
    return {name: value for name, value in merged.items() if value is not None}


@dataclass(frozen=True)
class Listener:
    ip: str
    port: int
    process: str

    @property
    def is_loopback(self) -> bool:
        return loopback.is_loopback(self.ip)


class ServerProcess:
    """A server command started in its own session; `stop()` ends the whole tree."""

    def __init__(
        self,
        argv: Sequence[str],
        api_url: str,
        log_path: Path,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.api_url = api_url
        self.log_path = log_path
        self.env = child_environment(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._seen: dict[int, psutil.Process] = {}

    def start(self, timeout_s: float = 600.0) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        try:
            key = envs.API_KEY.get(self.env)
            wait_until_serving(self.api_url, timeout_s, alive=self.proc, api_key=key)
        except BaseException:
            self.stop()
            raise RuntimeError(f"{self.argv[0]} failed to serve:\n{self.log_tail()}") from None
        return self

    def tree(self) -> list[psutil.Process]:
        """The server and all its descendants now; remembered so stop() can check them all."""
        assert self.proc is not None
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self._seen.update({p.pid: p for p in procs})
        return procs

    def listeners(self) -> list[Listener]:
        """Every listening TCP socket of the process tree."""
        names = {p.pid: p.name() for p in self.tree()}
        return [
            Listener(c.laddr.ip, c.laddr.port, names[c.pid])
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in names
        ]

    def stop(self, timeout_s: float = 90.0) -> int | None:
        """SIGINT (what Ctrl-C sends), then SIGKILL for whatever is left after `timeout_s`."""
        if self.proc is None:
            return None
        self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for proc in self.survivors():
            proc.kill()
        return self.proc.returncode

    def survivors(self) -> list[psutil.Process]:
        """Processes of the tree (as seen while it ran) that are still alive."""
        alive = []
        for proc in self._seen.values():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
            except psutil.NoSuchProcess:
                continue
        return alive

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def gdn_serve_run(
    log_path: Path, *args: str, env: Mapping[str, str | None] | None = None
) -> tuple[ServerProcess, str]:
    """`gdn-serve run <args>` as a child on free loopback ports, Ray's worker logs kept out of
    its output (not started yet), and the stack's metrics URL."""
    port, metrics_port = free_port(), free_port()
    argv = [
        str(Path(sys.executable).with_name("gdn-serve")), "run", "--port", str(port),
        "--metrics-port", str(metrics_port), "--quiet", *args,
    ]  # fmt: skip
    api_url = f"http://{loopback.LOOPBACK}:{port}/v1"
    return ServerProcess(argv, api_url, log_path, env), (
        f"http://{loopback.LOOPBACK}:{metrics_port}/metrics"
    )
