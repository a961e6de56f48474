"""One operator replica: leader election around the controller, plus health for the probes.

Only the leader runs the controller. A replica that loses the Lease (it could not renew within the
renew deadline, e.g. the API server is gone) stops its controller and `run` returns False, so the
process exits and Kubernetes restarts it as a fresh candidate, which is what client-go controllers
do too: a controller never keeps working on a lease it lost. Readiness: the leader once its caches
are listed; a standby while it hears from the Lease (not ready when it cannot reach it).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from gdn_operator.control.controller import Controller, ControllerOptions
from gdn_operator.control.leader import LeaderElector, LeaseConfig
from gdn_operator.control.metrics import OperatorMetrics
from gdn_operator.kube.api import KubeApi
from gdn_operator.kube.events import EventRecorder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorConfig:
    identity: str
    controller: ControllerOptions
    lease: LeaseConfig | None  # None: no leader election (one replica, development)


class Operator:
    def __init__(
        self,
        api: KubeApi,
        config: OperatorConfig,
        metrics: OperatorMetrics,
        lease_api: KubeApi | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.metrics = metrics
        self.recorder = EventRecorder(api, config.identity, time.monotonic)
        self.elector = (
            LeaderElector(lease_api or api, config.lease, on_error=self._lease_error)
            if config.lease
            else None
        )
        self.controller: Controller | None = None
        self._thread: threading.Thread | None = None

    def run(self, stop: threading.Event) -> bool:
        """Block until `stop` (True) or until leadership is lost (False)."""
        if self.elector is None:
            self._control(stop)
            return True
        controller_stop = threading.Event()

        def started() -> None:
            controller_stop.clear()
            self._thread = threading.Thread(
                target=self._control, args=(controller_stop,), name="controller", daemon=True
            )
            self._thread.start()

        def stopped() -> None:
            controller_stop.set()
            if self._thread is not None:
                self._thread.join(timeout=30)

        self.elector.run(stop, started, stopped)
        return stop.is_set()

    def _control(self, stop: threading.Event) -> None:
        self.controller = Controller(self.api, self.recorder, self.metrics, self.config.controller)
        self.metrics.leader.set(1)
        try:
            self.controller.run(stop)
        finally:
            self.metrics.leader.set(0)

    def _lease_error(self, operation: str, status: int) -> None:
        self.metrics.lease_errors.labels(operation, str(status)).inc()

    def healthy(self) -> tuple[bool, str]:
        leading = self.elector is None or self.elector.is_leader.is_set()
        if leading and self._thread is not None and not self._thread.is_alive():
            return False, "leader without a running controller"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.elector is not None and not self.elector.is_leader.is_set():
            # A standby is only useful if it could take over: it must hear from the Lease.
            reachable, detail = self.elector.reachable()
            return (True, "standby (not the leader)") if reachable else (False, detail)
        controller = self.controller
        if controller is not None and controller.ready():
            return True, "leading, caches synced"
        return False, "waiting for caches"
