"""One streamed OpenAI response, measured: pure, from the (time, `data:` payload) events a
client saw.

Timings follow `vllm bench serve`'s definitions so that the two can be compared: TTFT is the
first chunk that carries a token (reasoning or content), inter-token latency (ITL) the gaps
between token-carrying chunks, TPOT `(e2e - TTFT) / (output tokens - 1)`. Qwen3.5 models think
first, so the time to the first *content* token (what a user sees) is reported apart from TTFT.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import msgspec

DONE = "[DONE]"


class Api(StrEnum):
    chat = "chat"
    completions = "completions"

    @property
    def path(self) -> str:
        return "/v1/chat/completions" if self is Api.chat else "/v1/completions"


class StreamFailure(Exception):
    """A response that did not deliver what was asked; the message says how."""


# The client shares its CPU with whatever it measures: decode only the fields needed, in C.
class _Delta(msgspec.Struct):
    content: str | None = None
    reasoning: str | None = None
    reasoning_content: str | None = None  # the name before vLLM 0.11


class _Choice(msgspec.Struct):
    text: str | None = None  # completions
    delta: _Delta | None = None  # chat
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: dict[str, object] | str | None = None


_decode = msgspec.json.Decoder(_Chunk).decode


@dataclass(frozen=True)
class Token:
    """What one chunk carried."""

    at: float
    content: bool  # visible content, not reasoning


@dataclass(frozen=True)
class RequestResult:
    api: Api
    ttft_s: float
    ttfc_s: float  # time to first content token
    itl_s: tuple[float, ...]  # one gap per token-carrying chunk after the first
    e2e_s: float
    prompt_tokens: int
    output_tokens: int
    start: float  # the client's clock, for the timeline

    @property
    def tpot_s(self) -> float:
        return (
            (self.e2e_s - self.ttft_s) / (self.output_tokens - 1) if self.output_tokens > 1 else 0.0
        )

    @property
    def itl_mean_s(self) -> float:
        return sum(self.itl_s) / len(self.itl_s) if self.itl_s else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.e2e_s if self.e2e_s > 0 else 0.0


def chunk_tokens(at: float, payload: str) -> tuple[Token | None, _Usage | None]:
    """The token a chunk carried (None for a role-only, empty or usage chunk) and its usage."""
    try:
        chunk = _decode(payload)
    except msgspec.DecodeError as e:
        raise StreamFailure(f"broken stream: undecodable chunk {payload[:80]!r} ({e})") from None
    if chunk.error is not None:
        raise StreamFailure(f"error in stream: {chunk.error}")
    token = None
    for choice in chunk.choices:
        if choice.text is not None:
            # vLLM sends a completion chunk per token, with "" while a character's bytes are
            # incomplete: still a token (as `vllm bench serve` and the usage count it), not content
            token = Token(at, content=bool(choice.text)) if choice.text or token is None else token
        elif choice.delta is not None:
            d = choice.delta
            if d.content:
                token = Token(at, content=True)
            elif d.reasoning or d.reasoning_content:
                token = token or Token(at, content=False)
    return token, chunk.usage


def measure(
    api: Api, start: float, events: Sequence[tuple[float, str]], asked_tokens: int
) -> RequestResult:
    """The timings and token counts of one response; StreamFailure if it was truncated,
    broken, empty, carried an error, had no usage chunk, or not `asked_tokens` tokens."""
    tokens: list[Token] = []
    usage: _Usage | None = None
    done_at: float | None = None
    for at, payload in events:
        if payload == DONE:
            done_at = at
            break
        token, chunk_usage = chunk_tokens(at, payload)
        if token is not None:
            tokens.append(token)
        usage = chunk_usage or usage
    if done_at is None:
        raise StreamFailure(f"truncated stream: no [DONE] after {len(events)} events")
    if not tokens:
        raise StreamFailure("empty completion: no token streamed")
    if usage is None:
        raise StreamFailure("no usage chunk (the server ignored stream_options.include_usage)")
    if usage.completion_tokens != asked_tokens:
        raise StreamFailure(f"{usage.completion_tokens} output tokens, {asked_tokens} asked")
    first_content = next((t.at for t in tokens if t.content), done_at)
    return RequestResult(
        api=api,
        ttft_s=tokens[0].at - start,
        ttfc_s=first_content - start,
        itl_s=tuple(b.at - a.at for a, b in itertools.pairwise(tokens)),
        e2e_s=done_at - start,
        prompt_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        start=start,
    )


def sse_payload(line: str) -> str | None:
    """The payload of an SSE `data:` line; None for blank lines, comments and other fields."""
    if line.startswith("data:"):
        return line[5:].strip()
    return None
