"""The local stack: a private Ray on this machine running the Serve application, loopback only.

`LocalStack.start()` prepares the environment (caches in the project's cache folder, a per-run
Ray auth token, loopback binds, direct streaming), starts Ray and the application, and
returns once the API answers; `stop()` shuts Serve and Ray down, ends any process of the tree
that outlived them, and removes the run's socket files.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gdn_serve import envs, paths
from gdn_serve.contract import AppConfig, ArchDeployment, arch_resource
from gdn_serve.serve import loopback
from gdn_serve.serve.processes import free_port

APP_NAME = "gdn-serve"
DEFAULT_SERVED_NAME = "tiny-qwen35"
# HAProxy refuses Unix socket paths over 97 bytes; Serve adds "/<56-hex node id>/a" and HAProxy
# binds through a temporary "<path>.<pid>.tmp" first.
_MAX_SOCKET_DIR = 97 - len("/" + "0" * 56 + "/a") - len(".4194304.tmp")


@dataclass(frozen=True)
class LocalOptions:
    model: str | None = None  # None: the embedded tiny model; else a local path or a hub id
    served_model_name: str | None = None
    host: str = loopback.LOOPBACK
    port: int = 8000
    metrics_port: int = 8080
    max_model_len: int = 2048
    replicas: int = 1
    enforce_eager: bool = False
    kv_cache_gib: float = 1.0
    # Pretend the machine has these GPU archs: one CPU deployment per name, each pinned through
    # the arch's Ray custom resource, all behind one balancing ingress. Exercises the multi-arch
    # application (what the operator deploys on a mixed cluster) on one machine.
    simulated_archs: tuple[str, ...] = ()
    quiet: bool = False  # keep Ray workers' logs out of this terminal (they stay in .cache/ray)

    def validate(self) -> None:
        if not loopback.is_loopback(self.host):
            raise ValueError(f"--host {self.host!r}: the local stack listens on loopback only")
        if self.replicas < 1 or self.max_model_len < 1 or self.kv_cache_gib <= 0:
            raise ValueError("replicas, max model length and KV cache size must be positive")
        if len(set(self.simulated_archs)) != len(self.simulated_archs):
            raise ValueError(f"simulated archs must be unique: {self.simulated_archs}")


def served_name(opts: LocalOptions, model_source: str) -> str:
    if opts.served_model_name:
        return opts.served_model_name
    return DEFAULT_SERVED_NAME if opts.model is None else Path(model_source).name or model_source


def local_archs(opts: LocalOptions) -> tuple[ArchDeployment, ...]:
    """One CPU deployment, or one per simulated arch placed by that arch's Ray resource."""
    names = opts.simulated_archs or ("cpu",)
    return tuple(
        ArchDeployment(
            arch=name,
            use_gpu=False,
            min_replicas=opts.replicas,
            max_replicas=opts.replicas,
            ray_resource=arch_resource(name) if opts.simulated_archs else None,
        )
        for name in names
    )


def app_config(
    opts: LocalOptions, model_source: str, env: Mapping[str, str] | None = None
) -> AppConfig:
    """The application: `opts.replicas` vLLM CPU engines per (real or simulated) arch, behind
    the API key when `env` (default: this process's environment) holds one."""
    engine = {
        "dtype": "bfloat16",  # vLLM's CPU GDN kernels require bf16
        "enforce_eager": opts.enforce_eager,
        "kv_cache_memory_bytes": int(opts.kv_cache_gib * 2**30),
    }
    return AppConfig(
        model_source=model_source,
        served_model_name=served_name(opts, model_source),
        archs=local_archs(opts),
        max_model_len=opts.max_model_len,
        engine_kwargs=engine,
        api_key_env=envs.API_KEY.name if envs.API_KEY.get(env) else None,
        loopback_only=True,
    )


def socket_dir(root: Path) -> Path:
    """Folder for HAProxy's Unix sockets, short enough for the 97-byte socket path limit: in
    the cache folder when its path is short enough, else a private folder in /tmp (a checkout
    deep in the file system); either way `LocalStack.stop()` removes it."""
    path = root / "s"
    if len(str(path)) <= _MAX_SOCKET_DIR:
        return path
    return Path(tempfile.mkdtemp(prefix="gdn-", dir="/tmp"))


def stack_env(root: Path, sockets: Path, direct_streaming: bool = True) -> dict[str, str]:
    """Environment of the whole process tree: caches, auth, loopback, direct streaming."""
    env = paths.cache_env(root)
    env.update(_direct_streaming_env(sockets) if direct_streaming else {})
    env.update(
        {
            # Single-node Ray: node address 127.0.0.1. Without it Ray swaps the 127.0.0.1 we pass
            # for the machine's external address and binds its servers there.
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            # Token auth without writing ~/.ray/auth_token: a fresh token per run, inherited.
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(16),
            # A local Ctrl-C need not wait out the 30 s drain meant for rolling cluster updates.
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
            "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "1",
            # Ray runs workers at nice 15; the engine must not lose the CPU to its own clients.
            "RAY_worker_niceness": "0",
            # Serve's fallback proxy ports are fixed (8500, 9500) and bound with SO_REUSEPORT,
            # so two stacks on one machine would silently share them: one free port each.
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
            "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
        }
    )
    return env


def _direct_streaming_env(sockets: Path) -> dict[str, str]:
    """Direct streaming: HAProxy forwards to the LLM replica's own vLLM server, skipping the
    ingress hop and Serve's 50 ms stream batching (docs/architecture.md). One arch only."""
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(loopback.haproxy_wrapper()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(sockets / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(sockets / "a"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(sockets / "m"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(sockets),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(sockets / "state"),
    }


def remove_sockets(*folders: Path) -> None:
    """Unlink the Unix socket files a run leaves behind (Ray's session, vLLM's ZMQ IPC)."""
    for folder in folders:
        for path in folder.rglob("*") if folder.is_dir() else ():
            if path.is_socket():
                path.unlink(missing_ok=True)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _interrupt(*_: object) -> None:
    # From the first signal on the process is on its way out through stop(); a second one
    # before stop() has begun ignoring them must not abort that way either.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextmanager
def signals_ignored() -> Iterator[None]:
    """SIGINT and SIGTERM ignored inside, the handlers before restored after: a second Ctrl-C
    during shutdown must not abort the loop that ends the process tree and orphan it. Off the
    main thread there is nothing to do: Python runs signal handlers on the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def interrupt_on_signals() -> None:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt. SIGINT explicitly too: a process
    started in the background by a non-interactive shell inherits SIGINT ignored."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _interrupt)


class LocalStack:
    """Ray + the Serve application on this machine. Use as a context manager."""

    def __init__(
        self, opts: LocalOptions, model_source: str, *, handle_signals: bool = False
    ) -> None:
        opts.validate()
        self.opts = opts
        self.handle_signals = handle_signals
        self.config = app_config(opts, model_source)
        self.root = paths.cache_root()
        self.sockets = self.root / "s"  # chosen for real by start()
        self._started = False

    @property
    def api_url(self) -> str:
        return f"http://{self.opts.host}:{self.opts.port}/v1"

    @property
    def metrics_url(self) -> str:
        return f"http://{loopback.LOOPBACK}:{self.opts.metrics_port}/metrics"

    def start(self) -> LocalStack:
        self._started = True  # from here on, stop() has something to clean up
        self.sockets = socket_dir(self.root)
        self.sockets.mkdir(parents=True, exist_ok=True)
        os.environ.update(stack_env(self.root, self.sockets, len(self.config.archs) == 1))
        import ray
        from ray import serve

        from gdn_serve.serve.app import build_app

        ray.init(
            include_dashboard=False,
            namespace=APP_NAME,
            _node_ip_address=loopback.LOOPBACK,
            _metrics_export_port=self.opts.metrics_port,
            _temp_dir=str(self.root / "ray"),
            runtime_env={"worker_process_setup_hook": loopback.SETUP_HOOK},
            resources={a.ray_resource: 1.0 for a in self.config.archs if a.ray_resource},
            log_to_driver=not self.opts.quiet,
        )
        if self.handle_signals:
            # ray.init() installs its core worker's own SIGTERM handler, which ends the driver
            # on the spot and orphans the tree; take SIGINT/SIGTERM back so both reach stop().
            interrupt_on_signals()
        serve.start(http_options={"host": self.opts.host, "port": self.opts.port})
        serve.run(build_app(self.config.to_dict()), name=APP_NAME, route_prefix="/")
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Shut everything down; end whatever process of the tree outlived Ray's shutdown.
        Further SIGINT/SIGTERM are ignored until the tree is gone."""
        if not self._started:
            return
        with signals_ignored():
            self._stop(timeout_s)

    def _stop(self, timeout_s: float) -> None:
        import psutil
        import ray
        from ray import serve

        tree = psutil.Process().children(recursive=True)
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            _, alive = psutil.wait_procs(tree, timeout=timeout_s)
            for proc in alive:
                proc.kill()
            psutil.wait_procs(alive, timeout=5)
            # HAProxy's folder holds only this run's state (config, sockets, locks).
            shutil.rmtree(self.sockets, ignore_errors=True)
            remove_sockets(self.root / "ray", self.root / "tmp")
            self._started = False

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
