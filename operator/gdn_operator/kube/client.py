"""Building the API client: in-cluster, from KUBECONFIG, or from --kubeconfig, like any controller.

Order (as controller-runtime): an explicit `--kubeconfig`, then `$KUBECONFIG`, then the Pod's
ServiceAccount when running in a cluster, then `~/.kube/config`.
"""

from __future__ import annotations

import copy
import os

from kubernetes import client, config
from urllib3.util.retry import Retry


def load_configuration(
    kubeconfig: str | None = None, context: str | None = None
) -> client.Configuration:
    configuration = client.Configuration()
    if kubeconfig or os.environ.get("KUBECONFIG"):
        config.load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(context=context, client_configuration=configuration)
    return configuration


def new_api_client(
    configuration: client.Configuration, connect_retries: int = 3
) -> client.ApiClient:
    """An ApiClient of its own (own connection pool and retry policy) on a copy of `configuration`.

    The leader elector gets one with `connect_retries=0`: each of its calls must end within what
    is left of the renew deadline, and a retried connect would add a whole connect timeout.
    """
    return client.ApiClient(without_hidden_retries(copy.deepcopy(configuration), connect_retries))


def without_hidden_retries(
    configuration: client.Configuration, connect_retries: int = 3
) -> client.Configuration:
    """Let urllib3 retry only failed connects; every other retry is the operator's own.

    urllib3's default policy retries 429/503 answers after sleeping their Retry-After, inside
    the call: a worker or a watch would block unseen, and the operator's backoff, its metrics and
    the leader's renew deadline would not see what happens. Requests that reached the server are
    not retried here either (a repeated POST would create a second Event).
    """
    configuration.retries = Retry(
        total=connect_retries,
        connect=connect_retries,
        read=0,
        status=0,
        other=0,
        redirect=0,
        respect_retry_after_header=False,
    )
    return configuration
