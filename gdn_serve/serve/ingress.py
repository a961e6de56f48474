"""One OpenAI ingress over several LLM deployments of the same model, one per GPU arch.

Ray Serve LLM's `OpenAiIngress` maps each model id to one deployment. `ArchBalancedIngress`
keeps all of its OpenAI handling and swaps in, for the served model, a handle that sends each
request to the least loaded arch deployment (`balance.LeastLoaded`) and counts it in flight
there until its response stream ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from ray.serve.handle import DeploymentHandle
from ray.serve.llm.ingress import OpenAiIngress

from gdn_serve.serve.balance import LeastLoaded


async def _released_after(
    stream: AsyncIterator[Any], balancer: LeastLoaded, arch: str
) -> AsyncIterator[Any]:
    try:
        async for item in stream:
            yield item
    finally:
        balancer.release(arch)


class _BalancedMethod:
    def __init__(self, handles: Mapping[str, Any], method: str, balancer: LeastLoaded) -> None:
        self._handles, self._method, self._balancer = handles, method, balancer

    def remote(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        arch = self._balancer.acquire()
        try:
            stream = getattr(self._handles[arch], self._method).remote(*args, **kwargs)
        except BaseException:
            self._balancer.release(arch)
            raise
        return _released_after(stream, self._balancer, arch)


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


class ArchBalancedIngress(OpenAiIngress):
    def __init__(
        self,
        arch_deployments: dict[str, DeploymentHandle],
        model_card: Any,
        capacity: dict[str, float],
    ) -> None:
        self._served_id = model_card.id
        streaming = {arch: h.options(stream=True) for arch, h in arch_deployments.items()}
        self._balanced = BalancedHandle(streaming, LeastLoaded(capacity))
        first = next(iter(arch_deployments.values()))
        super().__init__(
            llm_deployments={self._served_id: first}, model_cards={self._served_id: model_card}
        )

    def _get_configured_serve_handle(self, model_id: str) -> Any:
        if model_id == self._served_id:
            return self._balanced
        return super()._get_configured_serve_handle(model_id)  # unknown ids: its 404
