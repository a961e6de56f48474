"""The three Grafana boards: serving, GDN kernels, operator."""

from __future__ import annotations

from collections.abc import Callable

from observability import promql as q
from observability.panels import (
    JSON,
    Layout,
    dashboard,
    info_table,
    quantile_targets,
    query_variable,
    stat,
    target,
    timeseries,
)

# Service levels the serving board draws and the alerts use (alerts.py).
TTFT_SLO_S = 2.0
ITL_SLO_S = 0.2
E2E_SLO_S = 30.0
KV_CACHE_FULL = 0.95
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}

# Under Ray, vLLM's `vllm:x` is exported as `ray_vllm_x`, Ray Serve's `serve_x` as `ray_serve_x`
# and ours as `ray_gdn_serve_x`; counters end in _total.
TTFT = "ray_vllm_time_to_first_token_seconds"
ITL = "ray_vllm_inter_token_latency_seconds"
E2E = "ray_vllm_e2e_request_latency_seconds"
RUNNING = "ray_vllm_num_requests_running"
WAITING = "ray_vllm_num_requests_waiting"
KV_CACHE = "ray_vllm_kv_cache_usage_perc"
PREEMPTIONS = "ray_vllm_num_preemptions_total"
OUTPUT_TOKENS = "ray_vllm_generation_tokens_total"
PROMPT_TOKENS = "ray_vllm_prompt_tokens_total"
FINISHED = "ray_vllm_request_success_total"
SERVE_REQUESTS = "ray_serve_deployment_request_counter_total"
SERVE_ERRORS = "ray_serve_deployment_error_counter_total"
HTTP_ERRORS = "ray_serve_num_http_error_requests_total"
REPLICA_HEALTHY = "ray_serve_deployment_replica_healthy"
DECODE = "ray_gdn_serve_decode_seconds"
BACKEND_INFO = "ray_gdn_serve_backend_info"
FALLBACKS = "ray_gdn_serve_backend_fallbacks_total"
PLUGIN_INFO = "ray_gdn_serve_vllm_plugin_info"
RECONCILE = "gdn_operator_reconcile_duration_seconds"
RECONCILE_ERRORS = "gdn_operator_reconcile_errors_total"
QUEUE_DEPTH = "gdn_operator_workqueue_depth"
DEPLOYMENTS = "gdn_operator_deployments"
LEADER = "gdn_operator_leader"
API_WRITES = "gdn_operator_api_writes_total"


def _scope_variables(metric: str, model_label: str) -> list[JSON]:
    return [
        query_variable("namespace", "Namespace", metric, "namespace"),
        query_variable(
            "deployment", "Qwen35Deployment", metric, "qwen35_deployment", 'namespace=~"$namespace"'
        ),
        query_variable("model", "Model", metric, model_label, q.SCOPE),
        query_variable("arch", "GPU arch", metric, "arch", q.SCOPE),
    ]


def _or_no_requests(errors_by_arch: str) -> str:
    """0 errors for an arch that took requests and never failed one."""
    return q.or_zero(errors_by_arch, q.sum_rate(SERVE_REQUESTS, q.SERVE, by="arch"))


def _latency(title: str, what: str, histogram: str, slo: float) -> JSON:
    exprs = {name: q.quantile(v, histogram, q.VLLM, by="arch") for name, v in QUANTILES.items()}
    return timeseries(
        f"{title} by arch",
        f"{what} p50/p95/p99 per GPU arch; the red line is the SLO ({slo:g} s).\n\n"
        f"Metric: `{histogram}`",
        quantile_targets(exprs, "{{arch}}"),
        unit="s",
        slo=slo,
    )


def serving() -> JSON:
    layout = Layout()
    layout.row("Traffic")
    layout.add(
        timeseries(
            "Requests / s by arch",
            "Requests the per-arch LLM deployments (`llm-<arch>`) took.\n\n"
            f"Metric: `{SERVE_REQUESTS}`",
            [target(q.sum_rate(SERVE_REQUESTS, q.SERVE, by="arch"), "{{arch}}")],
            unit="reqps",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Errors / s by reason",
            "Failed requests: HTTP errors at the proxy by code, LLM deployment errors by arch, "
            "and vLLM requests that ended aborted or in error.\n\n"
            f"Metrics: `{HTTP_ERRORS}`, `{SERVE_ERRORS}`, `{FINISHED}`",
            [
                target(q.sum_rate(HTTP_ERRORS, q.SCOPE, by="error_code"), "HTTP {{error_code}}"),
                target(
                    _or_no_requests(q.sum_rate(SERVE_ERRORS, q.SERVE, by="arch")),
                    "deployment {{arch}}",
                ),
                target(
                    q.sum_rate(
                        FINISHED,
                        q.VLLM,
                        'finished_reason=~"abort|error"',
                        by="arch, finished_reason",
                    ),
                    "{{finished_reason}} {{arch}}",
                ),
            ],
            unit="reqps",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Error ratio by arch",
            f"Errors per request of each LLM deployment.\n\nMetrics: `{SERVE_ERRORS}`, "
            f"`{SERVE_REQUESTS}`",
            [
                target(
                    q.divide(
                        _or_no_requests(q.sum_rate(SERVE_ERRORS, q.SERVE, by="arch")),
                        q.sum_rate(SERVE_REQUESTS, q.SERVE, by="arch"),
                    ),
                    "{{arch}}",
                )
            ],
            unit="percentunit",
            slo=0.05,
        ),
        8,
    )
    layout.row("Latency")
    layout.add(_latency("Time to first token", "Time to first token", TTFT, TTFT_SLO_S), 8)
    layout.add(_latency("Inter-token latency", "Time between output tokens", ITL, ITL_SLO_S), 8)
    layout.add(_latency("End-to-end latency", "Request latency in the engine", E2E, E2E_SLO_S), 8)
    layout.row("Throughput and engine")
    layout.add(
        timeseries(
            "Output tokens / s by arch",
            f"Tokens generated per second.\n\nMetrics: `{OUTPUT_TOKENS}`, `{PROMPT_TOKENS}`",
            [
                target(q.sum_rate(OUTPUT_TOKENS, q.VLLM, by="arch"), "output {{arch}}"),
                target(q.sum_rate(PROMPT_TOKENS, q.VLLM, by="arch"), "prompt {{arch}}"),
            ],
            unit="short",
        ),
        8,
    )
    layout.add(
        timeseries(
            "Running and waiting requests by arch",
            "Requests in the engines' batches and in their queues; a queue that keeps growing "
            f"means too few replicas.\n\nMetrics: `{RUNNING}`, `{WAITING}`",
            [
                target(q.agg("sum", RUNNING, q.VLLM, by="arch"), "running {{arch}}"),
                target(q.agg("sum", WAITING, q.VLLM, by="arch"), "waiting {{arch}}"),
            ],
        ),
        8,
    )
    layout.add(
        timeseries(
            "KV-cache usage by arch",
            "The fullest engine of each arch; at the red line requests start to wait or be "
            f"preempted.\n\nMetric: `{KV_CACHE}`",
            [target(q.agg("max", KV_CACHE, q.VLLM, by="arch"), "{{arch}}")],
            unit="percentunit",
            max_value=1,
            slo=KV_CACHE_FULL,
        ),
        8,
    )
    layout.add(
        timeseries(
            "Preemptions / s by arch",
            f"Requests evicted from the KV cache to make room.\n\nMetric: `{PREEMPTIONS}`",
            [
                target(
                    q.or_zero(
                        q.sum_rate(PREEMPTIONS, q.VLLM, by="arch"),
                        q.sum_rate(OUTPUT_TOKENS, q.VLLM, by="arch"),
                    ),
                    "{{arch}}",
                )
            ],
        ),
        12,
    )
    layout.add(
        timeseries(
            "Healthy replicas by arch",
            f"Replicas of each LLM deployment that pass Serve's health check.\n\n"
            f"Metric: `{REPLICA_HEALTHY}`",
            [target(q.agg("sum", REPLICA_HEALTHY, q.SERVE, by="arch"), "{{arch}}")],
        ),
        12,
    )
    return dashboard(
        "qwen35-serving",
        "Qwen3.5 / Serving",
        "Requests, errors, latency against SLOs, throughput and engine load, per GPU arch.",
        layout,
        _scope_variables(RUNNING, "model_name"),
    )


def kernels() -> JSON:
    layout = Layout()
    by = "backend, arch, batch"
    for name in ("p50", "p99"):
        layout.add(
            timeseries(
                f"GDN decode latency {name} by backend, arch and batch",
                f"Time of one GDN decode kernel call per layer ({name}), sampled one call in N; "
                f"`batch` is the batch-size bucket (1, 2-4, 5-16, 17-64, 65-256, 257+).\n\n"
                f"Metric: `{DECODE}`",
                [
                    target(
                        q.quantile(QUANTILES[name], DECODE, q.KERNEL, by=by),
                        "{{backend}} {{arch}} B={{batch}}",
                    )
                ],
                unit="s",
            ),
            12,
            9,
        )
    layout.add(
        timeseries(
            "Sampled decode calls / s by batch bucket",
            f"How often each batch-size bucket is timed: where the latency panels have data."
            f"\n\nMetric: `{DECODE}`",
            [
                target(
                    q.sum_rate(f"{DECODE}_count", q.KERNEL, by="arch, batch"),
                    "{{arch}} B={{batch}}",
                )
            ],
            stack=True,
        ),
        12,
    )
    layout.add(
        timeseries(
            "Backend fallbacks / s by reason",
            "Engines that run another GDN decode backend than the one chosen (each engine "
            f"counts once at start).\n\nMetric: `{FALLBACKS}`",
            [
                target(
                    q.or_zero(
                        q.sum_rate(FALLBACKS, q.SCOPE, q.ARCH, by="arch, chosen, backend, reason"),
                        q.agg("max", BACKEND_INFO, q.KERNEL, by="arch"),
                    ),
                    "{{arch}} {{chosen}} -> {{backend}}: {{reason}}",
                )
            ],
        ),
        12,
    )
    layout.add(
        info_table(
            "Backend each arch runs",
            f"One row per engine's backend choice (1 = running).\n\nMetric: `{BACKEND_INFO}`",
            q.agg(
                "max",
                BACKEND_INFO,
                q.KERNEL,
                by="namespace, qwen35_deployment, arch, backend, requested, state_dtype, model",
            ),
            [
                "namespace",
                "qwen35_deployment",
                "arch",
                "backend",
                "requested",
                "state_dtype",
                "model",
            ],
        ),
        16,
    )
    layout.add(
        stat(
            "Engines with the plugin active",
            "Engines where the gdn_serve plugin changed vLLM (0: an unsupported vLLM was left "
            f"alone).\n\nMetric: `{PLUGIN_INFO}`",
            q.agg("sum", PLUGIN_INFO, q.SCOPE, 'supported="true"'),
            red_below=1,
        ),
        8,
    )
    return dashboard(
        "qwen35-gdn-kernels",
        "Qwen3.5 / GDN kernels",
        "GDN decode kernel latency per backend, arch and batch bucket; the backend each arch "
        "runs; fallbacks; whether the plugin is active.",
        layout,
        [
            *_scope_variables(BACKEND_INFO, "model"),
            query_variable("backend", "Backend", BACKEND_INFO, "backend", q.SCOPE),
        ],
    )


def operator() -> JSON:
    layout = Layout()
    layout.add(stat("Leaders", f"Operator replicas that lead (should be 1).\n\nMetric: `{LEADER}`",
                    q.agg("sum", LEADER, q.OPERATOR), red_below=1), 6, 6)  # fmt: skip
    layout.add(
        stat("Work queue depth", f"Keys waiting to be reconciled.\n\nMetric: `{QUEUE_DEPTH}`",
             q.agg("max", QUEUE_DEPTH, q.OPERATOR)),
        6,
        6,
    )  # fmt: skip
    layout.add(
        timeseries(
            "Qwen35Deployments by condition",
            f"Deployments per condition type and status, as the leader sees them.\n\n"
            f"Metric: `{DEPLOYMENTS}`",
            [
                target(
                    q.agg("max", DEPLOYMENTS, q.OPERATOR, by="condition, status"),
                    "{{condition}}={{status}}",
                )
            ],
        ),
        12,
        6,
    )
    layout.add(
        timeseries(
            "Reconciles / s by result",
            f"Reconciles that ended ok, requeued or in error.\n\nMetric: `{RECONCILE}_count`",
            [target(q.sum_rate(f"{RECONCILE}_count", q.OPERATOR, by="result"), "{{result}}")],
            stack=True,
        ),
        8,
    )
    layout.add(
        timeseries(
            "Reconcile errors / s by reason",
            f"Failed reconciles by API status or problem.\n\nMetric: `{RECONCILE_ERRORS}`",
            [target(q.sum_rate(RECONCILE_ERRORS, q.OPERATOR, by="reason"), "{{reason}}")],
        ),
        8,
    )
    layout.add(
        timeseries(
            "Reconcile duration",
            f"p50 and p99 of one reconcile.\n\nMetric: `{RECONCILE}`",
            quantile_targets(
                {n: q.quantile(QUANTILES[n], RECONCILE, q.OPERATOR) for n in ("p50", "p99")}, ""
            ),
            unit="s",
        ),
        8,
    )
    layout.add(
        timeseries(
            "API writes / s by kind",
            f"RayService applies, status patches and Events written.\n\nMetric: `{API_WRITES}`",
            [target(q.sum_rate(API_WRITES, q.OPERATOR, by="kind"), "{{kind}}")],
        ),
        24,
    )
    return dashboard(
        "qwen35-operator",
        "Qwen3.5 / Operator",
        "gdn-operator: leader, work queue, reconciles and their errors and duration, "
        "Qwen35Deployments per condition.",
        layout,
        [query_variable("namespace", "Namespace", LEADER, "namespace")],
    )


BOARDS: dict[str, Callable[[], JSON]] = {
    "qwen35-serving.json": serving,
    "qwen35-gdn-kernels.json": kernels,
    "qwen35-operator.json": operator,
}
