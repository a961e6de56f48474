"""Leader election on a coordination.k8s.io Lease, client-go's algorithm.

Candidates read the Lease every `retry_period`. A candidate takes it when nobody holds it, or when
the holder's record has not changed for `lease_duration` as measured on the candidate's own
monotonic clock (no trust in other machines' clocks); updates carry the resourceVersion, so of two
candidates racing only one wins. The leader renews every `retry_period` and steps down when it
could not renew for `renew_deadline` (< `lease_duration`, so it stops working before anyone else
may start). On a clean shutdown the leader releases the Lease, and a standby takes over within one
`retry_period` instead of a full `lease_duration`.

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
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        self.is_leader = threading.Event()
        self._observed: Mapping[str, Any] | None = None  # the Lease spec last seen
        self._observed_at = 0.0

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

    def _acquire(self, stop: threading.Event) -> bool:
        while not stop.is_set():
            if self.try_acquire_or_renew():
                return True
            stop.wait(self.config.retry_period_s * (1 + 0.2 * random.random()))
        return False

    def _renew(self, stop: threading.Event) -> None:
        last_renewed = self.clock()
        while not stop.wait(self.config.retry_period_s):
            if self.try_acquire_or_renew():
                last_renewed = self.clock()
            elif self.clock() - last_renewed > self.config.renew_deadline_s:
                log.error(
                    "%s lost the lease: no renewal for %.0fs",
                    self.config.identity,
                    self.config.renew_deadline_s,
                )
                return

    def try_acquire_or_renew(self) -> bool:
        cfg = self.config
        try:
            lease = self.api.get(LEASES, cfg.name, cfg.namespace)
        except ApiError as exc:
            return exc.not_found and self._create()
        spec = lease.get("spec") or {}
        now = self.clock()
        if spec != self._observed:
            self._observed, self._observed_at = spec, now
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or cfg.lease_duration_s)
        if holder and holder != cfg.identity and now < self._observed_at + duration:
            return False
        return self._update(lease, holder)

    def _record(self, acquired_at: str | None, transitions: int) -> dict[str, Any]:
        now = _micro_time()
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": int(self.config.lease_duration_s),
            "acquireTime": acquired_at or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _create(self) -> bool:
        cfg = self.config
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": cfg.name, "namespace": cfg.namespace},
            "spec": self._record(None, 0),
        }
        return self._write(self.api.create, body)

    def _update(self, lease: Mapping[str, Any], holder: str) -> bool:
        spec = lease.get("spec") or {}
        ours = holder == self.config.identity
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        body = {
            **lease,
            "spec": self._record(spec.get("acquireTime") if ours else None, transitions),
        }
        return self._write(self.api.replace, body)

    def _write(self, verb: Callable[..., dict[str, Any]], body: Mapping[str, Any]) -> bool:
        try:
            written = verb(LEASES, body)
        except ApiError as exc:  # 409: another candidate wrote first
            log.debug("lease write failed: %s", exc)
            return False
        self._observed, self._observed_at = written.get("spec") or {}, self.clock()
        return True

    def _release(self) -> None:
        """Hand the Lease back: empty holder, 1 s duration, so a standby need not wait."""
        cfg = self.config
        try:
            lease = self.api.get(LEASES, cfg.name, cfg.namespace)
            if (lease.get("spec") or {}).get("holderIdentity") != cfg.identity:
                return
            spec = {
                **lease["spec"],
                "holderIdentity": None,
                "leaseDurationSeconds": 1,
                "renewTime": _micro_time(),
            }
            self.api.replace(LEASES, {**lease, "spec": spec})
            log.info("%s released the lease", cfg.identity)
        except ApiError as exc:
            log.warning("could not release the lease: %s", exc)
