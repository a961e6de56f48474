"""Prompts, request bodies and arrival gaps: pure, seeded."""

from __future__ import annotations

import statistics
from itertools import islice
from pathlib import Path

import pytest

from gdn_serve.loadtest import workload
from gdn_serve.loadtest.stream import Api
from gdn_serve.loadtest.workload import Arrival


def test_synthetic_prompts_are_seeded_and_sized() -> None:
    a = workload.synthetic_prompts(5, 32, seed=1)
    assert a == workload.synthetic_prompts(5, 32, seed=1)
    assert a != workload.synthetic_prompts(5, 32, seed=2)
    assert all(len(p.split()) == 32 for p in a)


def test_prompt_file_round_trip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    workload.write_prompts(path, ["one", "two"])
    assert workload.file_prompts(path) == ["one", "two"]
    path.write_text('{"prompt": "ok"}\n{"text": "no"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: needs a non-empty string \"prompt\""):
        workload.file_prompts(path)
    path.write_text("{oops\n")
    with pytest.raises(ValueError, match=r"p\.jsonl:1: not JSON"):
        workload.file_prompts(path)


def test_requests_ask_exact_lengths_and_mix_apis() -> None:
    reqs = list(islice(workload.requests(["p"], "m", 12, chat_share=0.3, seed=0), 1000))
    chats = [r for r in reqs if r.api is Api.chat]
    assert 250 < len(chats) < 350
    for r in reqs[:20]:
        body = r.body
        assert body["max_tokens"] == body["min_tokens"] == r.output_tokens == 12
        assert body["ignore_eos"] and body["stream"] and body["stream_options"]["include_usage"]
        assert ("messages" in body) == (r.api is Api.chat)
        assert ("prompt" in body) == (r.api is Api.completions)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_chat_share_is_checked(bad: float) -> None:
    with pytest.raises(ValueError, match="chat share"):
        next(workload.requests(["p"], "m", 4, bad, 0))


def test_arrival_gaps() -> None:
    assert list(islice(workload.gaps(Arrival.constant, 4.0, 0), 3)) == [0.25] * 3
    poisson = list(islice(workload.gaps(Arrival.poisson, 10.0, 0), 20000))
    assert statistics.mean(poisson) == pytest.approx(0.1, rel=0.03)
    assert statistics.stdev(poisson) == pytest.approx(0.1, rel=0.05)  # exponential: sd = mean
    with pytest.raises(ValueError, match="rate > 0"):
        next(workload.gaps(Arrival.poisson, 0.0, 0))
