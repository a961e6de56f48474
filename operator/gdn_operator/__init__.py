"""gdn_operator: the Kubernetes operator that turns a `Qwen35Deployment` into a KubeRay
`RayService`, with one worker group per GPU arch.

The deciding parts are pure and importable without a cluster: `crd` (the CRD, the one source of
truth for the schema), `inventory` (Nodes -> GPU arch groups), `planner` (spec + inventory ->
plan), `manifest` (plan -> RayService) and `status`. The I/O sits at the edges: `kube` (client,
informers, events), `queue`, `leader`, `controller`, `reconciler`, `runner`, `endpoints`.
The operator never imports torch, Triton, vLLM or Ray.
"""
