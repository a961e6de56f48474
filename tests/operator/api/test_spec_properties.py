"""Property: every spec the CRD's schema admits ends in a plan or in the planner's own error.

Specs are drawn from the CRD's OpenAPI schema itself (`schema_strategies`), plus real model
configs with fields replaced by other values their schema admits (so that the sizing arithmetic
is reached with odd but valid numbers, not only rejected early). For each, the whole pure path a
reconcile runs: parse, plan, build the RayService (KubeRay's rules included), compute the status.
The only exceptions allowed are the ones the reconciler turns into `Degraded` with a message:
SpecError, ManifestError and the Serve app's ConfigError, never a message of the parser's
safety net (an exception's repr).
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gdn_operator.api import crd
from gdn_operator.api.spec import SpecError, parse_spec
from gdn_operator.plan import kuberay
from gdn_operator.plan.inventory import build_inventory
from gdn_operator.plan.manifest import ManifestError, ManifestOptions, build_rayservice
from gdn_operator.plan.planner import plan_deployment
from gdn_operator.plan.status import Observed, compute_status
from gdn_serve.contract import ConfigError
from tests.operator.api.schema_strategies import from_schema
from tests.operator.operator_testlib import (
    H100,
    L40S,
    QWEN35_27B,
    QWEN35_35B_A3B,
    RTX4090,
    TINY,
    cpu_node,
    deployment,
    gpu_node,
)

SPEC_SCHEMA = crd.spec_schema()
CONFIG_SCHEMA = SPEC_SCHEMA["properties"]["model"]["properties"]["config"]
TEXT_FIELDS = CONFIG_SCHEMA["properties"]["text_config"]["properties"]
# Built once: a strategy is a tree of compiled regexes and filters, costly to build per case.
SPEC_VALUES = from_schema(SPEC_SCHEMA)
FIELD_VALUES = {name: from_schema(schema) for name, schema in TEXT_FIELDS.items()}
INVENTORIES = [
    build_inventory([]),
    build_inventory([gpu_node("rtx-0", RTX4090), gpu_node("rtx-1", RTX4090, cpu="8")]),
    build_inventory([gpu_node("h-0", H100, gpus=8), gpu_node("l40s-0", L40S, memory="24Gi")]),
    build_inventory(
        [gpu_node("rtx-0", RTX4090, gpus=2), gpu_node("h-0", H100, gpus=8, labels={"pool": "a"})]
    ),
    build_inventory(
        [
            cpu_node("cpu-0", cpu="16", memory="64Gi"),
            cpu_node("cpu-1", cpu="2", labels={"pool": "a"}),
            gpu_node("rtx-0", RTX4090),
        ]
    ),
]
OPTIONS = ManifestOptions(
    default_image="registry.example/gdn-serve:1", default_cpu_image="registry.example/cpu:1"
)
HANDLED = (SpecError, ManifestError, ConfigError)
# Mostly names the CRD's CEL admits; some only the API server's own rule (a DNS subdomain), for
# which KubeRay's rules must answer (a CR stored before the rule existed).
NAMES = st.from_regex(crd.DNS1035_LABEL, fullmatch=True).filter(
    lambda n: len(n) <= crd.MAX_NAME_LENGTH
) | st.from_regex(crd.DNS_NAME, fullmatch=True).filter(lambda n: len(n) <= 253)


@st.composite
def real_config_variants(draw: st.DrawFn) -> dict[str, Any]:
    """A real config.json with up to three of its typed fields replaced or removed."""
    base = draw(st.sampled_from([QWEN35_35B_A3B, QWEN35_27B, TINY]))
    config = (
        {**base, "text_config": dict(base["text_config"])} if "text_config" in base else dict(base)
    )
    text = config.get("text_config", config)
    for name in draw(st.lists(st.sampled_from(sorted(TEXT_FIELDS)), max_size=3, unique=True)):
        if draw(st.booleans()):
            text[name] = draw(FIELD_VALUES[name])
        else:
            text.pop(name, None)
    return config


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    spec = draw(SPEC_VALUES)
    # The CRD's CEL asks for one way of sizing; without it most drawn specs stop at that check.
    sizing = draw(st.sampled_from(["real config", "totalParams", "real config", "as drawn"]))
    if sizing == "real config":
        spec["model"]["config"] = draw(real_config_variants())
    elif sizing == "totalParams":
        spec["model"].pop("config", None)
        spec["model"]["totalParams"] = draw(st.integers(1, 10**11))
    if draw(st.integers(0, 2)) == 0:
        # The CPU opt-in, with the arch's own drawn settings: the CPU path is reached as often
        # as any GPU arch, not only when the arch pattern happens to give `cpu`.
        spec["archs"] = [{**item, "arch": "cpu"} for item in (spec.get("archs") or [{}])[:1]]
        if draw(st.integers(0, 2)) > 0:  # one that fits a CPU node: CPU plans are reached too
            spec["archs"][0].pop("tensorParallelSize", None)
            spec["archs"][0]["exclude"] = False
            spec["model"].update(dtype="bfloat16", config=dict(TINY))
            spec["model"].pop("maxModelLen", None)
            spec.get("resources", {}).pop("cpuWorker", None)
    return spec


def _reconcile_path(name: str, spec: dict[str, Any], inventory_index: int) -> str:
    """Parse, plan, build, compute status; returns the outcome's kind."""
    cr = deployment(spec, name=name)
    parsed = parse_spec(spec)
    plan = plan_deployment(parsed, INVENTORIES[inventory_index])
    if plan.problem() is None:
        body = build_rayservice(cr, parsed, plan, OPTIONS)
        assert kuberay.violations(body) == []
        assert all(a.min_replicas <= a.max_replicas for a in plan.archs)
    compute_status(cr, plan, None, Observed(None, {}), "2026-01-01T00:00:00Z")
    if plan.problem() is not None:
        return "nothing fits"
    return "applied on cpu" if plan.on_cpu else "applied"


OUTCOMES: dict[str, int] = {}


@settings(
    max_examples=2000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(name=NAMES, spec=specs(), inventory_index=st.integers(0, len(INVENTORIES) - 1))
def test_every_admitted_spec_plans_or_is_a_spec_error(
    name: str, spec: dict[str, Any], inventory_index: int
) -> None:
    try:
        outcome = _reconcile_path(name, spec, inventory_index)
    except HANDLED as exc:
        message = str(exc)
        assert message and "Error(" not in message, message  # readable, not the safety net
        outcome = type(exc).__name__
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1


def test_the_property_reached_every_outcome() -> None:
    # Runs after the property (file order): a generator that only ever produced rejected specs
    # would prove nothing about planning.
    if not OUTCOMES:
        started = time.monotonic()
        test_every_admitted_spec_plans_or_is_a_spec_error()
        assert time.monotonic() - started < 120
    assert OUTCOMES.get("applied", 0) >= 50, OUTCOMES
    assert OUTCOMES.get("SpecError", 0) >= 50, OUTCOMES
    assert OUTCOMES.get("nothing fits", 0) >= 10, OUTCOMES
    assert OUTCOMES.get("applied on cpu", 0) >= 10, OUTCOMES
