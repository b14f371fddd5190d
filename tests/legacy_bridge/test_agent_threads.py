"""The agent threads of the native glue (``AgentThreads``): starting one never waits for it."""

from __future__ import annotations

import sys
import threading
import time

from legacy_bridge._threads import AgentThreads


def test_starting_an_agent_thread_does_not_wait_for_the_gil() -> None:
    """With three threads holding the GIL for 0.1 s at a time, ``run`` returns at once,
    and the job runs: the caller (the loop thread, during a burst) never waits for the
    new thread to be scheduled (``Thread.start`` did: issue 10, "Load")."""
    stop = threading.Event()
    spinning = threading.Semaphore(0)

    def spin() -> None:  # pure bytecode: holds the GIL until forced to switch
        spinning.release()
        while not stop.is_set():
            pass

    spinners = [threading.Thread(target=spin, daemon=True) for _ in range(3)]
    interval = sys.getswitchinterval()
    threads, ran = AgentThreads(threading.Lock, idle_s=0.1), threading.Event()
    try:
        for spinner in spinners:
            spinner.start()
            assert spinning.acquire(timeout=5)
        sys.setswitchinterval(0.1)
        started = time.monotonic()
        threads.run(ran.set)
        elapsed = time.monotonic() - started
        assert ran.wait(5)
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for spinner in spinners:
            spinner.join(5)
        threads.retire_idle()
    assert elapsed < 0.05, f"run() waited {elapsed:.2f} s for the new thread"
