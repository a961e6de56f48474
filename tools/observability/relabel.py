"""The scrape-time relabelling that gives every Ray series its GPU arch.

Applied after the scrape (metric relabelling), in order:
1. series of the per-arch LLM deployments (Ray Serve's `deployment="LLMServer:llm-<arch>"`:
   Ray Serve LLM prefixes our `llm-<arch>` with its server class; also seen on the ingress's
   handle metrics) that carry no `arch` get it from the deployment name;
2. any other series without `arch` scraped from a worker Pod gets the Pod's
   `gdnserve.io/arch` label (the PodMonitor copies it to `pod_arch`): vLLM's series;
3. `pod_arch` is dropped again. Series that already carry `arch` (ours: the engine's device)
   keep it.
Written in the Prometheus Operator's spelling (camelCase); the local Prometheus converts it
(`gdn_serve.serve.prometheus.metric_relabel_configs`).
"""

from __future__ import annotations

from typing import Any

ARCH_FROM_DEPLOYMENT_AND_POD: list[dict[str, Any]] = [
    {"sourceLabels": ["arch", "deployment"], "regex": ";.+:llm-(.+)",
     "targetLabel": "arch", "replacement": "$1", "action": "replace"},
    {"sourceLabels": ["arch", "pod_arch"], "regex": ";(.+)",
     "targetLabel": "arch", "replacement": "$1", "action": "replace"},
    {"regex": "pod_arch", "action": "labeldrop"},
]  # fmt: skip
