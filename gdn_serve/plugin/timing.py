"""Decode latency per kernel call, in every way vLLM runs a decode step.

- Eager and PIECEWISE (our layer's Python runs at every step): one call in N per layer is
  bracketed by CUDA events (host clock on CPU); the pair is read back later, never waited for.
- Full CUDA graphs (`FULL_AND_PIECEWISE`, `FULL_DECODE_ONLY`, `FULL`): at replay no Python of
  ours runs. One layer per process (the first routed one) records a pair of external events into
  every graph it is captured in, around its kernel; CUDA writes them at each replay. They are
  read back from our eager calls (prefills, mixed batches, eager warm-ups: every new request
  brings one), at most once per `POLL_S`: each read yields the latest replay of each graph, so
  the samples are a sampling of replays, not every one.

What a sample measures: GPU time from the start to the end of our kernel call on the stream
(the launch itself for eager calls, when the GPU is idle at small batch; only the kernel's
execution under graph replay).

Rules that keep CUDA graph capture valid (torch captures in "global" mode, where an event query
or synchronisation from any thread invalidates the capture): nothing here queries an event
while the current stream is capturing, and no thread polls in the background: reads happen only
in calls that find the stream not capturing.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# Bounded label values for the batch size (a kernel's time at B=1 and B=256 differ by 100x).
BATCH_BUCKETS: tuple[int, ...] = (1, 4, 16, 64, 256)
POLL_S = 1.0
# Event pairs made ahead, outside any capture: one per graph the timed layer is captured in
# (vLLM captures up to ~51 sizes, plus the ones its memory profiling captures and discards).
GRAPH_PAIRS = 160

OnSeconds = Callable[[float, int], None]  # (seconds, batch size)


def batch_bucket(batch: int) -> str:
    """'1', '2-4', '5-16', '17-64', '65-256' or '257+': a few powers-of-four ranges."""
    low = 1
    for high in BATCH_BUCKETS:
        if batch <= high:
            return str(high) if high == low else f"{low}-{high}"
        low = high + 1
    return f"{low}+"


def capturing() -> bool:
    """Whether the current stream is capturing a CUDA graph (legal to ask during capture)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@dataclass
class GraphPair:
    """The events one captured graph records around our kernel at each replay."""

    batch: int
    begin: Any
    end: Any
    last_begin_ms: float | None = None  # position of the replay read last (dedupes reads)


@dataclass
class GraphTimings:
    """The pairs of every graph the timed layer was captured in, read between replays."""

    on_seconds: OnSeconds
    pairs: list[GraphPair] = field(default_factory=list)  # captured
    spare: list[tuple[Any, Any]] = field(default_factory=list)  # made ahead, not yet captured
    reference: Any = None  # an eager event: replays are told apart by their offset from it
    stale: dict[int, float] = field(default_factory=dict)  # id(begin) -> offset before capture
    next_poll: float = 0.0

    def prepare(self, count: int = GRAPH_PAIRS) -> None:
        """Outside a capture: make the events (creating one during a capture is not something
        to rely on) and record each once, so that a pair whose graph never replays (vLLM's
        memory profiling captures graphs and drops them) reads as unchanged, not as a sample."""
        if self.reference is not None or capturing():
            return
        self.spare = [
            (torch.cuda.Event(enable_timing=True, external=True),
             torch.cuda.Event(enable_timing=True, external=True))
            for _ in range(count)
        ]  # fmt: skip
        for begin, end in self.spare:
            begin.record()
            end.record()
        self.reference = torch.cuda.Event(enable_timing=True)
        self.reference.record()
        self.reference.synchronize()
        self.stale = {id(b): self.reference.elapsed_time(b) for b, _ in self.spare}

    def record(self, batch: int, call: Callable[[], object]) -> None:
        """Inside a capture: bracket `call` with event-record nodes of the graph (when a
        prepared pair is left; else the call runs untimed)."""
        if not self.spare:
            call()
            return
        begin, end = self.spare.pop()
        begin.record()
        call()
        end.record()
        self.pairs.append(GraphPair(batch, begin, end, self.stale.get(id(begin))))

    def poll(self, now: float | None = None) -> int:
        """Outside a capture: read each graph's latest replay, once. Returns samples taken."""
        now = time.monotonic() if now is None else now
        if not self.pairs or now < self.next_poll or capturing():
            return 0
        self.next_poll = now + POLL_S
        return sum(self._read(pair) for pair in self.pairs)

    def _read(self, pair: GraphPair) -> int:
        if not pair.end.query():
            return 0  # a replay in flight
        try:
            at = self.reference.elapsed_time(pair.begin)
            seconds = pair.begin.elapsed_time(pair.end) / 1e3
        except RuntimeError:
            return 0  # begin written by a replay still in flight
        # unchanged since the last read (or since prepare: never replayed), or the begin of
        # replay k+1 already written while the end is still replay k's (a negative span)
        if at == pair.last_begin_ms or seconds < 0:
            return 0
        pair.last_begin_ms = at
        self.on_seconds(seconds, pair.batch)
        return 1


@dataclass
class DecodeTimer:
    """Times decode calls: one in `every` eagerly, and (`graphs` set) every graph capture."""

    every: int  # 0: no timing at all
    on_seconds: OnSeconds
    cuda: bool
    graphs: GraphTimings | None = None  # set for the one layer per process timed in graphs
    calls: int = 0
    _pending: deque[tuple[Any, Any, int]] = field(default_factory=deque)

    def run(self, call: Callable[[], object], batch: int) -> None:
        if self.every == 0:
            call()
        elif self.cuda and capturing():
            if self.graphs is not None:
                self.graphs.record(batch, call)
            else:
                call()
        else:
            self._eager(call, batch)

    def poll(self) -> None:
        """Read what completed; only outside a capture (callers outside any kernel call)."""
        if self.every and self.cuda and not capturing():
            self._collect()
            if self.graphs is not None:
                self.graphs.poll()

    def _eager(self, call: Callable[[], object], batch: int) -> None:
        self.calls += 1
        if self.cuda:
            self._collect()
            if self.graphs is not None:
                self.graphs.poll()
        if self.calls % self.every:
            call()
        elif not self.cuda:
            start = time.perf_counter()
            call()
            self.on_seconds(time.perf_counter() - start, batch)
        else:
            began, ended = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            began.record()
            call()
            ended.record()
            self._pending.append((began, ended, batch))

    def _collect(self) -> None:
        while self._pending and self._pending[0][1].query():
            began, ended, batch = self._pending.popleft()
            self.on_seconds(began.elapsed_time(ended) / 1e3, batch)
