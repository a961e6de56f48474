"""A FAKE Kubernetes API server for unit tests: in-process HTTP, enough of the API to exercise
the operator's machinery where no real kube-apiserver can run.

Speaks: list (label selectors, limit/continue pagination), watch (chunked stream from a
resourceVersion, BOOKMARK events, 410 Gone below the compaction point), get, create, replace
(resourceVersion preconditions, 409), merge patch (optional resourceVersion precondition, the
status subresource), server-side apply (create or replace of everything but status; on the status
subresource, the status alone; a resourceVersion in the body is a precondition, as on a real
server), delete. Generations bump on spec changes. Tests can inject failures (status code,
Retry-After) for the next matching requests, compact the history and send bookmarks, and read the
request log.

It is a fake: no validation, no defaulting, no admission, no field ownership, no garbage
collection. The envtest-convention tests run the same operator against a real API server.
"""

from __future__ import annotations

import copy
import itertools
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

# Kinds whose writes through the main resource leave status alone (status subresource).
STATUS_SUBRESOURCE = {"qwen35deployments", "rayservices"}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any = None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    method: str
    path_contains: str
    status: int
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "injected failure"
    reason: str = ""


@dataclass
class _Route:
    collection: str  # "<group>/<version>/<plural>"
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def _route(path: str) -> _Route:
    parts = [p for p in path.split("/") if p]
    if parts[0] == "api":
        group_version, rest = ("", parts[1]), parts[2:]
    else:
        group_version, rest = (parts[1], parts[2]), parts[3:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    return _Route("/".join([*group_version, plural]), plural, namespace, name, sub)


def _selects(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, selector.split(",")):
        key, eq, value = term.partition("=")
        if (eq and labels.get(key) != value) or (not eq and key not in labels):
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeApiServer:
    def __init__(self) -> None:
        self.objects: dict[str, dict[tuple[str | None, str], dict[str, Any]]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, collection, type, obj
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.compacted = 0
        self._rv = itertools.count(1)
        self.rv = 0
        self._bookmarks = 0
        self.watches_paused = False
        self.dark = False
        self._cond = threading.Condition()
        self._stopping = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeApiServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    # -- test controls ---------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path_contains: str,
        status: int,
        times: int = 1,
        headers: dict[str, str] | None = None,
        message: str = "injected failure",
        reason: str = "",
    ) -> None:
        """The next `times` matching requests get `status` (a Status body with this message)."""
        with self._cond:
            fault = Fault(method, path_contains, status, times, headers or {}, message, reason)
            self.faults.append(fault)

    def compact(self) -> None:
        """Forget history: watches from any older resourceVersion now get 410 Gone."""
        with self._cond:
            self.compacted = self.rv
            self.history.clear()

    def pause_watches(self, paused: bool = True) -> None:
        """While paused, open watches end and new ones get 503 (a partition, for clients)."""
        with self._cond:
            self.watches_paused = paused
            self._cond.notify_all()

    def go_dark(self, dark: bool = True) -> None:
        """An API server that is gone: every request, on new or kept-alive connections, has its
        connection dropped without an answer, and open watches end."""
        with self._cond:
            self.dark = dark
            self._cond.notify_all()

    def bookmark(self) -> None:
        with self._cond:
            self._bookmarks += 1
            self._cond.notify_all()

    def put(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or overwrite an object directly (as another client would)."""
        route = _route(path)
        with self._cond:
            key = (route.namespace, obj["metadata"]["name"])
            old = self.objects.get(route.collection, {}).get(key)
            return self._store(route, copy.deepcopy(obj), old)

    def get(self, path: str) -> dict[str, Any] | None:
        route = _route(path)
        with self._cond:
            obj = self.objects.get(route.collection, {}).get((route.namespace, route.name or ""))
            return copy.deepcopy(obj)

    def all_objects(self, path: str) -> list[dict[str, Any]]:
        """Objects of a collection path (one namespace, or all when the path names none)."""
        route = _route(path)
        with self._cond:
            return [
                copy.deepcopy(o)
                for (ns, _), o in self.objects.get(route.collection, {}).items()
                if route.namespace in (None, ns)
            ]

    def delete(self, path: str) -> None:
        route = _route(path)
        with self._cond:
            obj = self.objects.get(route.collection, {}).pop((route.namespace, route.name or ""))
            self._emit_deleted(route.collection, obj)

    def writes(self, since: int = 0) -> list[Request]:
        return [r for r in self.requests[since:] if r.method in ("POST", "PUT", "PATCH", "DELETE")]

    # -- storage ---------------------------------------------------------------------------

    def _next_rv(self) -> str:
        self.rv = next(self._rv)
        return str(self.rv)

    def _emit_deleted(self, collection: str, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(collection, "DELETED", obj)

    def _emit(self, collection: str, kind: str, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, collection, kind, copy.deepcopy(obj)))
        self._cond.notify_all()

    def _store(
        self, route: _Route, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if route.namespace:
            meta["namespace"] = route.namespace
        if old is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            meta["generation"] = 1
        else:
            for kept in ("uid", "creationTimestamp"):
                meta[kept] = old["metadata"][kept]
            changed = obj.get("spec") != old.get("spec")
            meta["generation"] = old["metadata"].get("generation", 1) + (1 if changed else 0)
        meta["resourceVersion"] = self._next_rv()
        self.objects.setdefault(route.collection, {})[(route.namespace, meta["name"])] = obj
        self._emit(route.collection, "MODIFIED" if old else "ADDED", obj)
        return copy.deepcopy(obj)

    # -- HTTP ------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                server._dispatch(self, "GET")

            def do_POST(self) -> None:
                server._dispatch(self, "POST")

            def do_PUT(self) -> None:
                server._dispatch(self, "PUT")

            def do_PATCH(self) -> None:
                server._dispatch(self, "PATCH")

            def do_DELETE(self) -> None:
                server._dispatch(self, "DELETE")

        return Handler

    def _dispatch(self, h: BaseHTTPRequestHandler, method: str) -> None:
        if self.dark:
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        url = urlparse(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        body = json.loads(h.rfile.read(length)) if length else None
        ctype = h.headers.get("Content-Type", "")
        with self._cond:
            self.requests.append(Request(method, url.path, query, ctype, copy.deepcopy(body)))
            fault = self._take_fault(method, url.path)
        if fault is not None:
            body = _status(fault.status, fault.message, fault.reason)
            self._send(h, fault.status, body, fault.headers)
            return
        route = _route(url.path)
        if method == "GET" and query.get("watch") == "true":
            if self.watches_paused:
                self._send(h, 503, _status(503, "unavailable"), {"Retry-After": "1"})
            else:
                self._watch(h, route, query)
            return
        with self._cond:
            code, payload = self._handle(method, route, query, body, ctype)
        self._send(h, code, payload)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.method == method and fault.path_contains in path and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    def _handle(
        self, method: str, route: _Route, query: dict[str, str], body: Any, ctype: str
    ) -> tuple[int, dict[str, Any]]:
        objects = self.objects.setdefault(route.collection, {})
        key = (route.namespace, route.name or "")
        old = objects.get(key)
        if method == "GET" and route.name is None:
            return 200, self._list(route, query)
        if method == "GET":
            return (200, copy.deepcopy(old)) if old else (404, _status(404, "not found"))
        if method == "POST":
            key = (route.namespace, body["metadata"]["name"])
            if key in objects:
                return 409, _status(409, "already exists", "AlreadyExists")
            return 201, self._store(route, body, None)
        if method == "DELETE":
            if old is None:
                return 404, _status(404, "not found")
            del objects[key]
            self._emit_deleted(route.collection, old)
            return 200, _status(200, "deleted")
        if method == "PUT":
            return self._replace(route, old, body)
        return self._patch(route, old, body, ctype)

    def _list(self, route: _Route, query: dict[str, str]) -> dict[str, Any]:
        items = [
            o
            for (ns, _), o in sorted(
                self.objects.get(route.collection, {}).items(),
                key=lambda kv: (kv[0][0] or "", kv[0][1]),
            )
            if route.namespace in (None, ns)
            and _selects(query.get("labelSelector", ""), o["metadata"].get("labels") or {})
        ]
        start = int(query.get("continue") or 0)
        limit = int(query.get("limit") or len(items) or 1)
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return {"kind": "List", "apiVersion": "v1", "metadata": meta, "items": copy.deepcopy(page)}

    def _replace(
        self, route: _Route, old: dict[str, Any] | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if old is None:
            return 404, _status(404, "not found")
        if body["metadata"].get("resourceVersion") != old["metadata"]["resourceVersion"]:
            return 409, _status(409, "the object has been modified", "Conflict")
        if route.plural in STATUS_SUBRESOURCE:
            body = {**body, "status": old.get("status")}
        return 200, self._store(route, copy.deepcopy(body), old)

    def _patch(
        self, route: _Route, old: dict[str, Any] | None, body: dict[str, Any], ctype: str
    ) -> tuple[int, dict[str, Any]]:
        if ctype == "application/apply-patch+yaml":
            return self._server_side_apply(route, old, body)
        if old is None:
            return 404, _status(404, "not found")
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if want_rv and want_rv != old["metadata"]["resourceVersion"]:
            return 409, _status(409, "the object has been modified", "Conflict")
        if route.subresource == "status":
            obj = {**old, "status": merge_patch(old.get("status"), body.get("status"))}
        else:
            obj = merge_patch(old, body)
            if route.plural in STATUS_SUBRESOURCE:
                obj["status"] = old.get("status")
        return 200, self._store(route, obj, old)

    def _server_side_apply(
        self, route: _Route, old: dict[str, Any] | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if old is not None and want_rv and want_rv != old["metadata"]["resourceVersion"]:
            return 409, _status(409, "the object has been modified", "Conflict")
        if route.subresource == "status":
            if old is None:
                return 404, _status(404, "not found")
            # One field manager owns the whole status here: what it sends is the status.
            return 200, self._store(
                route, {**old, "status": copy.deepcopy(body.get("status"))}, old
            )
        obj = copy.deepcopy(body)
        if old is not None:
            obj["metadata"] = {**old["metadata"], **obj["metadata"]}
            if old.get("status") is not None:
                obj["status"] = old["status"]
        else:
            obj.pop("status", None)
        return (200 if old else 201), self._store(route, obj, old)

    def _watch(self, h: BaseHTTPRequestHandler, route: _Route, query: dict[str, str]) -> None:
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 300)
        selector = query.get("labelSelector", "")
        bookmarks = query.get("allowWatchBookmarks") == "true"
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        with self._cond:
            if since < self.compacted:
                gone = {
                    "kind": "Status",
                    "code": 410,
                    "reason": "Expired",
                    "message": f"too old resource version: {since}",
                }
                _chunk(h, {"type": "ERROR", "object": gone})
                _chunk_end(h)
                return
            seen_bookmarks = self._bookmarks
            while (
                not (self._stopping or self.watches_paused or self.dark)
                and time.monotonic() < deadline
            ):
                for rv, collection, kind, obj in self.history:
                    if (
                        rv > since
                        and collection == route.collection
                        and route.namespace in (None, obj["metadata"].get("namespace"))
                        and _selects(selector, obj["metadata"].get("labels") or {})
                    ):
                        if not _chunk(h, {"type": kind, "object": obj}):
                            return
                        since = rv
                if bookmarks and self._bookmarks != seen_bookmarks:
                    seen_bookmarks = self._bookmarks
                    since = max(since, self.rv)
                    mark = {"kind": "Bookmark", "metadata": {"resourceVersion": str(self.rv)}}
                    if not _chunk(h, {"type": "BOOKMARK", "object": mark}):
                        return
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        _chunk_end(h)

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler,
        code: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)


def _status(code: int, message: str, reason: str = "") -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure" if code >= 400 else "Success",
        "code": code,
        "reason": reason or message,
        "message": message,
    }


def _chunk(h: BaseHTTPRequestHandler, event: dict[str, Any]) -> bool:
    data = json.dumps(event).encode() + b"\n"
    try:
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()
        return True
    except OSError:
        return False


def _chunk_end(h: BaseHTTPRequestHandler) -> None:
    try:
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()
    except OSError:
        pass
