"""Summary, percentiles, SLO verdicts and the timeline of a run: pure."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gdn_serve.loadtest.stats import Slo, percentile, summarize, table, timeline, verdict
from gdn_serve.loadtest.stream import Api, RequestResult


def result(start: float, ttft: float, itl: tuple[float, ...], tokens: int = 4) -> RequestResult:
    e2e = ttft + sum(itl)
    return RequestResult(Api.completions, ttft, ttft, itl, e2e, 10, tokens, start)


@pytest.mark.parametrize("q", [0, 1, 50, 90, 95, 99, 100])
def test_percentile_is_numpys_linear_interpolation(q: float) -> None:
    values = [0.3, 0.01, 5.0, 2.2, 2.2, 0.7, 9.1]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 50))


def test_summary_counts_and_goodput() -> None:
    fast = [result(i, 0.010, (0.002, 0.002, 0.002)) for i in range(8)]
    slow = [result(8, 0.500, (0.002, 0.002, 0.002)), result(9, 0.010, (0.002, 0.2, 0.002))]
    slo = Slo(ttft_p95_ms=100, itl_p95_ms=50)
    s = summarize(fast + slow, failures=2, duration_s=10.0, slo=slo)
    assert (s.requests, s.failures, s.good) == (12, 2, 8)
    assert s.goodput == pytest.approx(8 / 12)
    assert s.error_ratio == pytest.approx(2 / 12)
    assert s.output_tokens_per_s == pytest.approx(40 / 10)
    assert s.ms["itl"][50] == pytest.approx(2.0)
    assert "| time to first token |" in table(s)


def test_verdict_names_each_missed_slo_and_passes_lenient_ones() -> None:
    results = [result(i, 0.020 * (i + 1), (0.005, 0.010)) for i in range(10)]
    s = summarize(results, failures=1, duration_s=5.0, slo=Slo(ttft_p95_ms=100))
    strict = Slo(ttft_p95_ms=50, itl_p95_ms=1, error_ratio=0.0, goodput=0.99)
    missed = [m.slo for m in verdict(s, strict)]
    assert missed == ["p95 TTFT (ms)", "p95 ITL (ms)", "error ratio", "goodput"]
    assert "SLO missed: p95 TTFT (ms)" in str(verdict(s, strict)[0])
    lenient = Slo(ttft_p95_ms=1000, itl_p95_ms=100, error_ratio=0.2, goodput=0.0)
    assert verdict(s, lenient) == []
    assert verdict(s, Slo()) == []


def test_a_run_without_success_misses_latency_slos() -> None:
    s = summarize([], failures=3, duration_s=1.0, slo=Slo())
    assert [m.slo for m in verdict(s, Slo(ttft_p95_ms=1e9))] == ["p95 TTFT (ms)"]


def test_timeline_buckets_by_end_time() -> None:
    results = [result(0.0, 0.1, (0.1,)), result(0.5, 0.1, (0.1,)), result(2.5, 0.1, (0.1,))]
    buckets = timeline(results, bucket_s=1.0)
    assert [b.completed for b in buckets] == [2, 0, 1]
    assert [b.output_tokens for b in buckets] == [8, 0, 4]
    assert buckets[0].ttft_ms[50] == pytest.approx(100)
    assert math.isnan(buckets[1].ttft_ms[50])
