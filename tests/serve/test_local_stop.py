"""`LocalStack.stop()` under a second Ctrl-C / SIGTERM: a real `LocalStack` in a child process
(Ray not started: its stop goes straight to ending the tree) with a real child process tree
that only dies by the kill loop; the test signals it again and again while it stops. The stop
begins on a first SIGINT (`gdn-serve run`'s way) or with none (a `with LocalStack(...)` block
that ends)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gdn_serve.serve.local import signals_ignored
from gdn_serve.serve.processes import child_environment
from tests.conftest import child_env

# The stack's tree: two children that ignore SIGTERM/SIGINT, so only stop()'s kill loop (its
# last step, after `timeout_s`) ends them.
SCRIPT = """
import signal, subprocess, sys
from gdn_serve.serve.local import LocalOptions, LocalStack, interrupt_on_signals

stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \\
    "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(600)"
children = [subprocess.Popen([sys.executable, "-c", stubborn]) for _ in range(2)]
stack = LocalStack(LocalOptions(), "/no/model")
stack._started = True  # as after start(): stop() has a tree to end
interrupt_on_signals()
print(" ".join(str(c.pid) for c in children), flush=True)
try:
    if sys.argv[1] == "on-signal":
        signal.pause()
except KeyboardInterrupt:
    pass
finally:
    print("stopping", flush=True)
    stack.stop(timeout_s=3.0)
    print("stopped", flush=True)
"""


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.mark.parametrize("begin", ["on-signal", "without-signal"])
def test_signals_during_stop_leave_no_process_of_the_tree(tmp_path: Path, begin: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, begin],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_environment(child_env()),
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    try:
        assert len(pids) == 2 and _alive(pids) == pids
        if begin == "on-signal":
            proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "stopping"
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):  # impatient user, then init
            time.sleep(0.3)
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "stopped" in out, out
        assert _alive(pids) == []
    finally:
        for pid in _alive(pids):
            psutil.Process(pid).kill()
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signals_ignored_restores_the_handlers_before(sig: signal.Signals) -> None:
    def handler(*_: object) -> None:
        raise AssertionError("not reached")

    before = signal.signal(sig, handler)
    try:
        with signals_ignored():
            assert signal.getsignal(sig) is signal.SIG_IGN
            signal.raise_signal(sig)  # ignored: nothing happens
        assert signal.getsignal(sig) is handler
    finally:
        signal.signal(sig, before)
