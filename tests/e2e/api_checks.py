"""Malformed requests for the end-to-end API checks, and a bounded schemathesis run.

Each corpus case is one request a careless or hostile client might send; every one must get a
4xx with an OpenAI-style JSON error (`{"error": {"message": ...}}`), never a 5xx, and the
server must still serve afterwards. `expect` pins the status where our own checks
(gdn_serve/serve/request_checks.py) answer it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from openai.types.chat import ChatCompletionMessageParam

MODEL = "tiny-qwen35"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    expect: int | None = None  # the exact status, where our checks decide it


def chat(name: str, expect: int | None = None, **fields: Any) -> Case:
    body = {"model": MODEL, "messages": USER, "max_tokens": 2, **fields}
    return Case(name, CHAT, json.dumps(body).encode(), expect=expect)


def completion(name: str, expect: int | None = None, **fields: Any) -> Case:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **fields}
    return Case(name, COMPLETIONS, json.dumps(body).encode(), expect=expect)


def raw(
    name: str, body: bytes, expect: int | None = None, content_type: str = "application/json"
) -> Case:
    return Case(name, CHAT, body, {"content-type": content_type}, expect)


def corpus(max_model_len: int, max_bytes: int) -> list[Case]:
    deep = b'{"model": "m", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    return [
        # what vLLM lets through; our checks answer
        chat("unknown role", 400, messages=[{"role": "wizard", "content": "hi"}]),
        chat("stream as a string", 400, stream="yes"),
        chat("stream as a number", 400, stream=1),
        completion("echo as a string", 400, echo="yes"),
        # types
        chat("model as a number", model=5),
        chat("messages as a string", messages="hi"),
        chat("message as a number", messages=[1, 2]),
        chat("role as a number", messages=[{"role": 5, "content": "hi"}]),
        chat("message without a role", 400, messages=[{"content": "hi"}]),
        # vLLM reads this as an openai-harmony message and fails in the chat template (a 500
        # schemathesis found)
        chat("harmony-shaped message", 400, messages=[{"author": {"role": "user"}}]),
        chat("content as a number", messages=[{"role": "user", "content": 5}]),
        chat("max_tokens as words", max_tokens="ten"),
        chat("max_tokens as a fraction", max_tokens=1.5),
        chat("temperature as words", temperature="hot"),
        chat("n as a list", n=[1]),
        chat("stop as a number", stop=5),
        chat("tools as a string", tools="all"),
        chat("response_format of no type", response_format={"type": "bogus"}),
        chat("logit_bias with a word key", logit_bias={"abc": 1}),
        completion("prompt as an object", prompt={"text": "hi"}),
        completion("logprobs as words", logprobs="many"),
        # ranges
        chat("max_tokens negative", max_tokens=-1),
        chat("max_tokens past 64 bits", max_tokens=10**30),
        chat("temperature negative", temperature=-1),
        chat("top_p above 1", top_p=2),
        chat("n zero", n=0),
        chat("top_logprobs too many", logprobs=True, top_logprobs=10_000),
        chat("seed past 64 bits", seed=2**70),
        chat("frequency_penalty below -2", frequency_penalty=-3),
        completion("logprobs negative", logprobs=-1),
        completion("max_tokens past the context", max_tokens=max_model_len * 100),
        # lengths
        completion("prompt past the context", prompt="x" * (max_model_len + 50)),
        chat("no messages", messages=[]),
        chat("model name of 10k characters", model="m" * 10_000),
        completion("prompt token ids past the vocabulary", prompt=[10**9]),
        # nesting
        chat("content nested 50 deep", messages=[{"role": "user", "content": [[[[[[]]]]]] * 3}]),
        chat("messages nested in a list", messages=[USER]),
        raw("array nested 50000 deep", deep, 400),
        # encodings
        raw("body not UTF-8", b'{"model": "\xff\xfe", "messages": []}', 400),
        raw("body in UTF-16", json.dumps({"model": MODEL, "messages": USER}).encode("utf-16"), 400),
        raw("NaN temperature", b'{"model": "m", "messages": [], "temperature": NaN}', 400),
        raw("truncated JSON", b'{"model": "tiny-qwen35", "mess', 400),
        raw("not JSON at all", b"model=tiny-qwen35", 400),
        raw("JSON as text/plain", json.dumps({"model": MODEL}).encode(), None, "text/plain"),
        # sizes
        raw("body over the limit", b'{"prompt": "' + b"x" * max_bytes + b'"}', 413),
    ]


def send(client: httpx.Client, case: Case) -> httpx.Response:
    return client.post(case.path, content=case.body, headers=case.headers)


def problem(case: Case, response: httpx.Response) -> str | None:
    """What is wrong with the answer to a malformed request, or None."""
    status = response.status_code
    if case.expect is not None and status != case.expect:
        return f"{case.name}: {status}, expected {case.expect}: {response.text[:200]}"
    if not 400 <= status < 500:
        return f"{case.name}: {status}: {response.text[:200]}"
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"{case.name}: {status} without an OpenAI error body: {response.text[:200]}"
    return None if isinstance(message, str) and message else f"{case.name}: empty message"


# vLLM registers its structured decisions route for every model and answers it with 501 ("The
# model does not support the structured decision API") when the model has no reader for it, as
# the tiny model has none: not implemented by design, so exactly that is allowed.
BY_DESIGN_501 = {("POST", "/v1/systemone")}


def schemathesis_5xx(
    base_url: str, headers: dict[str, str], max_examples: int, timeout_s: float
) -> tuple[int, list[str]]:
    """Every operation of the schema the server serves at /openapi.json, `max_examples`
    schema-following and as many schema-breaking requests each; the number of requests sent,
    and one line per answer of 500 or more (but `BY_DESIGN_501`)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.core.result import Ok

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", headers=headers)
    sent, found = 0, []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the served schema has an invalid operation: {result}"
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # no shrinking: report, don't search
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal sent
                sent += 1
                response = case.call(base_url=base_url, headers=headers, timeout=timeout_s)
                by_design = (case.method, case.formatted_path) in BY_DESIGN_501
                if response.status_code >= 500 and not (by_design and response.status_code == 501):
                    found.append(
                        f"{case.method} {case.formatted_path} {response.status_code}: "
                        f"{response.text[:160]} <- {case.body!r:.160}"
                    )

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label
                continue  # nothing to break: an operation without parameters or body
    return sent, found
