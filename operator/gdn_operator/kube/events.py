"""Kubernetes Events for decisions and errors, aggregated like client-go's recorder.

The same event (object, type, reason, message) seen again within the aggregation window bumps the
existing Event's count instead of creating another object. Failing to record an event is logged
and never fails the reconcile that wanted to record it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.resources import EVENTS

log = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"
COMPONENT = "gdn-operator"
AGGREGATE_WINDOW_S = 600.0
MAX_TRACKED = 4096


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(
        self,
        api: KubeApi,
        instance: str,
        clock: Callable[[], float],
        now: Callable[[], str] = utc_now,
    ) -> None:
        self.api = api
        self.instance = instance
        self.clock = clock
        self.now = now
        # (uid, type, reason, message) -> (event name, namespace, count, first seen at)
        self._seen: OrderedDict[tuple[str, ...], tuple[str, str, int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, obj: Mapping[str, Any], kind: str, reason: str, message: str) -> bool:
        """Record (or count again) an event on `obj`; False when the API refused it."""
        meta = obj["metadata"]
        key = (meta.get("uid", ""), kind, reason, message)
        with self._lock:
            seen = self._seen.get(key)
        try:
            if not (
                seen and self.clock() - seen[3] < AGGREGATE_WINDOW_S and self._bump(key, *seen)
            ):
                self._create(key, obj, kind, reason, message)
        except ApiError as exc:
            log.warning("could not record event %s on %s: %s", reason, meta.get("name"), exc)
            return False
        return True

    def _create(
        self, key: tuple[str, ...], obj: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        meta = obj["metadata"]
        now = self.now()
        name = f"{meta['name']}.{uuid.uuid4().hex[:16]}"
        self.api.create(
            EVENTS,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion"),
                    "kind": obj.get("kind"),
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "type": kind,
                "reason": reason,
                "message": message[:1024],
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": COMPONENT},
                "reportingComponent": COMPONENT,
                "reportingInstance": self.instance,
            },
        )
        self._remember(key, (name, meta["namespace"], 1, self.clock()))

    def _bump(
        self, key: tuple[str, ...], name: str, namespace: str, count: int, first: float
    ) -> bool:
        """Count the event again; False when it expired (Events live 1 h by default)."""
        try:
            self.api.patch(
                EVENTS, name, namespace, {"count": count + 1, "lastTimestamp": self.now()}
            )
        except ApiError as exc:
            if not exc.not_found:
                raise
            return False
        self._remember(key, (name, namespace, count + 1, first))
        return True

    def _remember(self, key: tuple[str, ...], value: tuple[str, str, int, float]) -> None:
        with self._lock:
            self._seen[key] = value
            self._seen.move_to_end(key)
            while len(self._seen) > MAX_TRACKED:
                self._seen.popitem(last=False)
