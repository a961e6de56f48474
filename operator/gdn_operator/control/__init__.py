"""The running operator: queue, controller, reconciler, leader election, HTTP endpoints and
metrics. The only layer that does I/O (through `gdn_operator.kube`)."""
