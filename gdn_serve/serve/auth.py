"""API key check for the OpenAI API (the key comes from a Kubernetes Secret as an env var).

Ray Serve LLM has no API key support, so the API's ASGI app gets this middleware: every route
but the health probes in `OPEN_PATHS` (API, docs, schema, metrics, WebSockets alike) needs
`Authorization: Bearer <key>`; others get an OpenAI-style 401. The key is read from the
environment of the process that serves the request (the replica's pod), at request time, so the
Secret never passes through the application's config. A replica whose environment lacks the key
refuses every request rather than serving openly.
"""

from __future__ import annotations

import hmac
import os

from gdn_serve import envs
from gdn_serve.serve.asgi import ASGIApp, Receive, Refusal, Scope, Send, header, refuse

# Exact paths, open so that Kubernetes probes and load balancers need no key. Ray Serve's own
# `/-/healthz` and `/-/routes` are answered by its proxy and never reach this app.
OPEN_PATHS = frozenset({"/health", "/ping"})


def check(authorization: str | None, expected: str | None) -> Refusal | None:
    """None when the request may pass, else the refusal. Pure.

    Both keys are stripped: a Secret written with `echo` or from a file ends in a newline, and
    clients strip the token they send."""
    wanted = (expected or "").strip()
    if not wanted:
        message = "the server's API key is not configured; refusing to serve without it"
        return Refusal(500, message, "server_error")
    scheme, _, token = (authorization or "").strip().partition(" ")
    # bytes: compare_digest refuses str with non-ASCII characters, which a header can carry
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), wanted.encode()
    ):
        message = "missing or invalid API key (expected 'Authorization: Bearer <key>')"
        return Refusal(401, message, "authentication_error")
    return None


def needs_key(scope: Scope) -> bool:
    if scope["type"] == "http" and scope["method"] == "OPTIONS":
        return False  # CORS preflight: browsers send it without credentials; it reads nothing
    return scope["type"] in ("http", "websocket") and scope["path"] not in OPEN_PATHS


class ApiKeyMiddleware:
    """`env_var` names the variable holding the key; the default is what vLLM's `middleware`
    option can use (it constructs the class with the app alone)."""

    def __init__(self, app: ASGIApp, env_var: str = envs.API_KEY.name) -> None:
        self.app, self.env_var = app, env_var

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if needs_key(scope):
            refusal = check(header(scope, b"authorization"), os.environ.get(self.env_var))
            if refusal is not None:
                await refuse(scope, send, refusal)
                return
        await self.app(scope, receive, send)
