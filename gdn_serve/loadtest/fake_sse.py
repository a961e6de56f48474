"""A FAKE OpenAI streaming server on loopback: no model, it streams as many one-token chunks
as asked, as fast as it can (or `delay_s` apart).

Not a server to test the stack against: it exists to measure the load generator itself (how
many streamed requests per second one Locust worker sustains, `python -m
gdn_serve.loadtest.generator_bench`) and to drive the Locust edge into the failures a real
server rarely produces on demand (`Mode`).
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gdn_serve.serve.loopback import LOOPBACK

MODEL = "fake-model"


class Mode(StrEnum):
    ok = "ok"
    short = "short"  # one token fewer than asked
    truncate = "truncate"  # the stream ends without [DONE]
    empty = "empty"  # no token at all


@dataclass(frozen=True)
class FakeOptions:
    mode: Mode = Mode.ok
    api_key: str = ""  # when set, a request without `Bearer <api_key>` gets a 401
    delay_s: float = 0.0  # between tokens
    reasoning_tokens: int = 0  # chat: this many reasoning deltas before the content


def chunk(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    event = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(event), event)


def token_payload(chat: bool, index: int, opts: FakeOptions) -> dict[str, Any]:
    if not chat:
        return {"choices": [{"index": 0, "text": f" t{index}"}]}
    field = "reasoning" if index < opts.reasoning_tokens else "content"
    return {"choices": [{"index": 0, "delta": {field: f" t{index}"}}]}


def response_events(body: dict[str, Any], opts: FakeOptions) -> list[bytes]:
    """The chunks of one streamed response to `body`."""
    chat = "messages" in body
    asked = int(body.get("max_tokens", 16))
    count = {Mode.short: asked - 1, Mode.empty: 0}.get(opts.mode, asked)
    events = [chunk({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})]
    events = events if chat else []
    events += [chunk(token_payload(chat, i, opts)) for i in range(count)]
    usage = {"prompt_tokens": len(json.dumps(body)) // 4, "completion_tokens": count}
    events.append(chunk({"choices": [], "usage": usage}))
    if opts.mode is not Mode.truncate:
        events.append(chunk("[DONE]"))
    return events


def plain(status: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload).encode()
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, opts: FakeOptions
) -> bool:
    """One request on a kept-alive connection; False when the connection is done."""
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    length = int(headers.get("content-length", "0"))
    raw = await reader.readexactly(length) if length else b""
    if opts.api_key and headers.get("authorization") != f"Bearer {opts.api_key}":
        writer.write(plain("401 Unauthorized", {"error": {"message": "bad API key"}}))
    elif lines[0].startswith("GET /v1/models"):
        writer.write(plain("200 OK", {"object": "list", "data": [{"id": MODEL}]}))
    else:
        writer.write(STREAM_HEAD)
        for event in response_events(json.loads(raw), opts):
            writer.write(event)
            if opts.delay_s:
                await writer.drain()
                await asyncio.sleep(opts.delay_s)
        if opts.mode is Mode.truncate:
            await writer.drain()
            return False
        writer.write(b"0\r\n\r\n")
    await writer.drain()
    return True


class FakeServer:
    """The fake on a free loopback port, in a thread of this process."""

    def __init__(self, opts: FakeOptions) -> None:
        self.opts = opts
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._connection, LOOPBACK, 0)
        )
        self.port = int(self.server.sockets[0].getsockname()[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    async def _connection(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while await _serve_one(reader, w, self.opts):
                pass
        finally:
            w.close()

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
