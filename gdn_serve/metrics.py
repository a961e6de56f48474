"""gdn_serve's own Prometheus metrics: GDN decode latency per kernel, which backend each engine
runs, fallbacks, and whether the vLLM plugin is active.

Where they go, decided in the process that records them:
- inside a Ray process, through `ray.util.metrics`, so they reach the same scrape as vLLM's own
  metrics (Ray's metrics-export port, with the `ray_` prefix Ray gives application metrics).
  On GPUs Ray Serve LLM runs vLLM's workers as Ray actors, so the kernels record there;
- in a process that a Ray process started and that is not one itself, through the relay: on
  CPU, Ray Serve LLM runs vLLM's engine and worker as plain child processes of the replica.
  The replica starts the relay (`start_relay`) before vLLM spawns them: a Unix datagram socket
  whose path the children inherit in GDN_SERVE_METRICS_RELAY. A child sends each record there
  without blocking (a full socket drops the record: these are sampled measurements) and the
  relay re-records it through Ray. No network port is opened;
- anywhere else (a plain vLLM server, a script), `prometheus_client`'s default registry.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gdn_serve import envs

Kind = Literal["histogram", "gauge", "counter"]
logger = logging.getLogger(__name__)

# 1 µs .. 0.1 s: a GDN decode kernel call is a few µs on an H100 at B=1 and grows to ~1 ms at
# large batch; a CPU decode is 10 µs .. tens of ms.
DECODE_BUCKETS: tuple[float, ...] = (
    1e-6, 2e-6, 4e-6, 8e-6, 16e-6, 32e-6, 64e-6, 128e-6, 256e-6, 512e-6,
    1e-3, 2e-3, 4e-3, 8e-3, 16e-3, 32e-3, 64e-3, 0.1,
)  # fmt: skip


@dataclass(frozen=True)
class MetricSpec:
    kind: Kind
    name: str  # without the `_total` suffix that both sinks add to counters
    doc: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...] = ()


DECODE_SECONDS = MetricSpec(
    "histogram",
    "gdn_serve_decode_seconds",
    f"GDN decode kernel time per layer call (sampled: one call in {envs.DECODE_SAMPLE_EVERY.name})",
    ("backend", "arch", "model", "batch"),
    DECODE_BUCKETS,
)
BACKEND_INFO = MetricSpec(
    "gauge",
    "gdn_serve_backend_info",
    "1 for the GDN decode backend this engine runs, with the one requested",
    ("backend", "requested", "arch", "model", "state_dtype"),
)
FALLBACKS = MetricSpec(
    "counter",
    "gdn_serve_backend_fallbacks",
    "Engines that run another GDN decode backend than the one chosen, by reason",
    ("chosen", "backend", "arch", "model", "reason"),
)
PLUGIN_INFO = MetricSpec(
    "gauge",
    "gdn_serve_vllm_plugin_info",
    "1 when the gdn_serve vLLM plugin changed vLLM, 0 when it left an unsupported vLLM alone",
    ("vllm_version", "supported"),
)
BY_NAME = {spec.name: spec for spec in (DECODE_SECONDS, BACKEND_INFO, FALLBACKS, PLUGIN_INFO)}


def in_ray() -> bool:
    """Whether this process is a Ray driver or worker (Ray's metrics work here)."""
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


def _ray_recorder(spec: MetricSpec) -> Callable[[float, Mapping[str, str]], None]:
    from ray.util import metrics as ray_metrics

    if spec.kind == "histogram":
        h = ray_metrics.Histogram(spec.name, spec.doc, list(spec.buckets), spec.labels)
        return lambda value, tags: h.observe(value, tags=dict(tags))
    if spec.kind == "gauge":
        g = ray_metrics.Gauge(spec.name, spec.doc, spec.labels)

        def set_and_hold(value: float, tags: Mapping[str, str]) -> None:
            g.set(value, tags=dict(tags))
            _held[(spec.name, tuple(sorted(tags.items())))] = lambda: g.set(value, tags=dict(tags))
            _start_refresher()

        return set_and_hold
    c = ray_metrics.Counter(spec.name, spec.doc, spec.labels)
    return lambda value, tags: c.inc(value, tags=dict(tags))


# Ray (2.60) drops a gauge series from its export when the value was not set again within two
# export intervals (default 2 x 10 s); info gauges set once at start-up would vanish. Every
# gauge set in a Ray process is therefore set again every REFRESH_S.
REFRESH_S = 5.0
_held: dict[tuple[str, tuple[tuple[str, str], ...]], Callable[[], None]] = {}
_refresher: list[threading.Thread] = []


def _start_refresher() -> None:
    if not _refresher:
        _refresher.append(threading.Thread(target=_refresh, name="gdn-metrics-gauges", daemon=True))
        _refresher[0].start()


def _refresh() -> None:
    while True:
        time.sleep(REFRESH_S)
        for set_again in list(_held.values()):
            set_again()


def _prometheus_recorder(spec: MetricSpec) -> Callable[[float, Mapping[str, str]], None]:
    import prometheus_client as prom

    metric: Any
    if spec.kind == "histogram":
        metric = prom.Histogram(spec.name, spec.doc, spec.labels, buckets=spec.buckets)
        return lambda value, tags: metric.labels(**tags).observe(value)
    if spec.kind == "gauge":
        metric = prom.Gauge(spec.name, spec.doc, spec.labels)
        return lambda value, tags: metric.labels(**tags).set(value)
    metric = prom.Counter(spec.name, spec.doc, spec.labels)
    return lambda value, tags: metric.labels(**tags).inc(value)


class _RelaySender:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def __call__(self, spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
        # Relay gone or full: drop one sampled record rather than stall a decode.
        with contextlib.suppress(OSError):
            self.sock.sendto(json.dumps([spec.name, value, dict(labels)]).encode(), self.path)


_recorders: dict[str, Callable[[float, Mapping[str, str]], None]] = {}
_sender: _RelaySender | None = None
_lock = threading.Lock()


def record(spec: MetricSpec, value: float, **labels: str) -> None:
    """Observe (histogram), set (gauge) or add (counter) `value` with exactly `spec.labels`."""
    global _sender
    if set(labels) != set(spec.labels):
        raise ValueError(f"{spec.name} takes labels {spec.labels}, got {tuple(labels)}")
    relay = envs.METRICS_RELAY.get()
    if relay and not in_ray():
        _sender = _sender or _RelaySender(relay)
        _sender(spec, value, labels)
    else:
        _record_here(spec, value, labels)


def _record_here(spec: MetricSpec, value: float, labels: Mapping[str, str]) -> None:
    with _lock:
        recorder = _recorders.get(spec.name)
        if recorder is None:
            recorder = _ray_recorder(spec) if in_ray() else _prometheus_recorder(spec)
            _recorders[spec.name] = recorder
    recorder(value, labels)


def start_relay() -> str:
    """Receive records from child processes and record them here (through Ray in a Ray
    process, which is where the plugin starts it).
    Sets GDN_SERVE_METRICS_RELAY for children started afterwards; returns the socket path.
    Idempotent within a process."""
    if envs.METRICS_RELAY.get():
        return envs.METRICS_RELAY.get()
    folder = tempfile.mkdtemp(prefix="gdn-metrics-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = str(Path(folder) / "relay.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    relay = threading.Thread(target=_relay, args=(sock,), name="gdn-metrics-relay", daemon=True)
    relay.start()
    os.environ[envs.METRICS_RELAY.name] = path
    return path


def _relay(sock: socket.socket) -> None:
    while True:
        payload = sock.recv(65536)
        try:
            name, value, labels = json.loads(payload)
            spec = BY_NAME[name]
            if set(labels) != set(spec.labels):
                raise ValueError(f"labels {sorted(labels)}")
            _record_here(spec, float(value), labels)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("gdn_serve metrics relay: dropped a malformed record (%s)", exc)
