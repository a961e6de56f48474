"""`gdn-serve run --prometheus`: Debian's Prometheus, in the stack's process tree, scrapes the
running stack with the chart's rules and relabelling while the official `openai` client sends
traffic. Every serving and kernel board query and every rule evaluates, the panels show data,
and the names the boards use are the ones the stack really exports.

The stack keeps serving traffic while the checks run: Ray drops a gauge that was not set within
two export intervals, and vLLM sets its gauges (running, waiting, KV cache) only on engine steps.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest

from gdn_serve.serve.processes import ServerProcess, free_port
from tests.e2e.stack_process import local_stack, scrape
from tests.monitoring.tools_import import GENERATE  # noqa: F401  (puts tools/ on sys.path)

from observability import alerts, boards, known_metrics, promapi, traffic  # isort: skip

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

# What Grafana would put in for $__rate_interval here: a window over several 5 s scrapes.
RATE_INTERVAL = "1m"
SCRAPED_BOARDS = {"serving": boards.serving, "kernels": boards.kernels}
WORKERS = 2


@dataclass
class Observed:
    server: ServerProcess
    prometheus: str
    metrics_url: str
    traffic: list[threading.Thread]
    stop: threading.Event

    def stop_traffic(self) -> None:
        self.stop.set()
        for worker in self.traffic:
            worker.join()


def _wait_for(base: str, expr: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if promapi.evaluate(base, expr)[1]:
            return
        time.sleep(2)
    raise AssertionError(f"Prometheus never saw {expr} within {timeout_s:.0f}s")


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    port = free_port()
    server, metrics_url = local_stack(
        tmp_path_factory.mktemp("prometheus"),
        *("--prometheus", str(port), "--max-model-len", "512", "--kv-cache-gib", "0.5"),
    )
    stop, workers = threading.Event(), []
    try:
        server.start(timeout_s=600)
        client = openai.OpenAI(base_url=server.api_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError):  # one client error, for the errors panel
            client.completions.create(model="no-such-model", prompt="x", max_tokens=2)
        for i in range(WORKERS):
            workers.append(
                threading.Thread(target=traffic.mixed, args=(client, traffic.MODEL, i, stop))
            )
            workers[-1].start()
        base = f"http://127.0.0.1:{port}"
        # Two scrapes of sampled decode calls and of served requests: rates have two points.
        _wait_for(base, f"count_over_time(ray_gdn_serve_decode_seconds_count[{RATE_INTERVAL}]) > 1")
        _wait_for(base, "increase(ray_serve_deployment_request_counter_total[1m]) > 0")
        yield Observed(server, base, metrics_url, workers, stop)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        server.stop()


def _empty_panels(base: str, board: str) -> tuple[list[str], list[str]]:
    """(queries Prometheus rejected, panels none of whose queries returned a series), each
    naming the panel."""
    errors: list[str] = []
    results: dict[str, bool] = {}
    for pq in promapi.panel_queries(board, SCRAPED_BOARDS[board]()):
        error, result = promapi.evaluate(base, promapi.grafana(pq.expr, RATE_INTERVAL))
        if error:
            errors.append(f"{board}/{pq.panel}: {error} in {pq.expr}")
        results[pq.panel] = results.get(pq.panel, False) or bool(result)
    return errors, [f"{board}/{panel}" for panel, has_data in results.items() if not has_data]


@pytest.mark.parametrize("board", SCRAPED_BOARDS)
def test_every_panel_query_evaluates_and_shows_data(observed: Observed, board: str) -> None:
    errors, empty = _empty_panels(observed.prometheus, board)
    assert errors == []
    assert empty == [], f"panels without data after traffic: {empty}"


def test_a_misspelt_metric_is_reported_as_an_empty_panel(
    observed: Observed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Negative control: the check above sees a panel whose metric does not exist."""
    misspelt = boards.TTFT.replace("first", "frist")
    monkeypatch.setattr(boards, "TTFT", misspelt)
    errors, empty = _empty_panels(observed.prometheus, "serving")
    assert errors == []
    assert empty == ["serving/Time to first token by arch"]


def test_requests_panel_is_split_by_the_real_arch(observed: Observed) -> None:
    """The Ray Serve series reach the boards with `arch` from `deployment="LLMServer:llm-cpu"`
    (the chart's relabelling); with the old `llm-.+` selector this panel was empty."""
    panel = next(
        pq for pq in promapi.panel_queries("serving", boards.serving())
        if pq.panel == "Requests / s by arch"
    )  # fmt: skip
    _, result = promapi.evaluate(observed.prometheus, promapi.grafana(panel.expr, RATE_INTERVAL))
    assert [r["metric"].get("arch") for r in result] == ["cpu"]
    assert float(result[0]["value"][1]) > 0


def test_every_rule_loads_and_evaluates(observed: Observed) -> None:
    groups = promapi.get(observed.prometheus, "/api/v1/rules")["data"]["groups"]
    health = {rule["name"]: (rule["health"], rule.get("lastError", "")) for g in groups
              for rule in g["rules"]}  # fmt: skip
    assert set(health) == {a.name for a in alerts.ALERTS}
    assert {name: h for name, h in health.items() if h[0] != "ok"} == {}
    for alert in alerts.ALERTS:
        error, _ = promapi.evaluate(observed.prometheus, alert.expr)
        assert error is None, (alert.name, error)


def _scraped_names(metrics_url: str) -> set[str]:
    return {s.name for s in scrape(metrics_url)}


def test_board_metrics_are_exported_by_the_running_stack(observed: Observed) -> None:
    """The generator's rule "every metric a board queries is defined" against the real export:
    each name the serving and kernel boards query is in a scrape of the stack, but for counters
    (Ray exports a counter from its first event on: fallbacks, preemptions, errors), which the
    code must define (known_metrics)."""
    scraped = _scraped_names(observed.metrics_url)
    queried = set().union(
        *(known_metrics.queried(pq.expr) for b, build in SCRAPED_BOARDS.items()
          for pq in promapi.panel_queries(b, build()))
    )  # fmt: skip
    not_scraped = sorted(known_metrics.undefined(queried, scraped))
    assert [n for n in not_scraped if not n.endswith("_total")] == [], not_scraped
    assert known_metrics.undefined(not_scraped, known_metrics.defined()) == []


def test_every_exported_stack_metric_is_known_to_the_generator(observed: Observed) -> None:
    """The other way round: the names the generator reads from the code cover what vLLM, Ray
    Serve and gdn_serve really export, so its check would accept any of them on a board."""
    ours = {n for n in _scraped_names(observed.metrics_url)
            if n.startswith(("ray_vllm_", "ray_serve_", "ray_gdn_serve_"))}  # fmt: skip
    assert ours
    assert known_metrics.undefined(ours, known_metrics.defined()) == []


def test_a_misspelt_name_is_not_in_the_scrape(observed: Observed) -> None:
    """Negative control for the two checks above."""
    scraped = _scraped_names(observed.metrics_url)
    assert known_metrics.undefined(["ray_vllm_time_to_frist_token_seconds_bucket"], scraped)
    assert known_metrics.undefined(
        ["ray_vllm_time_to_frist_token_seconds"], known_metrics.defined()
    )


def test_prometheus_is_in_the_tree_on_loopback_and_stops_with_it(observed: Observed) -> None:
    listeners = observed.server.listeners()
    observed.stop_traffic()
    port = int(observed.prometheus.rsplit(":", 1)[1])
    assert [item.process for item in listeners if item.port == port] == ["prometheus"]
    assert [item for item in listeners if not item.is_loopback] == []
    assert observed.server.stop(timeout_s=120) == 0, observed.server.log_tail()
    assert observed.server.survivors() == []
