"""bench-stack reads its numbers from the load test's summary.json, as the report writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gdn_serve.bench.stack import level_result
from gdn_serve.loadtest import report
from gdn_serve.loadtest.stats import Slo, summarize
from gdn_serve.loadtest.stream import Api, RequestResult


def test_level_result_reads_the_written_summary(tmp_path: Path) -> None:
    results = [
        RequestResult(Api.completions, 0.01 * (i + 1), 0.01, (0.002, 0.004), 0.1, 8, 3, float(i))
        for i in range(10)
    ]
    summary = summarize(results, failures=0, duration_s=2.0, slo=Slo())
    report.write(tmp_path, results, summary, [])
    level = level_result("stack", 4, json.loads((tmp_path / "summary.json").read_text()))
    assert (level.requests, level.output_tokens, level.wall_s) == (10, 30, 2.0)
    assert level.tokens_per_s == pytest.approx(15.0)
    assert level.ttft_ms["p50"] == pytest.approx(55.0)
    assert level.itl_ms["p50"] == pytest.approx(3.0)
    assert level.itl_ms["p99"] == pytest.approx(summary.ms["itl"][99])
