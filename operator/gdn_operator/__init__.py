"""gdn_operator: the Kubernetes operator that turns a `Qwen35Deployment` into a KubeRay
`RayService`, with one worker group per GPU arch.

Three layers, each importing only the ones before it, plus the I/O plumbing:
- `api`: the CRD (the one source of truth for the schema), its OpenAPI helpers, its generated
  reference, and the parsed spec;
- `plan`: pure deciders, no I/O: Nodes -> GPU arch groups (`inventory`), model memory
  (`sizing`), spec + inventory -> plan (`planner`), plan -> RayService (`manifest`), and the
  status a plan and the observed objects give (`status`);
- `control`: the running operator: work queue, controller, reconciler, leader election, its
  HTTP endpoints and metrics, and the runner that ties them together;
- `kube`: the Kubernetes client edge (verbs, informers, events); it knows `api` (the resource
  identities) and nothing above.
The operator never imports torch, Triton, vLLM or Ray; of gdn_serve it imports only
`gdn_serve.backends.rules` and `gdn_serve.contract`.
"""
