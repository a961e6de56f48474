"""PromQL built from a few helpers, so every board and rule scopes its series the same way.

Labels the boards and rules rely on, and where each comes from (docs/observability.md):
- `namespace`: the Pod's namespace (Prometheus Operator target label);
- `qwen35_deployment`: the Qwen35Deployment, from the Pod label `gdnserve.io/deployment`;
- `arch`: on `gdn_serve_*` from the engine's device; on Ray Serve series from the deployment
  name `LLMServer:llm-<arch>`; on every other series of a worker Pod from `gdnserve.io/arch`
  (`relabel.ARCH_FROM_DEPLOYMENT_AND_POD`);
- `model_name` (vLLM) and `model` (gdn_serve): the served model name.
"""

from __future__ import annotations

RATE = "$__rate_interval"
# Our Serve application names each LLM deployment llm-<arch> (gdn_serve/serve/app.py), and Ray
# Serve LLM's build_llm_deployment prefixes it with its server class ("LLMServer:llm-sm89"): the
# `deployment` tag on Ray Serve's series, checked against a scrape of the local stack.
LLM_DEPLOYMENTS = 'deployment=~".+:llm-.+"'

SCOPE = 'namespace=~"$namespace", qwen35_deployment=~"$deployment"'
ARCH = 'arch=~"$arch"'
VLLM = f'{SCOPE}, model_name=~"$model", {ARCH}'
SERVE = f"{SCOPE}, {ARCH}, {LLM_DEPLOYMENTS}"
KERNEL = f'{SCOPE}, model=~"$model", {ARCH}, backend=~"$backend"'
OPERATOR = 'namespace=~"$namespace"'


def _by(labels: str) -> str:
    return f" by ({labels}) " if labels else " "


def sel(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join(m for m in matchers if m)}}}" if any(matchers) else metric


def rate(metric: str, *matchers: str, window: str = RATE, offset: str = "") -> str:
    shift = f" offset {offset}" if offset else ""
    return f"rate({sel(metric, *matchers)}[{window}]{shift})"


def sum_rate(
    metric: str, *matchers: str, by: str = "", window: str = RATE, offset: str = ""
) -> str:
    return f"sum{_by(by)}({rate(metric, *matchers, window=window, offset=offset)})"


def agg(op: str, metric: str, *matchers: str, by: str = "") -> str:
    return f"{op}{_by(by)}({sel(metric, *matchers)})"


def divide(numerator: str, denominator: str) -> str:
    """Drops series whose denominator is zero (idle periods), rather than drawing NaN."""
    return f"{numerator} / ({denominator} > 0)"


def or_zero(expr: str, like: str) -> str:
    """`expr`, else 0 for each series of `like`. Ray exports a counter only from its first
    event on (vLLM's wrappers skip inc(0)), so errors, preemptions and fallbacks would read
    "No data" on a healthy stack; this reads 0 wherever `like` (traffic, a running engine) has
    data, and still nothing when the stack reports nothing."""
    return f"({expr}) or (0 * {like})"


def ratio(
    numerator: str, denominator: str, *matchers: str, by: str = "", window: str = RATE
) -> str:
    return divide(
        sum_rate(numerator, *matchers, by=by, window=window),
        sum_rate(denominator, *matchers, by=by, window=window),
    )


def quantile(
    q: float, histogram: str, *matchers: str, by: str = "", window: str = RATE, offset: str = ""
) -> str:
    labels = f"le, {by}" if by else "le"
    buckets = sum_rate(f"{histogram}_bucket", *matchers, by=labels, window=window, offset=offset)
    return f"histogram_quantile({q}, {buckets})"
