"""The Locust users, run by real Locust, against the FAKE streaming server
(`gdn_serve.loadtest.fake_sse`): the failures a real server does not produce on demand, the API
key, the SLO gate's exit codes and the open loop's rate. The real stack is in
`test_local_stack_load.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

from gdn_serve.loadtest.fake_sse import FakeOptions, FakeServer, Mode
from gdn_serve.loadtest.stats import SLO_MISSED_EXIT
from tests.loadtest.locust_run import run_locust

pytestmark = pytest.mark.timeout(300)


def test_a_clean_run_reports_every_metric(tmp_path: Path) -> None:
    opts = FakeOptions(api_key="k1", delay_s=0.002, reasoning_tokens=2)
    with FakeServer(opts) as fake:
        run = run_locust(
            fake.url, tmp_path, "--request-count", "40", "--warmup-requests", "4",
            "--chat-share", "0.5", "--output-tokens", "8", api_key="k1",
        )  # fmt: skip
    assert run.code == 0, run.output[-3000:]
    records = run.records()
    assert len(records) == 40  # the warm-up is not counted
    stats = run.stats()
    posts = sum(
        int(stats[("POST", p)]["Request Count"])
        for p in ("/v1/completions", "/v1/chat/completions")
    )
    assert posts == 40
    assert int(stats[("METRIC", "itl")]["Request Count"]) == 40 * 7  # one gap per chunk
    for name in ("ttft", "ttfc", "itl_mean", "tpot", "output_tokens_per_s", "prompt_tokens"):
        assert int(stats[("METRIC", name)]["Request Count"]) == 40
    for r in records:
        assert r["output_tokens"] == 8 and r["ttft_s"] <= r["e2e_s"]
        # chats think for two tokens first: their first content token comes later
        assert (r["ttfc_s"] > r["ttft_s"]) == (r["api"] == "chat")
    assert run.summary()["failures"] == 0
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert "| time to first token |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        (Mode.short, "7 output tokens, 8 asked"),
        (Mode.truncate, "truncated stream"),
        (Mode.empty, "empty completion"),
    ],
)
def test_bad_streams_are_failures(tmp_path: Path, mode: Mode, reason: str) -> None:
    with FakeServer(FakeOptions(mode=mode)) as fake:
        run = run_locust(fake.url, tmp_path, "--request-count", "6", "--output-tokens", "8",
                         "--model", "fake-model")  # fmt: skip
    assert run.code == 1, run.output[-3000:]  # Locust's exit code when requests failed
    failures = run.failures()
    assert sum(int(f["Occurrences"]) for f in failures) == 6
    assert all(reason in f["Error"] for f in failures), failures


def test_a_missing_api_key_is_an_http_failure(tmp_path: Path) -> None:
    with FakeServer(FakeOptions(api_key="right")) as fake:
        run = run_locust(fake.url, tmp_path, "--request-count", "3", "--model", "fake-model",
                         api_key="wrong")  # fmt: skip
    assert run.code == 1
    assert ["HTTP 401" in f["Error"] for f in run.failures()] == [True]


def test_slo_gate(tmp_path: Path) -> None:
    with FakeServer(FakeOptions(delay_s=0.001)) as fake:
        strict = run_locust(fake.url, tmp_path / "strict", "--request-count", "10",
                            "--slo-ttft-p95-ms", "0.001", "--slo-error-ratio", "0")  # fmt: skip
        lenient = run_locust(fake.url, tmp_path / "lenient", "--request-count", "10",
                             "--slo-ttft-p95-ms", "10000", "--slo-itl-p95-ms", "10000",
                             "--slo-error-ratio", "0", "--slo-goodput", "1")  # fmt: skip
    assert strict.code == SLO_MISSED_EXIT, strict.output[-2000:]
    assert "SLO missed: p95 TTFT (ms)" in strict.output
    assert "error ratio" not in strict.output.split("SLO missed")[-1]  # met, not named
    assert "SLO missed: p95 TTFT" in (tmp_path / "strict" / "summary.md").read_text()
    assert lenient.code == 0, lenient.output[-2000:]
    assert "SLO missed" not in lenient.output


@pytest.mark.parametrize("arrival", ["constant", "poisson"])
def test_open_loop_holds_its_rate(tmp_path: Path, arrival: str) -> None:
    """Arrivals do not wait for answers: with every answer taking 0.5 s, 40 requests at
    20/s still take about 2 s (a closed loop of 2 users would need 10 s)."""
    with FakeServer(FakeOptions(delay_s=0.05)) as fake:
        run = run_locust(fake.url, tmp_path, "--arrival", arrival, "--rate", "20",
                         "--request-count", "40", "--output-tokens", "10", users=1)  # fmt: skip
    assert run.code == 0, run.output[-2000:]
    records = run.records()
    starts = sorted(r["start"] for r in records)
    span = starts[-1] - starts[0]
    assert 39 / 20 * 0.5 < span < 39 / 20 * 2, span
    assert max(r["e2e_s"] for r in records) > 0.45
