"""OpenAI traffic for the local stack (official `openai` client), so that every serving and kernel
panel has something to show: completions and streaming chats of varied lengths."""

from __future__ import annotations

import threading

import openai

MODEL = "tiny-qwen35"


def one_round(client: openai.OpenAI, model: str, i: int) -> int:
    """A completion and a streaming chat; the output tokens they produced."""
    out = client.completions.create(
        model=model, prompt=f"request {i}: the quick brown fox", max_tokens=16 + 8 * (i % 5)
    )
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Tell me about {i}."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [c.usage for c in stream if c.usage is not None]
    return (out.usage.completion_tokens if out.usage else 0) + sum(
        u.completion_tokens for u in usage
    )


def mixed(client: openai.OpenAI, model: str, worker: int, stop: threading.Event) -> None:
    """Rounds until `stop` is set."""
    i = worker
    while not stop.is_set():
        one_round(client, model, i)
        i += 1
