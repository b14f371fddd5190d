"""gunicorn configuration for the legacy path, with the lifecycle hooks the seam needs.

Use: ``gunicorn -c python:legacy_bridge.gunicorn_conf 'legacy_bridge.app:create_app()'``.
Everything here reads ``STREAMBRIDGE_*``; command-line flags still win.

Timeouts, outermost first (each must be longer than the one below it):

    orchestrator grace (e.g. Kubernetes terminationGracePeriodSeconds)
      > graceful_timeout = drain_grace + 1 s (terminal events) + 4 s margin
        > STREAMBRIDGE_DRAIN_GRACE (streams finish, then end with error "shutdown")

``timeout`` (worker liveness) does not limit streams: gthread's main thread and
gevent's hub keep notifying the arbiter while streams run in threads/greenlets.

Threads (gthread): one OS thread per open stream, plus a few for short requests.
``--threads 32`` means the 33rd concurrent stream waits for a thread (its first
chunk arrives only when one frees up), so size threads to your stream count:
``threads = STREAMBRIDGE_THREADS`` (default 64). gevent has no such cap below
``worker_connections`` (default 1000). A gthread worker runs with a GIL switch
interval of ``STREAMBRIDGE_SWITCH_INTERVAL`` (default 20 ms; Python's is 5 ms).

Start-up checks: before binding, the master checks what ``streambridge serve``
checks (settings, API keys, binding beyond loopback without keys, the agent
modules of ``STREAMBRIDGE_AGENTS``, the database, the webhooks) and the worker
class (``gthread`` or ``gevent``: the ``sync`` worker would hold one stream per
process). A problem is one line on stderr and exit status 2. A worker whose loop
cannot start exits with gunicorn's boot-error status, which stops the arbiter.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Any

from legacy_bridge._serve import WORKER_CLASS_PATHS

STREAMING_WORKERS = ("gthread", "gevent")


def _fail(message: str) -> None:
    print(f"streambridge: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _number(name: str, default: str, kind: type[int] | type[float] = int) -> Any:
    raw = os.environ.get(name, default).strip() or default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value != value or value < (1 if kind is int else 0):
        _fail(f"{name}={raw!r} must be a {'whole number >= 1' if kind is int else 'number >= 0'}")
    return value


_grace = _number("STREAMBRIDGE_DRAIN_GRACE", "10", float)
# gthread: how long a thread holding the GIL runs before a waiting one may take it
# (sys.setswitchinterval; Python's own is 5 ms, 0 keeps it). Each paced token wakes two
# threads of ours (the agent's, the view's) while the loop thread is busy: with 5 ms the
# GIL changed hands by force more often, 8.6 switches and 199 us of CPU per token against
# 7.4 and 180 us with 20 ms (scripts/bench_legacy.py, docs/ARCHITECTURE.md).
_switch_interval = _number("STREAMBRIDGE_SWITCH_INTERVAL", "0.02", float)

bind = os.environ.get("STREAMBRIDGE_BIND", "127.0.0.1:8000")
workers = _number("STREAMBRIDGE_WORKERS", "1")
# gthread and gevent run as streambridge's subclasses, which bound the time a client
# takes to send a request (STREAMBRIDGE_REQUEST_READ_TIMEOUT; legacy_bridge/_workers.py).
_worker = os.environ.get("STREAMBRIDGE_WORKER_CLASS", "gthread")
worker_class = WORKER_CLASS_PATHS.get(_worker, _worker)
threads = _number("STREAMBRIDGE_THREADS", "64")
worker_connections = _number("STREAMBRIDGE_WORKER_CONNECTIONS", "1000")
graceful_timeout = int(_grace + 5.999)
timeout = 30
keepalive = 5
preload_app = False  # the loop starts after fork either way; see post_worker_init
# gunicorn 27 would otherwise create a control socket under ~/.gunicorn (PITFALLS).
control_socket_disable = True

# Metrics from every worker: prometheus_client reads this before it is imported.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="streambridge-prom-")


def on_starting(server: Any) -> None:
    """In the master, before it binds: refuse a bad configuration with one line."""
    # The class as given: gunicorn quietly turns "sync" into gthread when threads > 1.
    given = str(server.cfg.settings["worker_class"].get())
    bases = {c.__name__ for c in server.cfg.worker_class.__mro__}
    if given.lower() == "sync" or not bases & {"ThreadWorker", "GeventWorker"}:
        _fail(f"worker class {given!r} cannot stream: use "
              f"{' or '.join(STREAMING_WORKERS)} (--worker-class / STREAMBRIDGE_WORKER_CLASS)")
    from async_core.store import preflight

    hosts = [a[0] for a in server.cfg.address if isinstance(a, tuple)] or ["127.0.0.1"]
    for host in hosts:
        problem = preflight(host or "0.0.0.0")
        if problem is not None:
            _fail(problem)


def post_fork(server: Any, worker: Any) -> None:
    """In the worker: a configuration error while the app loads is one line, exit 3.

    The app (``StreamBridge(app)``) loads the agents of ``STREAMBRIDGE_AGENTS`` in the
    worker; gunicorn would print a traceback. Our configuration errors are reported in
    one line with gunicorn's boot-error status (the arbiter stops); any other error in
    the user's app keeps gunicorn's traceback, which points at their code.
    """
    from async_core.exceptions import StreamBridgeError

    load_wsgi = worker.load_wsgi

    def load_wsgi_reporting_config_errors() -> None:
        try:
            load_wsgi()
        except (StreamBridgeError, ValueError) as error:
            reason = getattr(error, "message", None) or " ".join(str(error).split())
            print(f"streambridge: worker {os.getpid()} cannot start: {reason}",
                  file=sys.stderr, flush=True)
            raise SystemExit(3) from None

    worker.load_wsgi = load_wsgi_reporting_config_errors


def post_worker_init(worker: Any) -> None:
    """After fork (and after gevent's patch_all): start the loop, chain SIGTERM to a drain."""
    from async_core import Settings, gunicorn_worker_started
    from legacy_bridge._bridge import bridges

    # Log lines shown; connections inherit the listener's send buffer: a client that
    # stops reading blocks our writes after about this much, so the send timeout
    # catches it soon.
    gunicorn_worker_started(worker.sockets, Settings.from_env().socket_send_buffer)
    monkey = sys.modules.get("gevent.monkey")
    if _switch_interval and not (monkey is not None and monkey.is_module_patched("threading")):
        sys.setswitchinterval(_switch_interval)  # the whole worker process: gthread only
    for bridge in bridges():
        try:
            bridge.start()
        except Exception as error:  # reported in one line, then the worker exits
            reason = getattr(error, "message", None) or " ".join(str(error).split())
            print(f"streambridge: worker {os.getpid()} cannot start: {reason}",
                  file=sys.stderr, flush=True)
            # gunicorn's boot-error status: the arbiter stops instead of re-forking.
            raise SystemExit(3) from None
    previous = signal.getsignal(signal.SIGTERM)

    def drain_then_exit(sig: int, frame: Any) -> None:
        # gunicorn has no "graceful stop begins" hook: drain first (readyz 503, new
        # streams 503, running ones get the grace and a terminal event), then let
        # gunicorn's own handler stop the worker.
        for bridge in bridges():
            bridge.begin_drain()

        def wait_then_forward() -> None:
            for bridge in bridges():
                bridge.wait_drained(_grace + 1.0)
                bridge.close_sockets()  # WebSockets hold a thread or greenlet each
            if callable(previous):
                previous(sig, frame)

        _native_thread(wait_then_forward)

    signal.signal(signal.SIGTERM, drain_then_exit)


def worker_exit(server: Any, worker: Any) -> None:
    """Stop the loop thread: end what still runs, close queues, wait for agents."""
    from legacy_bridge._bridge import bridges

    for bridge in bridges():
        bridge.stop(timeout=max(graceful_timeout / 2, 1.0))


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (Prometheus multiprocess mode)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def _native_thread(fn: Any) -> None:
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        monkey.get_original("_thread", "start_new_thread")(fn, ())
    else:
        import threading

        threading.Thread(target=fn, daemon=True, name="streambridge-drain").start()
