"""List+watch with a local cache: the informer pattern, for plain dict objects.

The loop lists once (paginated), then watches from the list's resourceVersion with bookmarks, so
a quiet watch still advances its resourceVersion and a reconnect resumes where it stopped instead
of re-listing. When the server answers 410 Gone (the resourceVersion was compacted away) the
informer re-lists and reports the difference against its cache as ordinary add/update/delete
events, so no deletion is missed. Other failures back off exponentially with jitter and honour
Retry-After. Handlers run on the informer's thread and must be quick (they enqueue keys).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from gdn_operator.kube.api import ApiError, KubeApi, WatchStream
from gdn_operator.kube.backoff import Backoff
from gdn_operator.kube.resources import Resource, object_key

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED = "ADDED", "MODIFIED", "DELETED"
# (event type, old object or None, new object or None)
Handler = Callable[[str, Mapping[str, Any] | None, Mapping[str, Any] | None], None]


class Informer:
    def __init__(
        self,
        api: KubeApi,
        resource: Resource,
        handler: Handler,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        backoff: Backoff | None = None,
        watch_timeout_s: int = 300,
    ) -> None:
        self.api = api
        self.resource = resource
        self.handler = handler
        self.namespace = namespace
        self.label_selector = label_selector
        self.backoff = backoff or Backoff(base_s=1.0, cap_s=60.0)
        self.watch_timeout_s = watch_timeout_s
        self.synced = threading.Event()
        self.relists = 0  # how often the informer listed; observable for tests and logs
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None

    # -- cache -----------------------------------------------------------------------------

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._cache.get(key)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._cache.values())

    # -- loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        resource_version: str | None = None
        failures = 0
        while not stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist()
                resource_version = self._watch(resource_version, stop)
                failures = 0
            except ApiError as exc:
                if stop.is_set():
                    return  # the stream was closed to stop us
                if exc.gone:
                    log.info("%s: resourceVersion expired (410), re-listing", self.resource.plural)
                    resource_version = None
                    continue
                failures += 1
                self._pause(stop, failures, exc, exc.retry_after_s)
            except Exception as exc:  # a malformed answer must not end the loop
                failures += 1
                self._pause(stop, failures, exc, None)

    def _pause(
        self, stop: threading.Event, failures: int, exc: Exception, retry_after_s: float | None
    ) -> None:
        delay = self.backoff.delay(failures, retry_after_s)
        log.warning("%s: %s; retrying in %.1fs", self.resource.plural, exc, delay)
        stop.wait(delay)

    def stop(self) -> None:
        """Unblock a watch that is waiting for data (call after setting the stop event)."""
        stream = self._stream
        if stream is not None:
            stream.close()

    def _relist(self) -> str:
        items, resource_version = self.api.list(self.resource, self.namespace, self.label_selector)
        fresh = {object_key(obj): obj for obj in items}
        with self._lock:
            old, self._cache = self._cache, fresh
        self.relists += 1
        for key, obj in old.items():
            if key not in fresh:
                self._notify(DELETED, obj, None)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._notify(ADDED, None, obj)
            elif _rv(before) != _rv(obj):
                self._notify(MODIFIED, before, obj)
        self.synced.set()
        return resource_version

    def _watch(self, resource_version: str, stop: threading.Event) -> str:
        """Follow one watch request to its end; returns the resourceVersion to resume from."""
        self._stream = self.api.watch(
            self.resource,
            self.namespace,
            resource_version,
            self.label_selector,
            self.watch_timeout_s,
        )
        try:
            for event in self._stream:
                if stop.is_set():
                    break
                resource_version = self._apply(event) or resource_version
        finally:
            self._stream = None
        return resource_version

    def _apply(self, event: Mapping[str, Any]) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code", 0))
            raise ApiError(code, str(obj.get("reason", "WatchError")), str(obj.get("message", "")))
        if kind == "BOOKMARK":
            return _rv(obj)  # nothing changed; only the resourceVersion moves on
        key = object_key(obj)
        with self._lock:
            before = self._cache.get(key)
            if kind == DELETED:
                self._cache.pop(key, None)
            else:
                self._cache[key] = obj
        if kind == DELETED:
            self._notify(DELETED, before or obj, None)
        else:
            self._notify(MODIFIED if before is not None else ADDED, before, obj)
        return _rv(obj)

    def _notify(
        self, kind: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
    ) -> None:
        try:
            self.handler(kind, old, new)
        except Exception:  # one bad handler call must not stop the cache from following
            log.exception("%s: event handler failed", self.resource.plural)


def _rv(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("resourceVersion", ""))
