"""Building the API client: in-cluster, from KUBECONFIG, or from --kubeconfig, like any controller.

Order (as controller-runtime): an explicit `--kubeconfig`, then `$KUBECONFIG`, then the Pod's
ServiceAccount when running in a cluster, then `~/.kube/config`.
"""

from __future__ import annotations

import os

from kubernetes import client, config
from urllib3.util.retry import Retry


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
    return client.ApiClient(without_hidden_retries(configuration))


def without_hidden_retries(configuration: client.Configuration) -> client.Configuration:
    """Let urllib3 retry only failed connects; every other retry is the operator's own.

    urllib3's default policy retries 429/503 answers after sleeping their Retry-After, inside
    the call: a worker or a watch would block unseen, and the operator's backoff, its metrics and
    the leader's renew deadline would not see what happens. Requests that reached the server are
    not retried here either (a repeated POST would create a second Event).
    """
    configuration.retries = Retry(
        total=3, connect=3, read=0, status=0, other=0, redirect=0, respect_retry_after_header=False
    )
    return configuration
