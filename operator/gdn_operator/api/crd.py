"""The `Qwen35Deployment` CustomResourceDefinition: the one source of truth.

Everything the API server needs to validate and default the resource is generated here: the
structural schema with defaults, CEL rules for what spans several fields, printer columns, and
the status and scale subresources. The chart's copy (`charts/qwen35-stack/crds/`) and
`docs/crd-reference.md` are generated from this module (`tools/operator_generate.py`), and tests
keep them identical.

    python -m gdn_operator.api.crd > qwen35deployments.yaml
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from gdn_operator.api.openapi import (
    Schema,
    apply_defaults,
    array,
    boolean,
    free_form,
    integer,
    number,
    obj,
    quantity,
    rule,
    string,
    string_map,
)
from gdn_serve.backends.rules import AUTO, CPU_ARCH, KNOWN_BACKENDS, STATE_DTYPES

GROUP = "gdnserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Qwen35Deployment"
PLURAL = "qwen35deployments"
SINGULAR = "qwen35deployment"
SHORT_NAMES = ("q35",)
NAME = f"{PLURAL}.{GROUP}"

# KubeRay also offers NewClusterWithIncrementalUpgrade, which needs the Gateway API, a gateway
# class and clusterUpgradeOptions the operator does not write (docs/operator.md says why).
UPGRADE_STRATEGIES = ("NewCluster", "None")
QUANTIZATIONS = ("none", "awq", "gptq", "fp8")
DTYPES = ("bfloat16", "float16")
EXPERT_PARALLEL = ("Auto", "Enabled", "Disabled")
ARCH_PATTERN = rf"^({CPU_ARCH}|sm[0-9]{{2,3}})$"
# What a CPU engine needs when the spec does not say: the local stack's KV cache.
DEFAULT_CPU_KV_CACHE_BYTES = 2**30
PVC_SOURCE = r"^pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/.*)?$"
HUB_SOURCE = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$"
DNS_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# The RayService takes the deployment's name, and KubeRay wants it a DNS-1035 label of at most 47
# characters (its RayCluster adds 6, the serve Service `-serve-svc` 10: 63 in all).
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 47
# Bounds of the integers a model config may hold: what any real checkpoint stays far below, and
# small enough that the sizing arithmetic stays exact.
MAX_CONFIG_INT = 2**31 - 1
MAX_CONFIG_BYTES = 2**50  # 1 PiB: above any machine's memory, exact in a float64
MAX_LAYERS = 4096  # the planner walks the layers; real checkpoints have a few hundred at most
LAYER_TYPES = ("full_attention", "linear_attention")


def _secret_ref(description: str, default_key: str) -> Schema:
    return obj(
        description,
        {
            "name": string(
                "Name of the Secret, in the deployment's namespace.",
                pattern=DNS_NAME,
                max_length=253,
            ),
            "key": string("Key inside the Secret.", default=default_key, max_length=253),
        },
        required=["name"],
    )


def _model() -> Schema:
    return obj(
        "The model to serve and what the planner needs to size it.",
        {
            "source": string(
                "Where the weights are: a Hugging Face hub id (`Qwen/Qwen3.5-35B-A3B`), a"
                " PersistentVolumeClaim (`pvc://<claim>/<path>`, mounted read-only), or an"
                " absolute path inside the serving image.",
                min_length=1,
                max_length=512,
            ),
            "servedName": string(
                "Model name clients send in requests; defaults to the last path element of"
                " `source`.",
                max_length=253,
            ),
            "dtype": string(
                "Weight dtype of the unquantized parts.", enum=DTYPES, default="bfloat16"
            ),
            "quantization": string(
                "Weight quantization of the checkpoint (passed to vLLM as `quantization`).",
                enum=QUANTIZATIONS,
                default="none",
            ),
            "maxModelLen": integer(
                "Longest context (prompt + output) a request may use; defaults to the model's"
                " `max_position_embeddings`, and may not exceed it. Every replica must hold the"
                " KV cache of one such request.",
                minimum=1,
                maximum=MAX_CONFIG_INT,
            ),
            "config": free_form(
                "The model's `config.json` (as published with the checkpoint). When given, the"
                " planner computes parameters, KV cache and GDN state sizes and checks the"
                " tensor parallel size against the head counts. The fields it reads are typed"
                " here (at the top level and under `text_config`); others are kept as given.",
                {
                    **_text_config_fields(),
                    "text_config": free_form(
                        "The language model's fields in a multimodal checkpoint.",
                        _text_config_fields(),
                        rules=[_layer_types_rule()],
                    ),
                    "vision_config": free_form(
                        "The vision tower (counted into the weights).",
                        {
                            "hidden_size": _config_count("Vision hidden size.", minimum=0),
                            "intermediate_size": _config_count("Vision MLP size.", minimum=0),
                            "depth": _config_count("Vision blocks.", minimum=0),
                        },
                    ),
                },
                rules=[_layer_types_rule()],
            ),
            "totalParams": integer(
                "Total parameters (all experts for MoE models). Used when `config` is absent.",
                minimum=1,
                maximum=MAX_PARAMS,
                fmt="int64",
            ),
            "activeParams": integer(
                "Parameters active per token (MoE). Informative; marks the model as MoE when"
                " smaller than `totalParams`.",
                minimum=1,
                maximum=MAX_PARAMS,
                fmt="int64",
            ),
            "weightBytes": quantity(
                "Real size of the checkpoint's weights (e.g. `20Gi` for an AWQ checkpoint);"
                " overrides the size computed from parameters and dtype."
            ),
            "expertParallel": string(
                "Expert parallelism for MoE models: `Auto` enables it when an MoE model runs"
                " with tensor parallelism.",
                enum=EXPERT_PARALLEL,
                default="Auto",
            ),
            "hubTokenSecretRef": _secret_ref(
                "Secret with a Hugging Face token, exposed to workers as `HF_TOKEN`.", "token"
            ),
        },
        required=["source"],
        rules=[
            rule(
                "has(self.config) || has(self.totalParams) || has(self.weightBytes)",
                "model needs sizing: set model.config (the model's config.json),"
                " model.totalParams or model.weightBytes",
            ),
            rule(
                "self.source.startsWith('/') || self.source.matches('" + PVC_SOURCE + "')"
                " || self.source.matches('" + HUB_SOURCE + "')",
                "model.source must be a hub id (org/name), pvc://<claim>/<path>"
                " or an absolute path",
            ),
            rule(
                "!has(self.activeParams) || !has(self.totalParams)"
                " || self.activeParams <= self.totalParams",
                "model.activeParams must be <= model.totalParams",
            ),
        ],
    )


MAX_PARAMS = 10**14


def _config_count(description: str, *, minimum: int = 1) -> Schema:
    return integer(description, minimum=minimum, maximum=MAX_CONFIG_INT)


def _text_config_fields() -> dict[str, Schema]:
    """The config.json fields the planner reads, typed so that nonsense is refused on apply."""
    counts = {
        "vocab_size": "Vocabulary size.",
        "hidden_size": "Hidden size.",
        "num_hidden_layers": "Decoder layers.",
        "num_attention_heads": "Query heads of the full-attention layers.",
        "num_key_value_heads": "KV heads of the full-attention layers.",
        "head_dim": "Head size of the full-attention layers.",
        "intermediate_size": "MLP size of a dense model.",
        "max_position_embeddings": "Longest context the model supports.",
        "full_attention_interval": "Every n-th layer is full attention (without layer_types).",
        "linear_num_key_heads": "Key heads of the Gated DeltaNet layers.",
        "linear_num_value_heads": "Value heads of the Gated DeltaNet layers.",
        "linear_key_head_dim": "Key head size of the Gated DeltaNet layers.",
        "linear_value_head_dim": "Value head size of the Gated DeltaNet layers.",
        "linear_conv_kernel_dim": "Convolution width of the Gated DeltaNet layers.",
        "moe_intermediate_size": "MLP size of one expert.",
    }
    fields: dict[str, Schema] = {k: _config_count(v) for k, v in counts.items()}
    fields["num_hidden_layers"]["maximum"] = MAX_LAYERS
    fields.update(
        num_experts=_config_count("Routed experts (0: dense).", minimum=0),
        num_experts_per_tok=_config_count("Experts per token.", minimum=0),
        shared_expert_intermediate_size=_config_count("Shared expert MLP size.", minimum=0),
        layer_types=array(
            "Mixer of each layer.", string("Layer mixer.", enum=LAYER_TYPES), max_items=MAX_LAYERS
        ),
        tie_word_embeddings=boolean("LM head shares the embedding."),
        attn_output_gate=boolean("Gated full attention (Qwen3.5)."),
    )
    return fields


def _layer_types_rule() -> dict[str, str]:
    return rule(
        "!has(self.layer_types) || !has(self.num_hidden_layers)"
        " || size(self.layer_types) == self.num_hidden_layers",
        "layer_types must name one mixer per layer (num_hidden_layers entries)",
    )


def _engine_args(description: str) -> Schema:
    return free_form(
        description,
        {
            "gpu_memory_utilization": number(
                "Share of each GPU's memory vLLM may use; the planner sizes with it.",
                minimum=0,
                exclusive_minimum=True,
                maximum=1,
            ),
            "kv_cache_dtype": string("KV cache dtype (`auto`, `fp8`, ...).", max_length=32),
            "kv_cache_memory_bytes": integer(
                "KV cache bytes per engine (vLLM's `kv_cache_memory_bytes`). On `cpu` the"
                " planner sizes the worker Pod with it and sets it when unset"
                f" ({DEFAULT_CPU_KV_CACHE_BYTES // 2**30} GiB).",
                minimum=1,
                maximum=MAX_CONFIG_BYTES,
                fmt="int64",
            ),
        },
    )


def _replica_bounds_rule(prefix: str) -> dict[str, str]:
    return rule(
        "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
        f"{prefix}minReplicas must be <= {prefix}maxReplicas",
    )


def _backend(description: str, default: str | None = None) -> Schema:
    return string(description, enum=(AUTO, *KNOWN_BACKENDS), default=default)


def _arch_override() -> Schema:
    return obj(
        "Settings for one arch. GPU archs not listed are planned automatically; `cpu` is planned"
        " only when listed, and then alone.",
        {
            "arch": string(
                "GPU arch, `sm<major><minor>` (e.g. `sm89`, `sm90`), or `cpu`: run on CPU nodes"
                " (x86-64 without GPUs) with the CPU serving image, instead of on GPUs.",
                pattern=ARCH_PATTERN,
                max_length=5,
            ),
            "exclude": boolean("Never deploy on this arch.", default=False),
            "tensorParallelSize": integer(
                "Force the tensor parallel size (GPUs per replica) instead of sizing it.",
                minimum=1,
                maximum=64,
            ),
            "minReplicas": integer("Minimum replicas on this arch.", minimum=0, maximum=1000),
            "maxReplicas": integer("Maximum replicas on this arch.", minimum=1, maximum=1000),
            "gdnBackend": _backend("GDN decode backend on this arch; overrides `gdnBackend`."),
            "engineArgs": _engine_args("vLLM engine arguments for this arch only."),
        },
        required=["arch"],
        rules=[
            _replica_bounds_rule("archs[]."),
            rule(
                "!self.exclude || (!has(self.tensorParallelSize) && !has(self.minReplicas)"
                " && !has(self.maxReplicas) && !has(self.gdnBackend) && !has(self.engineArgs))",
                "an excluded arch takes no other settings",
            ),
            rule(
                f"self.arch != '{CPU_ARCH}' || (!self.exclude && !has(self.tensorParallelSize))",
                f"archs[{CPU_ARCH}] takes neither exclude (leave {CPU_ARCH} out to stay off CPU"
                " nodes) nor tensorParallelSize (a CPU replica is one engine in one Pod)",
            ),
        ],
    )


def _resources(description: str, cpu: str, memory: str) -> Schema:
    return obj(
        description,
        {
            "cpu": quantity("CPU request.", default=cpu),
            "memory": quantity("Memory request and limit.", default=memory),
        },
        default={},
    )


def _toleration() -> Schema:
    return obj(
        "A Pod toleration (core/v1 Toleration).",
        {
            "key": string("Taint key.", max_length=316),
            "operator": string("How key and value match.", enum=("Exists", "Equal")),
            "value": string("Taint value.", max_length=63),
            "effect": string("Taint effect.", enum=("NoSchedule", "PreferNoSchedule", "NoExecute")),
            "tolerationSeconds": integer("For NoExecute: how long the Pod stays.", fmt="int64"),
        },
    )


def spec_schema() -> Schema:
    return obj(
        "Desired state: which model, how to place it on the cluster's GPU archs (or on CPU nodes,"
        f" when `archs` lists `{CPU_ARCH}`), how to serve it.",
        {
            "model": _model(),
            "gdnBackend": _backend(
                "GDN decode backend: `auto` picks per arch by the rules `gdn_serve` itself uses.",
                default=AUTO,
            ),
            "gdnStateDtype": string(
                "dtype of the GDN recurrent state.", enum=STATE_DTYPES, default="float32"
            ),
            "archs": array(
                f"Per-arch overrides; listing `{CPU_ARCH}` makes it a CPU deployment.",
                _arch_override(),
                max_items=16,
                map_keys=["arch"],
            ),
            "autoscaling": obj(
                "Replica autoscaling (Ray Serve) applied to every arch unless overridden.",
                {
                    "targetOngoingRequests": integer(
                        "Ongoing requests per replica the autoscaler aims at.",
                        minimum=1,
                        maximum=10000,
                        default=16,
                    ),
                    "minReplicas": integer(
                        "Minimum replicas on each planned arch (unless `archs[].minReplicas`"
                        " says otherwise). The scale subresource reads and sets this field;"
                        " `status.replicas` counts the same quantity (docs/operator.md).",
                        minimum=0,
                        maximum=1000,
                        default=1,
                    ),
                    "maxReplicas": integer(
                        "Maximum replicas per arch; defaults to what the arch's GPUs can hold.",
                        minimum=1,
                        maximum=1000,
                    ),
                },
                rules=[_replica_bounds_rule("autoscaling.")],
                default={},
            ),
            "image": string(
                "Serving image; defaults to the operator's `--serving-image`.", max_length=512
            ),
            "nodeSelector": string_map(
                "Extra node labels every worker node must have.", max_properties=32
            ),
            "tolerations": array(
                "Extra tolerations for the worker Pods.", _toleration(), max_items=32
            ),
            "engineArgs": _engine_args("Extra vLLM engine arguments for every arch."),
            "upgradeStrategy": string(
                "How KubeRay rolls out a changed Ray cluster.",
                enum=UPGRADE_STRATEGIES,
                default="NewCluster",
            ),
            "apiKeySecretRef": _secret_ref(
                "Secret with the API key clients must send; unset: the API is open.", "api-key"
            ),
            "rayTokenSecretName": string(
                "Secret (key `auth_token`) with the Ray cluster's authentication token; unset:"
                " KubeRay generates one per Ray cluster. Ray token authentication is always on.",
                pattern=DNS_NAME,
                max_length=253,
            ),
            "resources": obj(
                "CPU and memory of the Ray Pods.",
                {
                    "head": _resources("The Ray head Pod (no GPUs).", "2", "8Gi"),
                    "workerPerGPU": _resources("Worker Pods, per GPU they hold.", "4", "32Gi"),
                    "cpuWorker": _resources(
                        f"Each worker Pod when `archs` lists `{CPU_ARCH}` (one vLLM CPU engine:"
                        " weights, KV cache and the engine's own memory).",
                        "4",
                        "16Gi",
                    ),
                },
                default={},
            ),
        },
        required=["model"],
        rules=[
            rule(
                f"!has(self.archs) || !self.archs.exists(a, a.arch == '{CPU_ARCH}')"
                " || size(self.archs) == 1",
                f"archs lists {CPU_ARCH} with other archs: a CPU deployment runs on CPU nodes only"
                " (the CPU and CUDA serving images cannot share one Ray cluster)",
            )
        ],
    )


def _condition() -> Schema:
    return obj(
        "A standard condition (metav1.Condition).",
        {
            "type": string("Ready, Progressing or Degraded.", max_length=316),
            "status": string("Condition status.", enum=("True", "False", "Unknown")),
            "reason": string("CamelCase reason.", max_length=1024),
            "message": string("Human-readable detail.", max_length=32768),
            "lastTransitionTime": string("When the status last changed.", fmt="date-time"),
            "observedGeneration": integer(
                "Generation the condition was computed for.", fmt="int64"
            ),
        },
        required=["type", "status"],
    )


def _arch_status() -> Schema:
    return obj(
        "What the planner decided for one GPU arch (or `cpu`), and what runs there.",
        {
            "arch": string("GPU arch, or `cpu`.", max_length=5),
            "product": string("GPU product(s) from GPU Feature Discovery.", max_length=1024),
            "nodes": integer("Schedulable nodes of this arch."),
            "gpusPerNode": integer("Most GPUs on one node of this arch."),
            "gpuMemoryMiB": integer("Smallest GPU memory of this arch, MiB.", fmt="int64"),
            "tensorParallelSize": integer("GPUs per replica."),
            "expertParallel": boolean("Expert parallelism enabled."),
            "gdnBackend": string("Selected GDN decode backend.", max_length=64),
            "gdnBackendReason": string("Why that backend.", max_length=1024),
            "desiredReplicas": integer("Minimum replicas planned."),
            "maxReplicas": integer("Maximum replicas planned."),
            "readyReplicas": integer("Ready serve endpoints (worker Pods) of this arch."),
            "excluded": boolean("Left out of the deployment."),
            "reason": string(
                "Why it was left out, or what the planner could not give it as asked.",
                max_length=1024,
            ),
        },
        required=["arch"],
    )


def _serve_status() -> Schema:
    deployment = obj(
        "Status of one Serve deployment.",
        {
            "name": string("Deployment name.", max_length=253),
            "status": string("Serve deployment status.", max_length=64),
            "message": string("Detail.", max_length=32768),
        },
        required=["name"],
    )
    return obj(
        "The Serve application's status as KubeRay reports it.",
        {
            "status": string("Application status.", max_length=64),
            "message": string("Detail.", max_length=32768),
            "deployments": array(
                "Per-deployment status.", deployment, max_items=64, map_keys=["name"]
            ),
        },
    )


def status_schema() -> Schema:
    return obj(
        "Observed state, written by the operator.",
        {
            "observedGeneration": integer("Generation of the spec last reconciled.", fmt="int64"),
            "conditions": array(
                "Ready, Progressing and Degraded.", _condition(), max_items=8, map_keys=["type"]
            ),
            "rayServiceName": string("The RayService this deployment owns.", max_length=253),
            "endpoint": string("OpenAI-compatible base URL inside the cluster.", max_length=512),
            "archSummary": string("Planned archs and ready/desired replicas.", max_length=512),
            "replicas": integer(
                "Ready replicas of the planned arch with the fewest (scale subresource): the"
                " per-arch quantity `spec.autoscaling.minReplicas` sets."
            ),
            "selector": string(
                "Label selector of the worker Pods (scale subresource).", max_length=512
            ),
            "archs": array(
                "One entry per GPU arch found (or `cpu`).",
                _arch_status(),
                max_items=16,
                map_keys=["arch"],
            ),
            "serve": _serve_status(),
        },
    )


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {
            "name": "Ready",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        },
        {"name": "Archs", "type": "string", "jsonPath": ".status.archSummary"},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {
            "name": "Reason",
            "type": "string",
            "priority": 1,
            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
        },
    ]


def definition() -> dict[str, Any]:
    """The CustomResourceDefinition object (apiextensions.k8s.io/v1)."""
    schema = obj(
        "A Qwen3.5-family model served by Ray Serve on every GPU arch that can hold it.",
        {
            "apiVersion": string("API version of this object."),
            "kind": string("Kind of this object."),
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        required=["spec"],
        rules=[
            rule(
                f"self.metadata.name.size() <= {MAX_NAME_LENGTH}"
                f" && self.metadata.name.matches('{DNS1035_LABEL}')",
                f"metadata.name must be a DNS-1035 label (lower-case letters, digits and '-',"
                f" starting with a letter) of at most {MAX_NAME_LENGTH} characters: KubeRay"
                " names the RayService and its Services after it",
            )
        ],
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.autoscaling.minReplicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": _printer_columns(),
                }
            ],
        },
    }


def default_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the schema's defaults filled in, as the API server would store it."""
    return apply_defaults(spec_schema(), spec)


def render_yaml() -> str:
    header = (
        "# Generated by `python -m gdn_operator.api.crd` from operator/gdn_operator/api/crd.py.\n"
    )
    return header + yaml.safe_dump(definition(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render_yaml())


if __name__ == "__main__":
    main()
