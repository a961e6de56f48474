"""A run's results summarised and judged against its SLOs: pure.

Percentiles interpolate linearly between order statistics (numpy's default, what `vllm bench
serve` reports), so the two tools' p50/p95 of one sample are the same number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gdn_serve.loadtest.stream import RequestResult

QUANTILES = (50, 90, 95, 99)
SLO_MISSED_EXIT = 3  # the run's exit code (Locust's own: 1 when requests failed)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Slo:
    """Limits a run must meet; None: not checked."""

    ttft_p95_ms: float | None = None
    itl_p95_ms: float | None = None
    error_ratio: float | None = None  # failed / all requests, at most
    goodput: float | None = None  # share of all requests meeting every latency SLO, at least

    def request_is_good(self, r: RequestResult) -> bool:
        """One request within the latency SLOs: TTFT and its own p95 ITL under the limits."""
        if self.ttft_p95_ms is not None and 1000 * r.ttft_s > self.ttft_p95_ms:
            return False
        return self.itl_p95_ms is None or 1000 * percentile(r.itl_s, 95) <= self.itl_p95_ms


@dataclass(frozen=True)
class Summary:
    requests: int
    failures: int
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    good: int  # successful requests within the latency SLOs
    ms: dict[str, dict[int, float]]  # metric -> quantile -> milliseconds

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @property
    def goodput(self) -> float:
        return self.good / self.requests if self.requests else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return (self.requests - self.failures) / self.duration_s if self.duration_s > 0 else 0.0


def metric_samples(results: Sequence[RequestResult]) -> dict[str, list[float]]:
    """Each reported latency, in seconds: one value per request, ITL one per chunk gap."""
    return {
        "ttft": [r.ttft_s for r in results],
        "ttfc": [r.ttfc_s for r in results],
        "itl": [gap for r in results for gap in r.itl_s],
        "itl_mean": [r.itl_mean_s for r in results],
        "tpot": [r.tpot_s for r in results],
        "e2e": [r.e2e_s for r in results],
    }


def summarize(
    results: Sequence[RequestResult], failures: int, duration_s: float, slo: Slo
) -> Summary:
    return Summary(
        requests=len(results) + failures,
        failures=failures,
        duration_s=duration_s,
        prompt_tokens=sum(r.prompt_tokens for r in results),
        output_tokens=sum(r.output_tokens for r in results),
        good=sum(slo.request_is_good(r) for r in results),
        ms={
            name: {q: 1000 * percentile(values, q) for q in QUANTILES}
            for name, values in metric_samples(results).items()
        },
    )


@dataclass(frozen=True)
class Miss:
    slo: str
    observed: float
    limit: float

    def __str__(self) -> str:
        return f"SLO missed: {self.slo} {self.observed:.4g}, limit {self.limit:.4g}"


def verdict(summary: Summary, slo: Slo) -> list[Miss]:
    """The SLOs the run missed (empty: all met). A run without a successful request misses
    every latency SLO (NaN compares false, so it is caught explicitly)."""
    checks = [
        ("p95 TTFT (ms)", summary.ms["ttft"][95], slo.ttft_p95_ms, False),
        ("p95 ITL (ms)", summary.ms["itl"][95], slo.itl_p95_ms, False),
        ("error ratio", summary.error_ratio, slo.error_ratio, False),
        ("goodput", summary.goodput, slo.goodput, True),
    ]
    misses = []
    for name, observed, limit, at_least in checks:
        if limit is None:
            continue
        ok = observed >= limit if at_least else observed <= limit
        if math.isnan(observed) or not ok:
            misses.append(Miss(name, observed, limit))
    return misses


def table(summary: Summary) -> str:
    """The summary as a Markdown table, then the totals."""
    names = {
        "ttft": "time to first token",
        "ttfc": "time to first content token",
        "itl": "inter-token latency (per chunk)",
        "itl_mean": "inter-token latency (request mean)",
        "tpot": "time per output token",
        "e2e": "end-to-end latency",
    }
    head = "| metric (ms) | " + " | ".join(f"p{q}" for q in QUANTILES) + " |"
    lines = [head, "|---" * (len(QUANTILES) + 1) + "|"]
    for key, label in names.items():
        cells = " | ".join(f"{summary.ms[key][q]:.1f}" for q in QUANTILES)
        lines.append(f"| {label} | {cells} |")
    lines += [
        "",
        f"requests {summary.requests}, failed {summary.failures} "
        f"(error ratio {summary.error_ratio:.3f}), goodput {summary.goodput:.3f}",
        f"{summary.duration_s:.1f} s: {summary.requests_per_s:.2f} requests/s, "
        f"{summary.output_tokens_per_s:.0f} output tokens/s; "
        f"tokens {summary.prompt_tokens} prompt, {summary.output_tokens} output",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Bucket:
    t_s: float  # bucket start, seconds since the first measured request
    completed: int
    output_tokens: int
    ttft_ms: dict[int, float]
    itl_ms: dict[int, float]


def timeline(results: Sequence[RequestResult], bucket_s: float) -> list[Bucket]:
    """Requests by the bucket they ended in: throughput and latency percentiles over time."""
    if not results:
        return []
    t0 = min(r.start for r in results)
    count = int(max(r.start + r.e2e_s - t0 for r in results) // bucket_s) + 1
    groups: list[list[RequestResult]] = [[] for _ in range(count)]
    for r in results:
        groups[int((r.start + r.e2e_s - t0) // bucket_s)].append(r)
    return [
        Bucket(
            t_s=i * bucket_s,
            completed=len(g),
            output_tokens=sum(r.output_tokens for r in g),
            ttft_ms={q: 1000 * percentile([r.ttft_s for r in g], q) for q in (50, 95)},
            itl_ms={q: 1000 * percentile([x for r in g for x in r.itl_s], q) for q in (50, 95)},
        )
        for i, g in enumerate(groups)
    ]
