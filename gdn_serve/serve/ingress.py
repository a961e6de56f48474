"""One OpenAI ingress over several LLM deployments of the same model, one per GPU arch.

Ray Serve LLM's `OpenAiIngress` maps each model id to one deployment. `ArchBalancedIngress`
keeps all of its OpenAI handling and swaps in, for the served model, a handle that sends each
request to the least loaded arch deployment that is serving (`balance.LeastLoaded`) and counts
it in flight there until its response stream is done, whatever its fate. Serve's periodic
health check of the ingress runs a health round over every arch: a probe of each deployment
and its running replica count from Serve's controller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

from ray import serve
from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request
from ray.serve.handle import DeploymentHandle
from ray.serve.llm.ingress import OpenAiIngress

from gdn_serve.serve.balance import ArchHealth, LeastLoaded, live_replicas

logger = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 10.0  # under Serve's 30 s health check timeout of the ingress itself


class TrackedStream:
    """An arch's response stream that releases its in-flight count exactly once: when it ends
    or raises, is closed or cancelled (a client that went away), or is garbage collected never
    iterated (the ingress dropped it). A stream that raises marks the arch failed."""

    def __init__(
        self, stream: AsyncIterator[Any], release: Callable[[], None], fail: Callable[[], None]
    ) -> None:
        self._stream, self._release, self._fail = stream, release, fail
        self._open = True

    def done(self) -> None:
        if self._open:
            self._open = False
            self._release()

    def __aiter__(self) -> TrackedStream:
        return self

    async def __anext__(self) -> Any:
        if not self._open:
            raise StopAsyncIteration
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self.done()
            raise
        except Exception:
            self._fail()
            self.done()
            raise
        except BaseException:  # cancelled: the request is over, the arch is not to blame
            self.done()
            raise

    async def aclose(self) -> None:
        self.done()
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()

    def __del__(self) -> None:
        self.done()


class _BalancedMethod:
    def __init__(self, handles: Mapping[str, Any], method: str, balancer: LeastLoaded) -> None:
        self._handles, self._method, self._balancer = handles, method, balancer

    def remote(self, *args: Any, **kwargs: Any) -> TrackedStream:
        balancer, arch = self._balancer, self._balancer.acquire()
        try:
            stream = getattr(self._handles[arch], self._method).remote(*args, **kwargs)
        except BaseException:
            balancer.release(arch)
            raise
        return TrackedStream(
            stream, release=lambda: balancer.release(arch), fail=lambda: balancer.failed(arch)
        )


class BalancedHandle:
    """Quacks like the streaming DeploymentHandle that OpenAiIngress calls methods on."""

    def __init__(self, handles: Mapping[str, Any], balancer: LeastLoaded) -> None:
        self._handles, self._balancer = dict(handles), balancer

    def options(self, **kwargs: Any) -> BalancedHandle:
        options = {arch: h.options(**kwargs) for arch, h in self._handles.items()}
        return BalancedHandle(options, self._balancer)

    def __getattr__(self, method: str) -> _BalancedMethod:
        if method.startswith("_"):
            raise AttributeError(method)
        return _BalancedMethod(self._handles, method, self._balancer)


async def probe(handle: Any, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the deployment behind `handle` answers its health check in time."""
    try:
        await asyncio.wait_for(handle.check_health.remote(), timeout_s)
        return True
    except Exception as exc:  # any failure, timeout included, counts as unhealthy
        logger.warning(
            "health probe of %s failed: %r", getattr(handle, "deployment_name", "?"), exc
        )
        return False


def running_replicas(app_name: str) -> dict[str, int] | None:
    """Running replicas per deployment of `app_name`, from Serve's controller; None when it
    cannot be asked."""
    try:
        app = serve.status().applications[app_name]
    except Exception as exc:
        logger.warning("no replica counts from Serve's controller: %r", exc)
        return None
    return {name: live_replicas(d.replica_states) for name, d in app.deployments.items()}


async def _replica_counts(app_name: str, timeout_s: float) -> dict[str, int] | None:
    try:
        return await asyncio.wait_for(asyncio.to_thread(running_replicas, app_name), timeout_s)
    except TimeoutError:
        logger.warning("Serve's controller gave no replica counts within %.0f s", timeout_s)
        return None


async def health_round(
    handles: Mapping[str, Any], app_name: str, timeout_s: float = PROBE_TIMEOUT_S
) -> dict[str, ArchHealth]:
    """Every arch probed and the running replicas counted, all at once and within `timeout_s`
    (the round runs inside Serve's health check of the ingress, which allows 30 s)."""
    names = list(handles)
    probes = asyncio.gather(*(probe(handles[arch], timeout_s) for arch in names))
    oks, counts = await asyncio.gather(probes, _replica_counts(app_name, timeout_s))
    return {
        arch: ArchHealth(
            healthy=ok,
            live_replicas=None if counts is None else counts.get(handles[arch].deployment_name, 0),
        )
        for arch, ok in zip(names, oks, strict=True)
    }


class ArchBalancedIngress(OpenAiIngress):
    def __init__(self, arch_deployments: dict[str, DeploymentHandle], model_card: Any) -> None:
        self._served_id = model_card.id
        self._arch_handles = dict(arch_deployments)
        streaming = {arch: h.options(stream=True) for arch, h in arch_deployments.items()}
        self._balancer = LeastLoaded(list(arch_deployments))
        self._balanced = BalancedHandle(streaming, self._balancer)
        first = next(iter(arch_deployments.values()))
        super().__init__(
            llm_deployments={self._served_id: first}, model_cards={self._served_id: model_card}
        )

    async def check_health(self) -> None:
        """Serve's health check of this replica, run every few seconds: a health round over
        the archs. It never fails for an arch's sake (that would restart the ingress, not the
        arch); the arch is taken out of the choice instead."""
        await super().check_health()
        app_name = serve.get_replica_context().app_name
        health = await health_round(self._arch_handles, app_name)
        self._balancer.observe(health)
        if out := self._balancer.out():
            logger.warning("archs out of the choice: %s (%s)", sorted(out), health)

    async def _get_response(
        self, *, body: Any, call_method: str, raw_request: Any = None
    ) -> AsyncGenerator[Any, None]:
        """Ray Serve LLM clears pydantic's unpicklable `ValidatorIterator`s from chat requests
        only; an embedding or score request with chat `messages` carries them too and failed
        to reach the LLM deployment (a 500). Cleared here for every request with messages."""
        if getattr(body, "messages", None) is not None:
            body = _sanitize_chat_completion_request(body)
        responses = super()._get_response(
            body=body, call_method=call_method, raw_request=raw_request
        )
        async for response in responses:
            yield response

    def _get_configured_serve_handle(self, model_id: str) -> Any:
        if model_id == self._served_id:
            return self._balanced
        return super()._get_configured_serve_handle(model_id)  # unknown ids: its 404
