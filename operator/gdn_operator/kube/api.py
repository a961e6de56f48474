"""One generic client for every resource: get, list, watch, create, replace, apply, patch.

Built on the official client's `ApiClient` (authentication, TLS, kubeconfig handling), speaking
plain JSON dicts. Every failure becomes an `ApiError` carrying the HTTP status, the server's
message and its Retry-After, so callers decide on one type.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.utils.retry import retry_after_seconds
from kubernetes.watch.watch import iter_resp_lines

from gdn_operator.kube.resources import Resource

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
LIST_PAGE = 500


@dataclass(eq=False)  # stays hashable, as exceptions should
class ApiError(Exception):
    status: int  # 0: no HTTP answer (connection refused, timeout, TLS)
    reason: str
    message: str = ""
    retry_after_s: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}".strip(": ")

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def forbidden(self) -> bool:
        return self.status == 403

    @property
    def namespace_terminating(self) -> bool:
        """403 because the namespace is being deleted: nothing new may be created there.

        The API server says so in the message (NamespaceLifecycle admission: "unable to create
        new content in namespace X because it is being terminated") and, on newer servers, with
        the cause `NamespaceTerminating` in the details.
        """
        causes = self.details.get("causes") or []
        return self.forbidden and (
            "is being terminated" in self.message
            or any(c.get("reason") == "NamespaceTerminating" for c in causes)
        )

    @property
    def transient(self) -> bool:
        """Worth retrying unchanged: throttled, server trouble or no answer at all."""
        return self.status in (0, 429) or self.status >= 500


def _error(status: int, reason: str, data: bytes, headers: Mapping[str, str]) -> ApiError:
    try:
        body = json.loads(data or b"{}")
    except ValueError:
        body = {"message": data.decode("utf-8", "replace")[:500]}
    probe = client.ApiException(status=status)
    probe.headers = headers  # retry_after_seconds reads Retry-After from an exception's headers
    return ApiError(
        status=status,
        reason=str(body.get("reason") or reason or ""),
        message=str(body.get("message", "")),
        retry_after_s=retry_after_seconds(probe),
        details=body.get("details") or {},
    )


class WatchStream:
    """An open watch: iterate for event dicts; `close()` from another thread ends it."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in iter_resp_lines(self._response):
                yield json.loads(line)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "WatchInterrupted", str(exc)) from exc
        finally:
            self._response.release_conn()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the stream may have ended on its own meanwhile
            self._response.shutdown()


class KubeApi:
    def __init__(
        self,
        api_client: client.ApiClient,
        field_manager: str = "gdn-operator",
        timeout_s: tuple[float, float] = (5.0, 30.0),
    ) -> None:
        self.api_client = api_client
        self.field_manager = field_manager
        self.timeout_s = timeout_s

    def with_timeout(self, total_s: float) -> KubeApi:
        """The same client with every request bounded by `total_s` (connect and read each).

        The leader elector asks for this per call so that a request never outlives what is
        left of its renew deadline.
        """
        bound = max(0.05, total_s)
        clone = copy.copy(self)
        clone.timeout_s = (min(self.timeout_s[0], bound), min(self.timeout_s[1], bound))
        return clone

    # -- reads -----------------------------------------------------------------------------

    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self._request("GET", res.path(namespace, name))

    def list(
        self, res: Resource, namespace: str | None = None, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """All objects (paginated reads) and the list's resourceVersion, to watch from."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", str(LIST_PAGE)), *_selector(label_selector)]
            if token:
                query.append(("continue", token))
            page = self._request("GET", res.path(namespace), query)
            items.extend(page.get("items") or [])
            token = page.get("metadata", {}).get("continue", "")
            if not token:
                return items, str(page.get("metadata", {}).get("resourceVersion", ""))

    def watch(
        self,
        res: Resource,
        namespace: str | None,
        resource_version: str,
        label_selector: str | None = None,
        timeout_s: int = 300,
    ) -> WatchStream:
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_s)),
        ]
        query += _selector(label_selector)
        response = self._send(
            "GET", res.path(namespace), query, None, JSON, (self.timeout_s[0], timeout_s + 30)
        )
        if response.status != 200:
            raise _error(response.status, response.reason, response.read(), response.headers)
        return WatchStream(response.response)

    # -- writes ----------------------------------------------------------------------------

    def create(self, res: Resource, body: Mapping[str, Any]) -> dict[str, Any]:
        namespace = body["metadata"].get("namespace")
        return self._request("POST", res.path(namespace), body=body)

    def replace(self, res: Resource, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body["metadata"]
        return self._request("PUT", res.path(meta.get("namespace"), meta["name"]), body=body)

    def apply(self, res: Resource, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply as this operator's one field manager; it owns what it sends."""
        meta = body["metadata"]
        query = [("fieldManager", self.field_manager), ("force", "true")]
        return self._request(
            "PATCH", res.path(meta.get("namespace"), meta["name"]), query, body, APPLY_PATCH
        )

    def apply_status(self, res: Resource, body: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply of `body["status"]` on the status subresource.

        No resourceVersion: the field manager owns the status fields it sends, so two writers
        (or a stale cache) never meet in a 409 and nothing needs a read-modify-write loop.
        """
        meta = body["metadata"]
        query = [("fieldManager", self.field_manager), ("force", "true")]
        path = res.path(meta.get("namespace"), meta["name"], "status")
        return self._request("PATCH", path, query, body, APPLY_PATCH)

    def patch(
        self,
        res: Resource,
        name: str,
        namespace: str | None,
        patch: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """JSON merge patch; with metadata.resourceVersion in `patch` it fails on conflict."""
        query = [("fieldManager", self.field_manager)]
        return self._request(
            "PATCH", res.path(namespace, name, subresource), query, patch, MERGE_PATCH
        )

    # -- transport -------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        body: Mapping[str, Any] | None = None,
        content_type: str = JSON,
    ) -> dict[str, Any]:
        response = self._send(method, path, query, body, content_type, self.timeout_s)
        data = response.read()
        if not 200 <= response.status < 300:
            raise _error(response.status, response.reason, data, response.headers)
        return json.loads(data) if data else {}

    def _send(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        body: Mapping[str, Any] | None,
        content_type: str,
        timeout: tuple[float, float],
    ) -> Any:
        headers = {"Accept": JSON, "Content-Type": content_type}
        serialized = self.api_client.param_serialize(
            method,
            path,
            query_params=list(query),
            header_params=headers,
            body=dict(body) if body is not None else None,
            auth_settings=["BearerToken"],
        )
        method, url, headers, payload, _ = serialized
        try:
            return self.api_client.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=timeout
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "ConnectionFailed", str(exc)) from exc
        except client.ApiException as exc:  # TLS errors surface as status 0
            raise ApiError(int(exc.status or 0), str(exc.reason or "ApiException")) from exc


def _selector(label_selector: str | None) -> list[tuple[str, str]]:
    return [("labelSelector", label_selector)] if label_selector else []
