"""Leader election on a coordination.k8s.io Lease, client-go's algorithm.

Candidates read the Lease every `retry_period`. A candidate takes it when nobody holds it, or when
the holder's record has not changed for `lease_duration` as measured on the candidate's own
monotonic clock (no trust in other machines' clocks); updates carry the resourceVersion, so of two
candidates racing only one wins. The leader renews every `retry_period` and steps down when it
could not renew for `renew_deadline` (< `lease_duration`, so it stops working before anyone else
may start). On a clean shutdown the leader releases the Lease, and a standby takes over within one
`retry_period` instead of a full `lease_duration`.

Every Lease call is bounded by what is left of the renew deadline (request timeouts; the lease
client has no urllib3 retries), so a leader whose API server vanished steps down on time instead of
hanging in a request. Failures are logged at WARNING and counted by `on_error(operation, status)`
(the operator's `gdn_operator_lease_errors_total`); `reachable()` tells a standby that hears from
the API server from one that cannot reach the Lease.

Why not `kubernetes.leaderelection`: it cannot be stopped, never releases the Lease (a rolling
update would wait a whole lease duration) and binds to the global client configuration.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gdn_operator.kube.api import ApiError, KubeApi
from gdn_operator.kube.resources import LEASES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    def __post_init__(self) -> None:
        if not self.retry_period_s < self.renew_deadline_s < self.lease_duration_s:
            raise ValueError("need retry period < renew deadline < lease duration")


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: KubeApi,
        config: LeaseConfig,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[str, int], None] | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self.on_error = on_error or (lambda _operation, _status: None)
        self.is_leader = threading.Event()
        self._observed: Mapping[str, Any] | None = None  # the Lease spec last seen
        self._observed_at = 0.0
        self._contact_at: float | None = None  # the API server last answered about the Lease
        self._last_error = ""

    def run(
        self,
        stop: threading.Event,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
    ) -> None:
        """Block: wait for the Lease, lead until `stop` or a failed renewal, then step down."""
        if not self._acquire(stop):
            return
        self.is_leader.set()
        log.info("%s became the leader", self.config.identity)
        try:
            on_started_leading()
            self._renew(stop)
        finally:
            self.is_leader.clear()
            on_stopped_leading()
            if stop.is_set():
                self._release()

    def reachable(self) -> tuple[bool, str]:
        """Whether the API server answered about the Lease within the last lease duration."""
        if self._contact_at is None:
            detail = f": {self._last_error}" if self._last_error else ""
            return False, f"no answer about the Lease yet{detail}"
        silent = self.clock() - self._contact_at
        if silent > self.config.lease_duration_s:
            return False, f"cannot reach the Lease for {silent:.0f}s: {self._last_error}"
        return True, "the Lease is reachable"

    def _acquire(self, stop: threading.Event) -> bool:
        while not stop.is_set():
            if self.try_acquire_or_renew(self.clock() + self.config.renew_deadline_s):
                return True
            stop.wait(self.config.retry_period_s * (1 + 0.2 * random.random()))
        return False

    def _renew(self, stop: threading.Event) -> None:
        last_renewed = self.clock()
        while not stop.wait(self.config.retry_period_s):
            if self.try_acquire_or_renew(last_renewed + self.config.renew_deadline_s):
                last_renewed = self.clock()
            elif self.clock() - last_renewed > self.config.renew_deadline_s:
                log.error(
                    "%s lost the lease: no renewal for %.0fs (%s); stepping down",
                    self.config.identity,
                    self.config.renew_deadline_s,
                    self._last_error or "held by another",
                )
                return

    def try_acquire_or_renew(self, deadline: float | None = None) -> bool:
        """One round: read the Lease, take or renew it when allowed. Calls end by `deadline`."""
        cfg = self.config
        try:
            lease = self._bounded(deadline).get(LEASES, cfg.name, cfg.namespace)
        except ApiError as exc:
            if exc.not_found:
                self._contact()
                return self._create(deadline)
            self._failed("get", exc)
            return False
        except _DeadlinePassed:
            return False
        self._contact()
        spec = lease.get("spec") or {}
        now = self.clock()
        if spec != self._observed:
            self._observed, self._observed_at = spec, now
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration_s)
        if holder and holder != cfg.identity and now < self._observed_at + duration:
            return False
        return self._update(lease, holder, deadline)

    def _bounded(self, deadline: float | None) -> KubeApi:
        if deadline is None:
            return self.api
        left = deadline - self.clock()
        if left <= 0:
            self._last_error = self._last_error or "the renew deadline passed"
            raise _DeadlinePassed
        return self.api.with_timeout(left)

    def _contact(self) -> None:
        self._contact_at = self.clock()

    def _failed(self, operation: str, exc: ApiError) -> None:
        self._last_error = f"{operation}: {exc}"
        self.on_error(operation, exc.status)
        if exc.conflict:  # another candidate wrote first: contention, not trouble
            log.info("lease %s lost a race: %s", operation, exc)
            self._contact()
        else:  # no answer, or one that is no use (403, 5xx): the Lease is out of reach
            log.warning("lease %s failed: %s", operation, exc)

    def _record(self, acquired_at: str | None, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": int(self.config.lease_duration_s),
            "acquireTime": acquired_at or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _create(self, deadline: float | None) -> bool:
        cfg = self.config
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace},
            "spec": self._record(None, 0),
        }
        return self._write("create", body, deadline)

    def _update(self, lease: Mapping[str, Any], holder: str, deadline: float | None) -> bool:
        spec = lease.get("spec") or {}
        ours = holder == self.config.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        body = {
            **lease,
            "spec": self._record(spec.get("acquireTime") if ours else None, transitions),
        }
        return self._write("update", body, deadline)

    def _write(self, operation: str, body: Mapping[str, Any], deadline: float | None) -> bool:
        try:
            api = self._bounded(deadline)
            verb = api.create if operation == "create" else api.replace
            written = verb(LEASES, body)
        except ApiError as exc:
            self._failed(operation, exc)
            return False
        except _DeadlinePassed:
            return False
        self._contact()
        self._observed, self._observed_at = written.get("spec") or {}, self.clock()
        return True

    def _release(self) -> None:
        """Hand the Lease back: empty holder, 1 s duration, so a standby need not wait."""
        cfg = self.config
        api = self.api.with_timeout(cfg.renew_deadline_s)
        try:
            lease = api.get(LEASES, cfg.name, cfg.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            spec = {
                **lease["spec"],
                "holderIdentity": None,
                "leaseDurationSeconds": 1,
                "renewTime": _micro_time(),
            }
            api.replace(LEASES, {**lease, "spec": spec})
            log.info("%s released the lease", cfg.identity)
        except ApiError as exc:
            self._failed("release", exc)


class _DeadlinePassed(Exception):
    """Internal: no time left for another Lease call before the renew deadline."""
