"""The Serve application config the operator writes for the CPU sample, served for real.

Run from the checkout's root: `python -m tests.e2e.operator_cpu_app result.json`. The
operator's own code plans `charts/qwen35-stack/examples/tiny-cpu.yaml` on one CPU node and builds
its RayService; the application's `args` are taken from its `serveConfigV2` and served by the
local stack, with three changes a single machine needs: `model_source` is the locally written
tiny model (the CPU image's path does not exist here), the listeners stay on loopback, and no API
key (the key on every route is `test_api_checks.py`'s business). Everything else (engine
arguments, placement on `gdn-arch-cpu`, the CPU engine, the GDN backend) is as the operator wrote
it. The result: the served model names and one completion's token count, plus the config that
was served.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import openai
import yaml

from gdn_operator.api.spec import parse_spec
from gdn_operator.plan.inventory import build_inventory
from gdn_operator.plan.manifest import ManifestOptions, build_rayservice
from gdn_operator.plan.planner import plan_deployment
from gdn_serve.contract import AppConfig
from gdn_serve.serve.local import LocalOptions, LocalStack
from gdn_serve.serve.processes import free_port
from gdn_serve.tiny_model import resolve_model
from tests.operator.k8s_binaries import ROOT
from tests.operator.operator_testlib import cpu_node, deployment

SAMPLE = ROOT / "charts/qwen35-stack/examples/tiny-cpu.yaml"


def operator_app_args() -> dict[str, Any]:
    """The application's args in the RayService the operator builds for the sample."""
    sample = yaml.safe_load(SAMPLE.read_text())
    spec = parse_spec(sample["spec"])
    plan = plan_deployment(spec, build_inventory([cpu_node("cpu-0", cpu="8", memory="32Gi")]))
    options = ManifestOptions(default_cpu_image="gdn-serve-cpu:e2e")
    rs = build_rayservice(deployment(sample["spec"]), spec, plan, options)
    args: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    return args


def main(result_path: str) -> None:
    written = AppConfig.from_dict(operator_app_args())
    config = dataclasses.replace(
        written, model_source=resolve_model(None), loopback_only=True, api_key_env=None
    )
    opts = LocalOptions(port=free_port(), metrics_port=free_port(), quiet=True)
    stack = LocalStack(opts, config.model_source)
    stack.config = config  # the operator's application instead of the local one
    with stack:
        client = openai.OpenAI(base_url=stack.api_url, api_key="unused", max_retries=0)
        models = [m.id for m in client.models.list().data]
        out = client.completions.create(
            model=config.served_model_name, prompt="Hello", max_tokens=8, temperature=0
        )
    result = {
        "models": models,
        "completion_tokens": out.usage.completion_tokens if out.usage else 0,
        "served": config.to_dict(),
    }
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
