"""Checks on a request body that vLLM's own validation lets through, and the middleware that
applies them before the app sees the request.

vLLM parses requests with pydantic in lax mode and accepts custom chat roles, so
`"stream": "yes"` streams and `"role": "wizard"` is sent to the chat template; the OpenAI API
rejects both. A body over `GDN_SERVE_MAX_REQUEST_BYTES` is refused with a 413 before it is read
in full, one that is not JSON (or nested beyond what a parser can recurse into) with a 400. The
checks are pure functions of the bytes; `RequestChecksMiddleware` is the I/O around them.
`validation_error` answers what FastAPI's own validation refuses on the ingress app.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.requests import Request
from starlette.responses import Response

from gdn_serve import envs
from gdn_serve.serve.asgi import (
    ASGIApp,
    Message,
    Receive,
    Refusal,
    Scope,
    Send,
    error_body,
    header,
    refuse,
)

# OpenAI's chat roles ("function" is deprecated but still accepted by OpenAI and vLLM).
CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Fields that are booleans in every OpenAI request that has them; pydantic's lax mode would
# read "yes", "1" or 1 as true.
STRICT_BOOLS = ("stream", "echo")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def max_request_bytes() -> int:
    limit = envs.nonnegative_int(envs.MAX_REQUEST_BYTES)
    if limit == 0:
        raise ValueError(f"{envs.MAX_REQUEST_BYTES.name} must be a positive number of bytes")
    return limit


def too_large(limit: int) -> Refusal:
    return Refusal(413, f"request body larger than {limit} bytes")


def length_refusal(content_length: str | None, limit: int) -> Refusal | None:
    """A 413 for a declared length over `limit`, a 400 for one that is not a length."""
    if content_length is None:
        return None
    if not content_length.strip().isdigit():
        return Refusal(400, f"invalid Content-Length {content_length[:40]!r}")
    return too_large(limit) if int(content_length) > limit else None


def is_json(content_type: str | None) -> bool:
    """FastAPI reads a body without a content type as JSON, as it does application/json."""
    media = (content_type or "application/json").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> tuple[Any, Refusal | None]:
    """The body's value, or a 400 for bytes that are not standard JSON: UTF-8 only (RFC 8259;
    Python would also read UTF-16 and -32), no NaN or Infinity (Python's extension), nothing
    nested deeper than the parsers behind us can recurse into."""
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant), None
    except RecursionError:
        return None, Refusal(400, "request body is nested too deeply")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError among them
        return None, Refusal(400, f"request body is not valid JSON: {exc}"[:300])


def field_refusal(request: Any) -> Refusal | None:
    """A 400 for a strict boolean given as another type, or a chat message that is not an
    object with a known role."""
    if not isinstance(request, dict):
        return None  # not an object: the app's own validation answers it
    for name in STRICT_BOOLS:
        value = request.get(name)
        if value is not None and not isinstance(value, bool):
            return Refusal(400, f"'{name}' must be a boolean, got {value!r:.40}", param=name)
    messages = request.get("messages")
    for index, message in enumerate(messages if isinstance(messages, list) else ()):
        refusal = _message_refusal(index, message)
        if refusal is not None:
            return refusal
    return None


def _message_refusal(index: int, message: Any) -> Refusal | None:
    """A chat message must be an object with one of OpenAI's roles. vLLM's chat parser reads
    `message["role"]` as it is: a message without one (seen: `{"author": {...}}`) was a 500."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        return Refusal(400, f"{where} must be an object, got {message!r:.40}", param=where)
    role = message.get("role")
    if role not in CHAT_ROLES:  # missing, not a string, or not one of OpenAI's
        allowed = ", ".join(sorted(CHAT_ROLES))
        text = f"{where}.role {role!r:.40} is not one of {allowed}"
        return Refusal(400, text, param=f"{where}.role")
    return None


def body_refusal(content_type: str | None, body: bytes) -> Refusal | None:
    """Every check on a whole body; None lets the request through."""
    if not body or not is_json(content_type):
        return None
    request, refusal = parse_json(body)
    return refusal or field_refusal(request)


async def read_body(receive: Receive, limit: int) -> tuple[bytes, list[Message]] | None:
    """The body and the messages that carried it; None as soon as it passes `limit` bytes."""
    messages: list[Message] = []
    size, more = 0, True
    while more:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # the client went away; the app will see the disconnect
        size += len(message.get("body", b""))
        if size > limit:
            return None
        more = message.get("more_body", False)
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    return body, messages


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A `receive` that hands the app the messages already read, then the live ones (the
    disconnect a streaming response waits for)."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


class RequestChecksMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes or max_request_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        refusal = length_refusal(header(scope, b"content-length"), self.max_bytes)
        read = None if refusal else await read_body(receive, self.max_bytes)
        if read is None:
            await refuse(scope, send, refusal or too_large(self.max_bytes))
            return
        body, messages = read
        refusal = body_refusal(header(scope, b"content-type"), body)
        if refusal is not None:
            await refuse(scope, send, refusal)
            return
        await self.app(scope, replay(messages, receive), send)


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """pydantic's errors as one line: where and what, never the input (which may be bytes)."""
    parts = [".".join(str(p) for p in e.get("loc", ())) + f": {e.get('msg', '')}" for e in errors]
    return "; ".join(parts)[:1000] or "invalid request"


async def validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's RequestValidationError as an OpenAI 400. Takes the place of Ray Serve LLM's
    handler, which json-dumps pydantic's errors as they are: an error that carries the raw body
    (bytes, as for any body sent without a JSON content type) fails to encode and becomes a
    500."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    body = error_body(Refusal(400, validation_message(errors)))
    return Response(body, status_code=400, media_type="application/json")
