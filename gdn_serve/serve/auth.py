"""API key check for the OpenAI ingress (the key comes from a Kubernetes Secret as an env var).

Ray Serve LLM has no API key support, so the ingress app gets this ASGI middleware: every
`/v1/...` request must carry `Authorization: Bearer <key>`; others get an OpenAI-style 401. The
key is read from the environment of the process that serves the request (the ingress replica's
pod), at request time, so the Secret never passes through the application's config. A replica
whose environment lacks the key refuses every request rather than serving openly.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def check(authorization: str | None, expected: str | None) -> tuple[int, str] | None:
    """None when the request may pass, else (status, message). Pure."""
    if not expected:
        return 500, "the server's API key is not configured; refusing to serve without it"
    scheme, _, token = (authorization or "").partition(" ")
    # bytes: compare_digest refuses str with non-ASCII characters, which a header can carry
    given, wanted = token.strip().encode(), expected.encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, wanted):
        return 401, "missing or invalid API key (expected 'Authorization: Bearer <key>')"
    return None


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, env_var: str) -> None:
        self.app, self.env_var = app, env_var

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = check(headers.get("authorization"), os.environ.get(self.env_var))
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, message = refusal
        kind = "authentication_error" if status == 401 else "server_error"
        body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
