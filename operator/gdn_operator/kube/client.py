"""Building the API client: in-cluster, from KUBECONFIG, or from --kubeconfig, like any controller.

Order (as controller-runtime): an explicit `--kubeconfig`, then `$KUBECONFIG`, then the Pod's
ServiceAccount when running in a cluster, then `~/.kube/config`.
"""

from __future__ import annotations

import os

from kubernetes import client, config


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    configuration = client.Configuration()
    if kubeconfig or os.environ.get("KUBECONFIG"):
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(context=context, client_configuration=configuration)
    return client.ApiClient(configuration)
