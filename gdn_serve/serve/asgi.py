"""The little of ASGI that our middlewares share: the call types and an OpenAI-style error
response sent without the app behind them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Refusal(NamedTuple):
    """Why a request is answered by a middleware instead of the app."""

    status: int
    message: str
    kind: str = "invalid_request_error"  # the OpenAI error `type`
    param: str | None = None


def error_body(refusal: Refusal) -> bytes:
    """The body OpenAI's API (and vLLM's server) send with an error."""
    error = {
        "message": refusal.message,
        "type": refusal.kind,
        "param": refusal.param,
        "code": refusal.status,
    }
    return json.dumps({"error": error}).encode()


def header(scope: Scope, name: bytes) -> str | None:
    """One request header, decoded as latin-1 (any byte may arrive); None when absent."""
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def refuse(scope: Scope, send: Send, refusal: Refusal) -> None:
    """Answer `refusal` as JSON; a WebSocket handshake is closed instead (ASGI's way to deny
    one: the server answers 403 before any upgrade)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = error_body(refusal)
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
