"""Least-loaded choice among arch deployments, weighted by live replicas and out while
unhealthy; the handle that applies it per request and releases each request's count whatever
its stream's fate; the health round over every arch."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gdn_serve.serve.balance import ArchHealth, LeastLoaded, live_replicas
from gdn_serve.serve.ingress import BalancedHandle, TrackedStream, health_round


def _spread(balancer: LeastLoaded, requests: int) -> dict[str, int]:
    for _ in range(requests):
        balancer.acquire()
    return balancer.in_flight()


def test_idle_requests_rotate_over_every_arch() -> None:
    balancer = LeastLoaded(["sm89", "sm90", "sm100"])
    chosen = []
    for _ in range(6):
        arch = balancer.acquire()
        balancer.release(arch)
        chosen.append(arch)
    assert chosen == ["sm89", "sm90", "sm100", "sm89", "sm90", "sm100"]


def test_before_any_health_round_every_arch_weighs_the_same() -> None:
    assert _spread(LeastLoaded(["sm89", "sm90"]), 8) == {"sm89": 4, "sm90": 4}


def test_in_flight_requests_spread_by_live_replicas_not_configured_ones() -> None:
    balancer = LeastLoaded(["sm89", "sm90"])
    balancer.observe({"sm89": ArchHealth(True, 1), "sm90": ArchHealth(True, 3)})
    assert _spread(balancer, 8) == {"sm89": 2, "sm90": 6}


def test_a_round_without_replica_counts_keeps_the_last_weights() -> None:
    balancer = LeastLoaded(["a", "b"])
    balancer.observe({"a": ArchHealth(True, 1), "b": ArchHealth(True, 3)})
    balancer.observe({"a": ArchHealth(True, None), "b": ArchHealth(True, None)})
    assert _spread(balancer, 4) == {"a": 1, "b": 3}


@pytest.mark.parametrize("finding", [ArchHealth(False, 2), ArchHealth(True, 0)])
def test_an_arch_unhealthy_or_without_running_replicas_is_out_until_healthy_again(
    finding: ArchHealth,
) -> None:
    balancer = LeastLoaded(["a", "b"])
    balancer.observe({"a": finding, "b": ArchHealth(True, 1)})
    assert balancer.out() == {"a"} and _spread(balancer, 3) == {"a": 0, "b": 3}
    balancer.observe({"a": ArchHealth(True, 1)})
    assert balancer.out() == set() and balancer.acquire() == "a"


def test_a_failed_request_takes_its_arch_out_until_a_round_finds_it_healthy() -> None:
    balancer = LeastLoaded(["a", "b"])
    balancer.failed("a")
    assert _spread(balancer, 2) == {"a": 0, "b": 2}
    balancer.observe({"a": ArchHealth(True, 1)})
    assert balancer.acquire() == "a"


def test_with_every_arch_out_requests_still_go_somewhere() -> None:
    balancer = LeastLoaded(["a", "b"])
    balancer.observe({"a": ArchHealth(False, 0), "b": ArchHealth(False, None)})
    assert _spread(balancer, 4) == {"a": 2, "b": 2}


def test_a_busy_arch_is_avoided_until_it_frees_up() -> None:
    balancer = LeastLoaded(["a", "b"])
    first, second = balancer.acquire(), balancer.acquire()
    assert {first, second} == {"a", "b"}
    balancer.acquire()  # both at 1: one of them goes to 2
    busy = max(balancer.in_flight(), key=balancer.in_flight().__getitem__)
    idle = "a" if busy == "b" else "b"
    assert balancer.acquire() == idle


def test_misuse_is_an_error() -> None:
    with pytest.raises(ValueError, match="distinct"):
        LeastLoaded([])
    with pytest.raises(ValueError, match="distinct"):
        LeastLoaded(["a", "a"])
    with pytest.raises(ValueError, match="without a request"):
        LeastLoaded(["a"]).release("a")
    with pytest.raises(ValueError, match="unknown arch"):
        LeastLoaded(["a"]).observe({"z": ArchHealth(True, 1)})


def test_live_replicas_counts_running_ones_by_enum_or_value() -> None:
    from ray.serve._private.common import ReplicaState

    assert live_replicas({ReplicaState.RUNNING: 2, ReplicaState.STARTING: 1}) == 2
    assert live_replicas({"RUNNING": 3, "STOPPING": 4}) == 3
    assert live_replicas({}) == 0


class StandInHandle:
    """A fake: stands in for a Serve DeploymentHandle (the real one is exercised in tests/e2e).
    `fail_after` parts, its stream raises; `hang`: its stream waits forever after one part."""

    def __init__(
        self,
        name: str,
        calls: list[tuple[str, str, Any]],
        opts: dict[str, Any] | None = None,
        fail_after: int | None = None,
        hang: bool = False,
    ) -> None:
        self.name, self.calls, self.opts = name, calls, opts or {}
        self.fail_after, self.hang = fail_after, hang
        self.deployment_name = f"llm-{name}"

    def options(self, **kwargs: Any) -> StandInHandle:
        return StandInHandle(
            self.name, self.calls, {**self.opts, **kwargs}, self.fail_after, self.hang
        )

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            def remote(self, body: str = "") -> Any:
                handle.calls.append((handle.name, method, handle.opts))
                if method == "check_health":
                    return handle._health()
                return handle._stream(body)

        return Method()

    async def _health(self) -> None:
        if self.fail_after is not None:
            raise RuntimeError(f"{self.name}: engine dead")
        if self.hang:
            await asyncio.Event().wait()

    async def _stream(self, body: str) -> AsyncIterator[str]:
        for index, part in enumerate((self.name, body)):
            if self.fail_after is not None and index >= self.fail_after:
                raise RuntimeError(f"{self.name}: replica died")
            await asyncio.sleep(0)
            yield part
            if self.hang:
                await asyncio.Event().wait()


def _handle(**kinds: dict[str, Any]) -> tuple[BalancedHandle, LeastLoaded, list[Any]]:
    calls: list[tuple[str, str, Any]] = []
    balancer = LeastLoaded(list(kinds))
    handles = {arch: StandInHandle(arch, calls, **kw) for arch, kw in kinds.items()}
    return BalancedHandle(handles, balancer), balancer, calls


def test_each_request_goes_to_one_arch_and_is_released_when_its_stream_ends() -> None:
    handle, balancer, calls = _handle(sm89={}, sm90={})
    handle = handle.options(session_id="s1")

    async def run() -> list[list[str]]:
        streams = [handle.chat.remote("hi") for _ in range(4)]
        assert sum(balancer.in_flight().values()) == 4
        return [[part async for part in s] for s in streams]

    outputs = asyncio.run(run())
    assert sorted(out[0] for out in outputs) == ["sm89", "sm89", "sm90", "sm90"]
    assert all(out[1] == "hi" for out in outputs)
    assert balancer.in_flight() == {"sm89": 0, "sm90": 0}
    assert {c[1] for c in calls} == {"chat"} and all(c[2] == {"session_id": "s1"} for c in calls)


def test_a_stream_never_iterated_is_released_when_dropped() -> None:
    handle, balancer, _ = _handle(a={})
    stream = handle.chat.remote("hi")
    assert balancer.in_flight() == {"a": 1}
    del stream
    gc.collect()
    assert balancer.in_flight() == {"a": 0}


def test_a_stream_closed_early_is_released_once() -> None:
    handle, balancer, _ = _handle(a={})

    async def run() -> None:
        stream = handle.chat.remote("hi")
        assert await stream.__anext__() == "a"
        await stream.aclose()
        assert balancer.in_flight() == {"a": 0}
        await stream.aclose()  # a second close (or the collector later) releases nothing more
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()

    asyncio.run(run())
    gc.collect()
    assert balancer.in_flight() == {"a": 0} and balancer.out() == set()


def test_a_cancelled_stream_is_released_and_its_arch_stays_in() -> None:
    """A client that disconnects mid-stream: Starlette cancels the task reading the stream."""
    handle, balancer, _ = _handle(a={"hang": True})

    async def run() -> None:
        stream = handle.chat.remote("hi")

        async def read() -> None:
            async for _ in stream:
                pass

        task = asyncio.create_task(read())
        await asyncio.sleep(0.01)
        assert balancer.in_flight() == {"a": 1}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert balancer.in_flight() == {"a": 0} and balancer.out() == set()


def test_a_stream_that_fails_is_released_and_takes_its_arch_out() -> None:
    handle, balancer, _ = _handle(bad={"fail_after": 1}, good={})

    async def run() -> list[str]:
        stream = handle.chat.remote("hi")  # the first request goes to "bad"
        with pytest.raises(RuntimeError, match="replica died"):
            async for _ in stream:
                pass
        return [await handle.chat.remote("x").__anext__() for _ in range(3)]

    assert asyncio.run(run()) == ["good"] * 3
    assert balancer.out() == {"bad"}
    gc.collect()
    assert balancer.in_flight() == {"bad": 0, "good": 0}


def test_a_tracked_stream_releases_exactly_once_whatever_happens() -> None:
    released: list[int] = []

    async def parts() -> AsyncIterator[int]:
        yield 1

    async def run() -> None:
        stream = TrackedStream(parts(), lambda: released.append(1), lambda: None)
        assert [p async for p in stream] == [1]
        await stream.aclose()

    asyncio.run(run())
    gc.collect()
    assert released == [1]


def test_a_health_round_probes_every_arch_and_counts_its_running_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gdn_serve.serve import ingress

    calls: list[tuple[str, str, Any]] = []
    handles = {
        "sm89": StandInHandle("sm89", calls),
        "sm90": StandInHandle("sm90", calls, fail_after=0),
        "sm100": StandInHandle("sm100", calls, hang=True),
    }
    counts = {"llm-sm89": 2, "llm-sm90": 1}  # sm100: no replica running
    # a fake of Serve's controller (the real one answers in tests/e2e/test_multi_arch.py)
    monkeypatch.setattr(ingress, "running_replicas", lambda app: counts if app == "app" else None)
    health = asyncio.run(health_round(handles, "app", timeout_s=0.05))
    assert {c[0] for c in calls if c[1] == "check_health"} == {"sm89", "sm90", "sm100"}
    assert health == {
        "sm89": ArchHealth(True, 2),
        "sm90": ArchHealth(False, 1),
        "sm100": ArchHealth(False, 0),
    }
    balancer = LeastLoaded(list(handles))
    balancer.observe(health)
    assert balancer.out() == {"sm90", "sm100"}


def test_a_controller_that_does_not_answer_in_time_leaves_the_weights_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gdn_serve.serve import ingress

    def slow_controller(app: str) -> dict[str, int]:  # a fake of Serve's controller
        time.sleep(0.5)
        return {"llm-a": 5}

    monkeypatch.setattr(ingress, "running_replicas", slow_controller)
    handles = {"a": StandInHandle("a", [])}

    async def timed() -> tuple[dict[str, ArchHealth], float]:
        started = time.monotonic()
        return await health_round(handles, "app", timeout_s=0.05), time.monotonic() - started

    health, took = asyncio.run(timed())
    assert health == {"a": ArchHealth(True, None)} and took < 0.5
