"""Decode timing: batch buckets, the sampled eager timer, and the reading of events recorded
inside CUDA graphs. The graph reader's logic runs here on FAKE events (no CUDA on this
machine); tests/gpu runs it on real ones inside a CUDA vLLM engine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gdn_serve.plugin import timing
from gdn_serve.plugin.timing import DecodeTimer, GraphPair, GraphTimings, batch_bucket


def test_batch_buckets_are_few_and_cover_every_batch() -> None:
    names = [batch_bucket(b) for b in (1, 2, 4, 5, 16, 17, 64, 65, 256, 257, 10_000)]
    assert names == ["1", "2-4", "2-4", "5-16", "5-16", "17-64", "17-64", "65-256", "65-256",
                     "257+", "257+"]  # fmt: skip
    assert len({batch_bucket(b) for b in range(1, 5000)}) == 6


def test_the_eager_timer_runs_every_call_and_times_one_in_n() -> None:
    seconds: list[tuple[float, int]] = []
    timer = DecodeTimer(every=3, on_seconds=lambda s, b: seconds.append((s, b)), cuda=False)
    ran: list[int] = []
    for batch in range(1, 8):
        timer.run(lambda: ran.append(len(ran)), batch)
    assert ran == list(range(7))
    assert [b for _, b in seconds] == [3, 6] and all(s >= 0 for s, _ in seconds)


def test_every_zero_times_nothing() -> None:
    seconds: list[float] = []
    timer = DecodeTimer(every=0, on_seconds=lambda s, b: seconds.append(s), cuda=False)
    for _ in range(100):
        timer.run(lambda: None, 1)
    assert seconds == [] and timer.calls == 0


@dataclass
class FakeEvent:
    """FAKE stand-in for a CUDA event: a time in ms, whether it completed, whether it was ever
    recorded at run time (elapsed_time refuses events that were not)."""

    at_ms: float = 0.0
    done: bool = True
    recorded: bool = True

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, other: FakeEvent) -> float:
        if not (self.recorded and other.recorded):
            raise RuntimeError("CUDA error: invalid resource handle")
        return other.at_ms - self.at_ms


def test_graph_pairs_are_read_once_per_replay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "capturing", lambda: False)
    seconds: list[tuple[float, int]] = []
    graphs = GraphTimings(lambda s, b: seconds.append((s, b)))
    graphs.reference = FakeEvent(0.0)
    replayed = GraphPair(8, FakeEvent(10.0), FakeEvent(10.004), last_begin_ms=-5.0)
    # recorded once when prepared, captured by a graph that never replays
    never = GraphPair(1, FakeEvent(-5.0), FakeEvent(-4.999), last_begin_ms=-5.0)
    in_flight = GraphPair(2, FakeEvent(recorded=False), FakeEvent(done=False))
    graphs.pairs = [replayed, never, in_flight]
    assert graphs.poll(now=100.0) == 1 and seconds == [(pytest.approx(4e-6), 8)]
    assert graphs.poll(now=100.5) == 0  # within POLL_S: not read again
    assert graphs.poll(now=102.0) == 0  # no new replay since: the same begin is not re-read
    replayed.begin.at_ms = 20.0  # the next replay has begun, its end is still the old one
    assert graphs.poll(now=104.0) == 0
    replayed.end.done, replayed.end.at_ms = False, 20.003  # end recorded, not yet complete
    assert graphs.poll(now=106.0) == 0
    replayed.end.done = True
    assert graphs.poll(now=108.0) == 1 and seconds[-1] == (pytest.approx(3e-6), 8)


def test_nothing_is_read_while_a_graph_is_captured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timing, "capturing", lambda: True)
    graphs = GraphTimings(lambda s, b: pytest.fail("read during capture"))
    graphs.reference = FakeEvent(0.0)
    graphs.pairs = [GraphPair(8, FakeEvent(1.0), FakeEvent(2.0))]
    assert graphs.poll(now=100.0) == 0
