"""What the load test sends, and when: pure.

Prompts are synthetic (seeded words, one Qwen token each, so `input_tokens` words are about
that many prompt tokens with Qwen's tokenizer, a token per character with the tiny model's byte
level one; the server's usage reports the exact count) or read from a JSONL file
(`{"prompt": "..."}` per line, the format `vllm bench serve --dataset-name custom` reads, so
both tools can run the same workload). Every request asks for exactly `output_tokens` tokens:
`min_tokens` = `max_tokens` with `ignore_eos`, so a shorter answer is a failure, not noise.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from gdn_serve.loadtest.stream import Api

# Common English words that Qwen's tokenizer keeps whole (with their leading space).
WORDS = (
    "the", "of", "and", "to", "in", "is", "was", "for", "on", "are", "with", "as", "his", "they",
    "be", "at", "one", "have", "this", "from", "or", "had", "by", "word", "but", "what", "some",
    "we", "can", "out", "other", "were", "all", "there", "when", "up", "use", "your", "how",
    "said", "an", "each", "she", "which", "do", "their", "time", "if", "will", "way", "about",
    "many", "then", "them", "write", "would", "like", "so", "these", "her", "long", "make",
    "thing", "see", "him", "two", "has", "look", "more", "day", "could", "go", "come", "did",
    "number", "sound", "no", "most", "people",
)  # fmt: skip


class Arrival(StrEnum):
    closed = "closed"  # fixed users, each sends its next request when the last one ends
    constant = "constant"  # open loop: one request every 1/rate s, whatever is in flight
    poisson = "poisson"  # open loop: exponential gaps with mean 1/rate


@dataclass(frozen=True)
class Request:
    api: Api
    body: dict[str, Any]
    output_tokens: int


def synthetic_prompts(count: int, input_tokens: int, seed: int) -> list[str]:
    if count < 1 or input_tokens < 1:
        raise ValueError("synthetic prompts need count >= 1 and input tokens >= 1")
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=input_tokens)) for _ in range(count)]


def parse_prompt_line(line: str, where: str) -> str:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg})") from None
    prompt = row.get("prompt") if isinstance(row, dict) else None
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f'{where}: needs a non-empty string "prompt"')
    return prompt


def file_prompts(path: Path) -> list[str]:
    """The prompts of a JSONL file; a clear error naming the line that is not one."""
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no prompts")
    return [parse_prompt_line(line, f"{path}:{n}") for n, line in lines]


def write_prompts(path: Path, prompts: list[str]) -> None:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))


def request_body(api: Api, model: str, prompt: str, output_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": output_tokens,
        "min_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if api is Api.chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def requests(
    prompts: list[str], model: str, output_tokens: int, chat_share: float, seed: int
) -> Iterator[Request]:
    """Endless requests cycling through `prompts`; each is a chat with probability
    `chat_share` (seeded), else a completion."""
    if not 0.0 <= chat_share <= 1.0:
        raise ValueError(f"chat share must be within [0, 1], got {chat_share}")
    if output_tokens < 1:
        raise ValueError(f"output tokens must be >= 1, got {output_tokens}")
    rng = random.Random(seed)
    for n in itertools.count():
        api = Api.chat if rng.random() < chat_share else Api.completions
        prompt = prompts[n % len(prompts)]
        yield Request(api, request_body(api, model, prompt, output_tokens), output_tokens)


def gaps(arrival: Arrival, rate: float, seed: int) -> Iterator[float]:
    """Seconds between consecutive arrivals of an open loop at `rate` requests/s."""
    if arrival is Arrival.closed:
        raise ValueError("a closed loop has no arrival gaps")
    if rate <= 0:
        raise ValueError(f"an open loop needs a rate > 0 requests/s, got {rate}")
    rng = random.Random(seed)
    while True:
        yield rng.expovariate(rate) if arrival is Arrival.poisson else 1.0 / rate
