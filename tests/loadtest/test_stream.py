"""One streamed response measured from its events: timings, content vs reasoning, failures."""

from __future__ import annotations

import json

import pytest

from gdn_serve.loadtest.stream import (
    DONE,
    Api,
    StreamFailure,
    chunk_tokens,
    measure,
    sse_payload,
)


def text(t: float, s: str) -> tuple[float, str]:
    return t, json.dumps({"choices": [{"index": 0, "text": s}]})


def delta(t: float, **fields: str) -> tuple[float, str]:
    return t, json.dumps({"choices": [{"index": 0, "delta": fields}]})


def usage(t: float, prompt: int, completion: int) -> tuple[float, str]:
    payload = {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    return t, json.dumps(payload)


def test_completion_timings_follow_vllm_bench_definitions() -> None:
    events = [text(1.0, "a"), text(1.25, "b"), text(2.0, "c"), usage(2.1, 7, 3), (2.2, DONE)]
    r = measure(Api.completions, 0.5, events, asked_tokens=3)
    assert r.ttft_s == pytest.approx(0.5)
    assert r.ttfc_s == pytest.approx(0.5)
    assert r.itl_s == pytest.approx((0.25, 0.75))
    assert r.itl_mean_s == pytest.approx(0.5)
    assert r.e2e_s == pytest.approx(1.7)
    assert r.tpot_s == pytest.approx((1.7 - 0.5) / 2)
    assert (r.prompt_tokens, r.output_tokens) == (7, 3)
    assert r.output_tokens_per_s == pytest.approx(3 / 1.7)


def test_an_empty_completion_chunk_is_a_token_but_not_content() -> None:
    """A byte-level token that completes no character streams as "" (vLLM 0.32)."""
    events = [text(0.2, ""), text(0.3, "é"), usage(0.4, 2, 2), (0.4, DONE)]
    r = measure(Api.completions, 0.0, events, asked_tokens=2)
    assert r.ttft_s == pytest.approx(0.2) and r.ttfc_s == pytest.approx(0.3)
    assert r.itl_s == pytest.approx((0.1,))


def test_reasoning_is_a_token_but_not_content() -> None:
    events = [
        delta(0.1, role="assistant", content=""),  # the role chunk carries no token
        delta(0.3, reasoning="think"),
        delta(0.4, reasoning_content="more"),
        delta(0.9, content="answer"),
        usage(1.0, 5, 3),
        (1.0, DONE),
    ]
    r = measure(Api.chat, 0.0, events, asked_tokens=3)
    assert r.ttft_s == pytest.approx(0.3)
    assert r.ttfc_s == pytest.approx(0.9)
    assert r.itl_s == pytest.approx((0.1, 0.5))


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([text(1, "a"), usage(1, 1, 1)], "truncated stream"),
        ([usage(1, 1, 0), (1, DONE)], "empty completion"),
        ([text(1, "a"), (1, DONE)], "no usage chunk"),
        ([text(1, "a"), usage(1, 1, 1), (1, DONE)], "1 output tokens, 2 asked"),
        ([text(1, "a"), (1, "{not json"), (1, DONE)], "broken stream"),
        ([(1, json.dumps({"error": {"message": "boom", "code": 400}}))], "error in stream"),
    ],
)
def test_failures_say_what_went_wrong(events: list[tuple[float, str]], reason: str) -> None:
    with pytest.raises(StreamFailure, match=reason):
        measure(Api.completions, 0.0, events, asked_tokens=2)


def test_usage_chunk_has_no_token() -> None:
    token, counted = chunk_tokens(1.0, usage(1.0, 4, 2)[1])
    assert token is None and counted is not None and counted.completion_tokens == 2


def test_sse_lines() -> None:
    assert sse_payload('data: {"a": 1}\n') == '{"a": 1}'
    assert sse_payload("data:[DONE]\r\n") == DONE
    assert sse_payload(": keep-alive\n") is None
    assert sse_payload("\n") is None
