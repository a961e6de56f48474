"""The work queue: de-duplication, one worker per key, backoff, bounded concurrency."""

from __future__ import annotations

import threading
import time

import pytest

from gdn_operator.control.queue import WorkQueue
from gdn_operator.kube.backoff import Backoff


def test_backoff_is_exponential_capped_jittered_and_honours_retry_after() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0, jitter=0.2)
    middle = [backoff.delay(n, rand=lambda: 0.5) for n in range(1, 6)]
    assert middle == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff.delay(3, rand=lambda: 0.0) == pytest.approx(3.2)
    assert backoff.delay(3, rand=lambda: 1.0) == pytest.approx(4.8)
    assert backoff.delay(1, retry_after_s=30, rand=lambda: 0.5) == 30  # the server knows best
    assert backoff.delay(4, retry_after_s=1, rand=lambda: 0.5) == 8.0


def test_adding_a_waiting_key_again_does_nothing() -> None:
    queue = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    assert [queue.get(0), queue.get(0), queue.get(0)] == ["a", "b", None]


def test_a_key_is_never_handed_out_twice_at_once() -> None:
    queue = WorkQueue()
    queue.add("a")
    assert queue.get(0) == "a"
    queue.add("a")  # changed while being processed
    assert queue.get(0) is None  # ... but not handed to a second worker
    queue.done("a")
    assert queue.get(0) == "a"  # processed again afterwards, once
    queue.done("a")
    assert queue.get(0) is None


def test_delayed_and_rate_limited_keys() -> None:
    queue = WorkQueue(backoff=Backoff(base_s=0.05, cap_s=1.0, jitter=0.0))
    queue.add_after("later", 0.1)
    started = time.monotonic()
    assert queue.get(1.0) == "later"
    assert time.monotonic() - started >= 0.09
    queue.done("later")
    delays = [queue.add_rate_limited("flaky") for _ in range(3)]
    assert delays == pytest.approx([0.05, 0.1, 0.2])
    assert queue.failures("flaky") == 3
    queue.forget("flaky")
    assert queue.add_rate_limited("flaky") == pytest.approx(0.05)
    assert queue.add_rate_limited("throttled", retry_after_s=0.3) == pytest.approx(0.3)


def test_depth_is_reported() -> None:
    depths: list[int] = []
    queue = WorkQueue(on_depth=depths.append)
    queue.add("a")
    queue.add("b")
    queue.get(0)
    assert depths == [1, 2, 1]


def test_bounded_concurrency_and_every_key_processed_once() -> None:
    queue = WorkQueue()
    lock = threading.Lock()
    busy, peak, seen = [0], [0], []

    def worker() -> None:
        while (key := queue.get()) is not None:
            with lock:
                busy[0] += 1
                peak[0] = max(peak[0], busy[0])
                seen.append(key)
            time.sleep(0.005)
            with lock:
                busy[0] -= 1
            queue.done(key)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(40):
        queue.add(f"k{i % 20}")  # every key twice, most while still waiting
    deadline = time.monotonic() + 5
    while len(set(seen)) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    queue.shutdown()
    for t in threads:
        t.join(2)
    assert set(seen) == {f"k{i}" for i in range(20)}
    assert len(seen) <= 40 and peak[0] <= 3


def test_shutdown_releases_waiting_workers() -> None:
    queue = WorkQueue()
    result: list[str | None] = []
    thread = threading.Thread(target=lambda: result.append(queue.get()))
    thread.start()
    queue.shutdown()
    thread.join(2)
    assert result == [None]
