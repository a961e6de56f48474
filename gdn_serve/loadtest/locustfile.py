"""Locust users for the OpenAI endpoint (`locust -f gdn_serve/loadtest/locustfile.py`).

Each request streams a chat or a completion and is measured from the raw server-sent events
(`stream.measure`); every timing is fired as a Locust request entry (`METRIC ttft`, `METRIC
itl` per chunk, ...), so Locust's UI, CSV and HTML give their percentiles, and the request
itself as `POST /v1/...` (a failure when the stream was not what was asked). At the end the
run's summary, SLO verdict, per-request records and plot go to `--report-dir`, and a missed
SLO sets the exit code (3). One process per run (the default): the summary and the request
count bound are counted in the process.

The HTTP client is geventhttpclient's (Locust's FastHttpUser uses it too) read line by line,
so that each event is timed when it arrives, not when a buffer fills.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
from geventhttpclient import HTTPClient
from locust import User, events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.stats import CSV_STATS_INTERVAL_SEC

from gdn_serve.loadtest import report, workload
from gdn_serve.loadtest.stats import SLO_MISSED_EXIT, Slo, summarize, verdict
from gdn_serve.loadtest.stream import RequestResult, StreamFailure, measure, sse_payload
from gdn_serve.loadtest.workload import Arrival, Request


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("qwen35-stack load test")
    group.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""),
                       help="Bearer key (default: $OPENAI_API_KEY)")  # fmt: skip
    group.add_argument("--model", default="", help="served model (default: the first listed)")
    group.add_argument("--chat-share", type=float, default=0.0,
                       help="share of requests sent as chats, the rest as completions")  # fmt: skip
    group.add_argument("--input-tokens", type=int, default=64, help="synthetic prompt length")
    group.add_argument("--output-tokens", type=int, default=64, help="tokens asked per request")
    group.add_argument("--prompt-count", type=int, default=256, help="synthetic prompts")
    group.add_argument("--prompts-file", default="", help='JSONL of {"prompt": ...}')
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--arrival", choices=[a.value for a in Arrival], default="closed",
                       help="closed loop, or open loop at --rate")  # fmt: skip
    group.add_argument("--rate", type=float, default=0.0, help="open loop: requests/s in all")
    group.add_argument("--request-count", type=int, default=0,
                       help="measured requests to send (0: --run-time ends)")  # fmt: skip
    group.add_argument("--warmup-requests", type=int, default=0, help="sent first, not counted")
    group.add_argument("--request-timeout", type=float, default=600.0)
    group.add_argument("--slo-ttft-p95-ms", type=float)
    group.add_argument("--slo-itl-p95-ms", type=float)
    group.add_argument("--slo-error-ratio", type=float)
    group.add_argument("--slo-goodput", type=float, help="share of requests within the SLOs")
    group.add_argument("--report-dir", default="", help="summary, records and plot go here")


@dataclass
class Run:
    """What the users of one process share: the request sequence and what came back."""

    env: Environment
    requests: Iterator[Request]
    warmup: int
    count: int
    slo: Slo
    issued: int = 0
    users: int = 0  # open-loop users started, each with its own seeded schedule
    finished: int = 0
    failures: int = 0
    results: list[RequestResult] = field(default_factory=list)
    window: list[float] = field(default_factory=list)  # first start, last end (measured)

    def take(self) -> tuple[Request, bool] | None:
        """The next request and whether it is measured; None once the count is reached."""
        if self.count and self.issued >= self.warmup + self.count:
            return None
        measured = self.issued >= self.warmup
        self.issued += 1
        return next(self.requests), measured

    def record(self, start: float, result: RequestResult | None) -> None:
        end = time.perf_counter()
        self.window = [min(self.window[0], start), end] if self.window else [start, end]
        if result is None:
            self.failures += 1
        else:
            self.results.append(result)
        self.finished += 1
        if self.count and self.finished == self.count and self.env.runner is not None:
            # Locust's CSV writer rewrites its files once per interval and not at exit: stay up
            # one more interval so that the CSV holds the last requests too.
            gevent.spawn_later(CSV_STATS_INTERVAL_SEC + 0.2, self.env.runner.quit)


RUN: Run | None = None


def base_url(host: str) -> str:
    """The server root: `--host` may be given with or without the `/v1` suffix."""
    host = host.rstrip("/")
    return host.removesuffix("/v1")


def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def first_model(host: str, api_key: str) -> str:
    request = urllib.request.Request(f"{base_url(host)}/v1/models", headers=auth_headers(api_key))
    with urllib.request.urlopen(request, timeout=30) as response:
        return str(json.load(response)["data"][0]["id"])


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    global RUN
    o = environment.parsed_options
    assert o is not None and environment.host, "--host (the server root URL) is required"
    prompts = (
        workload.file_prompts(Path(o.prompts_file))
        if o.prompts_file
        else workload.synthetic_prompts(o.prompt_count, o.input_tokens, o.seed)
    )
    model = o.model or first_model(environment.host, o.api_key)
    slo = Slo(o.slo_ttft_p95_ms, o.slo_itl_p95_ms, o.slo_error_ratio, o.slo_goodput)
    requests = workload.requests(prompts, model, o.output_tokens, o.chat_share, o.seed)
    RUN = Run(environment, requests, o.warmup_requests, o.request_count, slo)


@events.quitting.add_listener
def _finish(environment: Environment, **_: Any) -> None:
    o = environment.parsed_options
    if RUN is None or o is None:
        return
    duration = RUN.window[1] - RUN.window[0] if RUN.window else 0.0
    summary = summarize(RUN.results, RUN.failures, duration, RUN.slo)
    misses = verdict(summary, RUN.slo)
    if o.report_dir:
        report.write(Path(o.report_dir), RUN.results, summary, misses)
    for miss in misses:
        print(miss, flush=True)
    if RUN.slo != Slo():
        environment.process_exit_code = SLO_MISSED_EXIT if misses else 0


class OpenAIUser(User):
    """Closed loop: each user sends its next request when the last ends. Open loop
    (`--arrival constant|poisson`): each user starts requests at `--rate` / users, without
    waiting for those in flight."""

    def on_start(self) -> None:
        o = self.environment.parsed_options
        assert o is not None and self.host
        self.headers = {"Content-Type": "application/json", **auth_headers(o.api_key)}
        self.http = HTTPClient.from_url(
            base_url(self.host), concurrency=1024, network_timeout=o.request_timeout,
            connection_timeout=30,
        )  # fmt: skip

    def on_stop(self) -> None:
        self.http.close()

    @task
    def load(self) -> None:
        o = self.environment.parsed_options
        assert o is not None and RUN is not None
        arrival = Arrival(o.arrival)
        if arrival is Arrival.closed:
            taken = RUN.take()
            if taken is None:
                raise StopUser
            self.send(*taken)
            return
        users = max(1, o.num_users or 1)
        RUN.users += 1
        in_flight = gevent.pool.Group()
        next_at = time.perf_counter()
        for gap in workload.gaps(arrival, o.rate / users, o.seed + RUN.users):
            gevent.sleep(max(0.0, next_at - time.perf_counter()))
            taken = RUN.take()
            if taken is None:
                break
            in_flight.spawn(self.send, *taken)
            next_at += gap
        in_flight.join()
        raise StopUser

    def send(self, request: Request, measured: bool) -> None:
        assert RUN is not None
        start = time.perf_counter()
        try:
            result: RequestResult | None = measure(
                request.api, start, self.stream(request), request.output_tokens
            )
            failure = None
        except (StreamFailure, OSError, http.client.HTTPException) as e:
            result, failure = None, e
        if not measured:
            return
        RUN.record(start, result)
        self.fire(request, start, result, failure)

    def stream(self, request: Request) -> list[tuple[float, str]]:
        """The timed `data:` payloads of one streamed response; StreamFailure on an HTTP
        error status."""
        response = self.http.post(request.api.path, json.dumps(request.body), self.headers)
        if response.status_code != 200:
            text = response.read().decode(errors="replace")
            raise StreamFailure(f"HTTP {response.status_code}: {text[:300]}")
        timed: list[tuple[float, str]] = []
        try:
            while line := response.readline(b"\n"):
                payload = sse_payload(line.decode())
                if payload:
                    timed.append((time.perf_counter(), payload))
        except (OSError, http.client.HTTPException) as e:
            raise StreamFailure(f"truncated stream: {e!r} after {len(timed)} events") from None
        return timed

    def fire(
        self,
        request: Request,
        start: float,
        result: RequestResult | None,
        failure: Exception | None,
    ) -> None:
        fire = self.environment.events.request.fire
        path = request.api.path
        if result is None:
            elapsed = 1000 * (time.perf_counter() - start)
            fire(request_type="POST", name=path, response_time=elapsed, response_length=0,
                 exception=failure, context={})  # fmt: skip
            return
        fire(request_type="POST", name=path, response_time=1000 * result.e2e_s,
             response_length=result.output_tokens, exception=None, context={})  # fmt: skip
        values = {
            "ttft": 1000 * result.ttft_s,
            "ttfc": 1000 * result.ttfc_s,
            "itl_mean": 1000 * result.itl_mean_s,
            "tpot": 1000 * result.tpot_s,
            "output_tokens_per_s": result.output_tokens_per_s,
            "prompt_tokens": result.prompt_tokens,
            "output_tokens": result.output_tokens,
        }
        for name, value in values.items():
            fire(request_type="METRIC", name=name, response_time=value, response_length=0,
                 exception=None, context={})  # fmt: skip
        for gap in result.itl_s:
            fire(request_type="METRIC", name="itl", response_time=1000 * gap,
                 response_length=0, exception=None, context={})  # fmt: skip
