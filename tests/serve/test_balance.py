"""Least-loaded choice among arch deployments, and the handle that applies it per request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gdn_serve.serve.balance import LeastLoaded
from gdn_serve.serve.ingress import BalancedHandle


def test_idle_requests_rotate_over_every_arch() -> None:
    balancer = LeastLoaded({"sm89": 1, "sm90": 1, "sm100": 1})
    chosen = []
    for _ in range(6):
        arch = balancer.acquire()
        balancer.release(arch)
        chosen.append(arch)
    assert chosen == ["sm89", "sm90", "sm100", "sm89", "sm90", "sm100"]


def test_in_flight_requests_spread_by_capacity() -> None:
    balancer = LeastLoaded({"sm89": 1, "sm90": 3})
    for _ in range(8):
        balancer.acquire()
    assert balancer.in_flight() == {"sm89": 2, "sm90": 6}


def test_a_busy_arch_is_avoided_until_it_frees_up() -> None:
    balancer = LeastLoaded({"a": 1, "b": 1})
    first = balancer.acquire()
    second = balancer.acquire()
    assert {first, second} == {"a", "b"}
    balancer.acquire()  # both at 1: one of them goes to 2
    busy = max(balancer.in_flight(), key=balancer.in_flight().__getitem__)
    idle = "a" if busy == "b" else "b"
    assert balancer.acquire() == idle


def test_misuse_is_an_error() -> None:
    with pytest.raises(ValueError, match="positive capacity"):
        LeastLoaded({"a": 0})
    with pytest.raises(ValueError, match="without a request"):
        LeastLoaded({"a": 1}).release("a")


class StandInHandle:
    """Stands in for a Serve DeploymentHandle (the real one is exercised in tests/e2e)."""

    def __init__(self, name: str, calls: list[tuple[str, str, Any]], opts: dict[str, Any]) -> None:
        self.name, self.calls, self.opts = name, calls, opts

    def options(self, **kwargs: Any) -> StandInHandle:
        return StandInHandle(self.name, self.calls, {**self.opts, **kwargs})

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            def remote(self, body: str) -> AsyncIterator[str]:
                handle.calls.append((handle.name, method, handle.opts))

                async def stream() -> AsyncIterator[str]:
                    for part in (handle.name, body):
                        await asyncio.sleep(0)
                        yield part

                return stream()

        return Method()


def test_each_request_goes_to_one_arch_and_is_released_when_its_stream_ends() -> None:
    calls: list[tuple[str, str, Any]] = []
    balancer = LeastLoaded({"sm89": 1, "sm90": 1})
    handle = BalancedHandle(
        {a: StandInHandle(a, calls, {}) for a in ("sm89", "sm90")}, balancer
    ).options(session_id="s1")

    async def run() -> list[list[str]]:
        streams = [handle.chat.remote("hi") for _ in range(4)]
        assert sum(balancer.in_flight().values()) == 4
        return [[part async for part in s] for s in streams]

    outputs = asyncio.run(run())
    assert sorted(out[0] for out in outputs) == ["sm89", "sm89", "sm90", "sm90"]
    assert all(out[1] == "hi" for out in outputs)
    assert balancer.in_flight() == {"sm89": 0, "sm90": 0}
    assert {c[1] for c in calls} == {"chat"} and all(c[2] == {"session_id": "s1"} for c in calls)
