"""KubeRay's own rules for a RayService, checked before the operator applies one. Pure.

KubeRay (v1.7) validates a RayService in its controller, not in its CRD: what breaks a rule is
accepted by the API server and then marked `ValidationFailed`, or leaves Pods that never start
(an unparsable `rayStartParams.resources`). Written from KubeRay's documented behaviour
(`ray-operator/controllers/ray/utils/validation.go`, the Pod builder's `rayStartParams` handling
and its name limits), so a violation shows up in the deployment's status before anything is
applied. Each message is the rule, in words a user can act on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

# KubeRay's RayCluster name limit is 63 - len("-serve-svc") = 53; a RayService's cluster is its
# name plus 6 characters, so a RayService name has 47.
MAX_RAYSERVICE_NAME = 47
UPGRADE_TYPES = ("NewCluster", "None", "NewClusterWithIncrementalUpgrade")
MIN_RAY_FOR_TOKEN_AUTH = (2, 52, 0)
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def violations(rayservice: Mapping[str, Any]) -> list[str]:
    """Every KubeRay rule the RayService breaks, in words; empty when KubeRay will take it."""
    meta = rayservice.get("metadata") or {}
    spec = rayservice.get("spec") or {}
    cluster = spec.get("rayClusterConfig") or {}
    found = [
        *_name(str(meta.get("name", ""))),
        *_labels("metadata.labels", meta.get("labels") or {}),
        *_upgrade(spec, cluster),
        *_auth(cluster),
        *_head(cluster.get("headGroupSpec") or {}),
    ]
    names: set[str] = set()
    for group in cluster.get("workerGroupSpecs") or []:
        name = str(group.get("groupName", ""))
        if name in names:
            found.append(f"worker group {name!r} is listed twice; group names must be unique")
        names.add(name)
        found += _worker(name, group)
    return found


def _name(name: str) -> list[str]:
    found = []
    if len(name) > MAX_RAYSERVICE_NAME:
        found.append(
            f"RayService name {name!r} has {len(name)} characters; KubeRay allows at most"
            f" {MAX_RAYSERVICE_NAME} (it derives its RayCluster and Service names from it)"
        )
    if not _DNS1035.match(name):
        found.append(
            f"RayService name {name!r} must be a DNS-1035 label: lower-case letters, digits"
            " and '-', starting with a letter and ending with a letter or digit"
        )
    return found


def _labels(where: str, labels: Mapping[str, Any]) -> list[str]:
    """Kubernetes label syntax: a qualified name as key, a value of at most 63 characters."""
    found = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix))) or not (
            len(name) <= 63 and _LABEL_NAME.match(name)
        ):
            found.append(f"{where}: {key!r} is not a valid label key")
        text = str(value)
        if len(text) > 63 or (text and not _LABEL_NAME.match(text)):
            found.append(
                f"{where}: the value of {key!r} ({text!r}) is not a valid label value"
                " (at most 63 characters: letters, digits, '-', '_', '.', alphanumeric at"
                " both ends)"
            )
    return found


def _upgrade(spec: Mapping[str, Any], cluster: Mapping[str, Any]) -> list[str]:
    strategy = spec.get("upgradeStrategy") or {}
    kind = strategy.get("type")
    if kind is None:
        return []
    if kind not in UPGRADE_TYPES:
        return [f"upgradeStrategy.type {kind!r} is not one of {', '.join(UPGRADE_TYPES)}"]
    if kind != "NewClusterWithIncrementalUpgrade":
        return []
    found = []
    if not cluster.get("enableInTreeAutoscaling"):
        found.append("NewClusterWithIncrementalUpgrade needs the Ray autoscaler")
    options = strategy.get("clusterUpgradeOptions")
    if not options:
        return [*found, "NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions"]
    for name in ("maxSurgePercent", "stepSizePercent"):
        value = options.get(name, 100 if name == "maxSurgePercent" else None)
        if not isinstance(value, int) or not 0 <= value <= 100:
            found.append(f"clusterUpgradeOptions.{name} must be between 0 and 100")
    interval = options.get("intervalSeconds")
    if not isinstance(interval, int) or interval <= 0:
        found.append("clusterUpgradeOptions.intervalSeconds must be greater than 0")
    if not options.get("gatewayClassName"):
        found.append(
            "NewClusterWithIncrementalUpgrade needs clusterUpgradeOptions.gatewayClassName"
        )
    return found


def _auth(cluster: Mapping[str, Any]) -> list[str]:
    if (cluster.get("authOptions") or {}).get("mode") != "token":
        return []
    match = _VERSION.match(str(cluster.get("rayVersion", "")))
    if match is None:
        return ["authOptions.mode is 'token' but rayVersion is not set to a version"]
    version = tuple(int(part or 0) for part in match.groups())
    if version < MIN_RAY_FOR_TOKEN_AUTH:
        return ["authOptions.mode is 'token' but it needs Ray 2.52.0 or later"]
    return []


def _head(head: Mapping[str, Any]) -> list[str]:
    found = _group("head group", head)
    if ((head.get("headService") or {}).get("metadata") or {}).get("name"):
        found.append("headGroupSpec.headService.metadata.name must not be set in a RayService")
    return found


def _worker(name: str, group: Mapping[str, Any]) -> list[str]:
    where = f"worker group {name!r}"
    found = [] if _DNS1035.match(name) else [f"{where}: groupName must be a DNS-1035 label"]
    found += _group(where, group)
    low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
    if low > high:
        found.append(f"{where}: minReplicas {low} is greater than maxReplicas {high}")
    if group.get("suspend"):
        found.append(f"{where}: a group cannot be suspended with the autoscaler enabled")
    return found


def _group(where: str, group: Mapping[str, Any]) -> list[str]:
    params = group.get("rayStartParams") or {}
    pod = (group.get("template") or {}).get("spec") or {}
    found = [] if pod.get("containers") else [f"{where}: the Pod template has no container"]
    if "labels" in params:
        found.append(f"{where}: rayStartParams['labels'] is not supported; use the group's labels")
    resource_params = [p for p in ("num-cpus", "num-gpus", "memory", "resources") if p in params]
    if resource_params and group.get("resources"):
        found.append(
            f"{where}: resources are set both in rayStartParams ({', '.join(resource_params)})"
            " and in the group's resources; use only one"
        )
    if "resources" in params and parse_resources(params["resources"]) is None:
        found.append(
            f"{where}: rayStartParams['resources'] {params['resources']!r} is not a JSON object"
            " of numbers once KubeRay strips its quotes; write it like '{\"name\":1}'"
        )
    template_meta = (group.get("template") or {}).get("metadata") or {}
    return found + _labels(f"{where} Pod labels", template_meta.get("labels") or {})


def parse_resources(value: str) -> dict[str, float] | None:
    """`rayStartParams.resources` as KubeRay's Pod builder reads it (before it adds the GPU
    count from the limits): surrounding quotes (', ", `) and spaces trimmed, then a JSON object
    of numbers. None when that fails, which in KubeRay costs the Pod its `--num-gpus`."""
    try:
        parsed = json.loads(value.strip("'\"` "))
    except ValueError:
        return None
    if not isinstance(parsed, dict) or not all(_is_number(v) for v in parsed.values()):
        return None
    return {str(k): float(v) for k, v in parsed.items()}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def describe(found: Iterable[str]) -> str:
    return "KubeRay would reject the RayService: " + "; ".join(found)
