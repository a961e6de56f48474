"""Wiring: informers feed a work queue, bounded workers reconcile.

Four watches, one queue keyed by deployment (`namespace/name`):
- Qwen35Deployments: a new object or a new generation (status-only updates, including the
  operator's own, are ignored);
- RayServices the operator manages: changes map to their controlling deployment;
- EndpointSlices of KubeRay's Services (label-selected): a change of the serve Service's
  endpoints (a worker's Serve proxy became ready or went away) maps to its deployment;
- Nodes: when a node's planning-relevant view changes (arch, product, memory, GPU count, labels,
  taints, schedulability), the deployments it may affect are re-planned.
Every deployment is also re-queued every `resync_s` as a safety net; a reconcile with nothing to
change writes nothing, so that costs reads of the local caches only.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gdn_operator.control.metrics import OperatorMetrics
from gdn_operator.control.queue import WorkQueue
from gdn_operator.control.reconciler import (
    LABEL_SERVICE_NAME,
    SERVE_SERVICE_SUFFIX,
    Caches,
    Reconciler,
)
from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.events import EventRecorder
from gdn_operator.kube.informer import ADDED, DELETED, Informer
from gdn_operator.kube.resources import (
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    NODES,
    RAYSERVICES,
    object_key,
)
from gdn_operator.plan.inventory import (
    CpuNode,
    GpuNode,
    Inventory,
    NodeView,
    inventory_of,
    node_view,
)
from gdn_operator.plan.manifest import MANAGED_BY, ManifestOptions
from gdn_serve.backends.rules import CPU_ARCH

log = logging.getLogger(__name__)

# KubeRay labels the Services it makes for a RayService so; the EndpointSlice controller copies a
# Service's labels onto its slices.
KUBERAY_SERVICES = "ray.io/originated-from-crd=RayService"


@dataclass(frozen=True)
class ControllerOptions:
    namespace: str | None = None  # None: every namespace
    workers: int = 4
    resync_s: float = 600.0
    watch_timeout_s: int = 300
    sync_timeout_s: float = 60.0
    manifest: ManifestOptions = field(default_factory=ManifestOptions)


class InventoryCache:
    """The planning view of every node, rebuilt into an Inventory only after it changed."""

    def __init__(self) -> None:
        self._views: dict[str, NodeView] = {}
        self._inventory: Inventory | None = None
        self._lock = threading.Lock()

    def update(self, name: str, node: Mapping[str, Any] | None) -> tuple[NodeView, NodeView]:
        """Record a node's new state; returns its (old, new) planning views."""
        new = node_view(node) if node is not None else None
        with self._lock:
            old = self._views.pop(name, None)
            if new is not None:
                self._views[name] = new
            if old != new:
                self._inventory = None
        return old, new

    def arch_of(self, name: str) -> str | None:
        with self._lock:
            view = self._views.get(name)
        return view.arch if isinstance(view, (GpuNode, CpuNode)) else None

    def inventory(self) -> Inventory:
        with self._lock:
            if self._inventory is None:
                views = self._views.values()
                self._inventory = inventory_of(
                    (v for v in views if isinstance(v, GpuNode)),
                    (v for v in views if isinstance(v, CpuNode)),
                    {k: v for k, v in self._views.items() if isinstance(v, str)},
                )
            return self._inventory


class Controller:
    def __init__(
        self,
        api: KubeApi,
        recorder: EventRecorder,
        metrics: OperatorMetrics,
        options: ControllerOptions,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self.queue = WorkQueue(on_depth=metrics.queue_depth.set)
        self.nodes_view = InventoryCache()
        ns, timeout = options.namespace, options.watch_timeout_s
        managed = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
        self.deployments = Informer(
            api, DEPLOYMENTS, self._on_deployment, namespace=ns, watch_timeout_s=timeout
        )
        self.rayservices = Informer(
            api,
            RAYSERVICES,
            self._on_rayservice,
            namespace=ns,
            label_selector=managed,
            watch_timeout_s=timeout,
        )
        self.endpoint_slices = Informer(
            api,
            ENDPOINT_SLICES,
            self._on_endpoint_slice,
            namespace=ns,
            label_selector=KUBERAY_SERVICES,
            watch_timeout_s=timeout,
        )
        self.nodes = Informer(api, NODES, self._on_node, watch_timeout_s=timeout)
        self.informers = (self.nodes, self.deployments, self.rayservices, self.endpoint_slices)
        caches = Caches(
            deployment=self.deployments.get,
            rayservice=self.rayservices.get,
            endpoint_slices=self.endpoint_slices.items,
            node_arch=self.nodes_view.arch_of,
            inventory=self.nodes_view.inventory,
        )
        self.reconciler = Reconciler(api, caches, recorder, metrics, options.manifest)
        self._working = threading.Event()

    def ready(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    def run(self, stop: threading.Event) -> None:
        """Block until `stop`: watch, reconcile, resync."""
        threads = [_start(f"watch-{i.resource.plural}", i.run, stop) for i in self.informers]
        self._wait_for_caches(stop)
        threads += [_start(f"worker-{n}", self._work) for n in range(self.options.workers)]
        self._working.set()
        self.metrics.watch_objects(self.deployments.items)
        try:
            while not stop.wait(self.options.resync_s):
                self.enqueue_all()
        finally:
            self.metrics.unwatch_objects()
            self.queue.shutdown()
            for informer in self.informers:
                informer.stop()
            for thread in threads:
                thread.join(timeout=5)

    def enqueue_all(self) -> None:
        for obj in self.deployments.items():
            self.queue.add(object_key(obj))

    def _wait_for_caches(self, stop: threading.Event) -> None:
        # Workers start from full caches, so the first reconciles do not re-apply what exists.
        # A watch that cannot list (e.g. KubeRay not installed yet) must not block the rest.
        deadline = time.monotonic() + self.options.sync_timeout_s
        for informer in self.informers:
            if not informer.synced.wait(max(0.0, deadline - time.monotonic())):
                log.warning(
                    "%s not listed after %.0fs; starting anyway",
                    informer.resource.plural,
                    self.options.sync_timeout_s,
                )
            if stop.is_set():
                return

    def _work(self) -> None:
        while (key := self.queue.get()) is not None:
            self._process(key)

    def _process(self, key: str) -> None:
        started = time.monotonic()
        result = "ok"
        try:
            again = self.reconciler.reconcile(key)
            if again is None:
                self.queue.forget(key)
            elif again.after_s is None:  # it failed: the key's exponential backoff
                result = "requeue"
                self.queue.add_rate_limited(key)
            else:
                result = "requeue"
                self.queue.forget(key)
                self.queue.add_after(key, again.after_s)
        except ApiError as exc:
            result = "error"
            self.metrics.reconcile_errors.labels(f"api_{exc.status}").inc()
            delay = self.queue.add_rate_limited(key, exc.retry_after_s)
            log.warning("reconcile %s: %s; retrying in %.1fs", key, exc, delay)
        except Exception:  # a bug must cost one key a retry, never the worker
            result = "error"
            self.metrics.reconcile_errors.labels("internal").inc()
            delay = self.queue.add_rate_limited(key)
            log.exception("reconcile %s failed; retrying in %.1fs", key, delay)
        finally:
            self.metrics.reconcile_duration.labels(result).observe(time.monotonic() - started)
            self.queue.done(key)

    # -- event handlers (run on informer threads: enqueue only) ----------------------------

    def _on_deployment(
        self, kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        if (
            kind in (ADDED, DELETED)
            or _meta(old, "generation") != _meta(new, "generation")
            or _meta(old, "deletionTimestamp") != _meta(new, "deletionTimestamp")
        ):
            self.queue.add(object_key(new or old or {}))

    def _on_rayservice(
        self, kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        obj = new or old or {}
        for ref in obj.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == DEPLOYMENTS.kind:
                self.queue.add(f"{obj['metadata']['namespace']}/{ref['name']}")

    def _on_endpoint_slice(
        self, kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        obj = new or old or {}
        if (old or {}).get("endpoints") == (new or {}).get("endpoints"):
            return  # a label or annotation moved; who is ready did not
        service = (obj.get("metadata", {}).get("labels") or {}).get(LABEL_SERVICE_NAME, "")
        if service.endswith(SERVE_SERVICE_SUFFIX):
            name = service.removesuffix(SERVE_SERVICE_SUFFIX)
            self.queue.add(f"{obj['metadata']['namespace']}/{name}")

    def _on_node(
        self, kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        name = (new or old or {}).get("metadata", {}).get("name", "")
        before, after = self.nodes_view.update(name, new)
        if before == after:
            return  # heartbeats, unrelated labels: nothing the planner looks at
        if not self._working.is_set():
            return  # initial listing: every deployment is queued anyway, workers not started
        for cr in self.deployments.items():
            if _may_use(cr, before) or _may_use(cr, after):
                self.queue.add(object_key(cr))


def _may_use(cr: Mapping[str, Any], node: NodeView) -> bool:
    """Could this deployment's plan include `node`? (A CPU node for a deployment that lists
    `cpu`, else a GPU node of an arch not excluded; its selector met.)"""
    if not isinstance(node, (GpuNode, CpuNode)):
        return False
    spec = cr.get("spec") or {}
    listed = spec.get("archs") or []
    on_cpu = any(a.get("arch") == CPU_ARCH for a in listed)
    excluded = {a.get("arch") for a in listed if a.get("exclude")}
    selector = spec.get("nodeSelector") or {}
    return (
        isinstance(node, CpuNode) == on_cpu
        and node.arch not in excluded
        and all(node.labels.get(k) == v for k, v in selector.items())
    )


def _meta(obj: Mapping[str, Any] | None, name: str) -> Any:
    return (obj or {}).get("metadata", {}).get(name)


def _start(name: str, target: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread
