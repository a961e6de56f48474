"""A run's files, next to Locust's CSV and HTML: `summary.md` (the table and the SLO verdict),
`summary.json`, `requests.jsonl` (one line per measured request) and `plot.png` (latency
percentiles and throughput over time)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from gdn_serve.loadtest.stats import Bucket, Miss, Summary, table, timeline
from gdn_serve.loadtest.stream import RequestResult


def write(
    out: Path, results: Sequence[RequestResult], summary: Summary, misses: Sequence[Miss]
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    verdict = "\n".join(str(m) for m in misses) or "every SLO met"
    (out / "summary.md").write_text(f"{table(summary)}\n\n{verdict}\n")
    (out / "summary.json").write_text(
        json.dumps(
            {**asdict(summary), "misses": [asdict(m) for m in misses]}, indent=1, default=str
        )
        + "\n"
    )
    with (out / "requests.jsonl").open("w") as f:
        for r in results:
            f.write(json.dumps({**asdict(r), "api": r.api.value}) + "\n")
    plot(out / "plot.png", timeline(results, bucket_s=bucket_for(results)))


def bucket_for(results: Sequence[RequestResult]) -> float:
    """About 30 points whatever the run's length, at least one second each."""
    if not results:
        return 1.0
    span = max(r.start + r.e2e_s for r in results) - min(r.start for r in results)
    return max(1.0, span / 30)


def plot(path: Path, buckets: Sequence[Bucket]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    t = [b.t_s for b in buckets]
    for q, style in ((50, "-"), (95, "--")):
        lat.plot(t, [b.ttft_ms[q] for b in buckets], style, color="C0", label=f"TTFT p{q}")
        lat.plot(t, [b.itl_ms[q] for b in buckets], style, color="C1", label=f"ITL p{q}")
    lat.set_ylabel("ms")
    lat.set_yscale("log")
    lat.legend(loc="upper right", fontsize="small")
    lat.set_title("latency percentiles of the requests ending in each interval")
    width = (t[1] - t[0]) if len(t) > 1 else 1.0
    thr.bar(t, [b.output_tokens / width for b in buckets], width=width, align="edge", color="C2")
    thr.set_ylabel("output tokens/s")
    thr.set_xlabel("seconds since the first measured request")
    rps = thr.twinx()
    rps.plot(t, [b.completed / width for b in buckets], color="C3", marker=".")
    rps.set_ylabel("requests/s", color="C3")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
