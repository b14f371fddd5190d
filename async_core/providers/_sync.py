"""The sync twin: one provider stream as a plain generator on ``requests`` (stream=True).

Runs in a worker thread (or greenlet) behind the bridge. Cancellation reaches it as
``GeneratorExit`` at its ``yield`` (the bridge closes the generator once its queue
is shut down): the ``finally`` closes the response, and with it the upstream TCP
connection, so the upstream stops generating (requests#3461: a response closed
before its end must be closed, or it leaks its pool slot).

Timeouts are socket-level, so a blocked read never outlives them: the connect
timeout, the first-chunk timeout (headers and first body bytes), then the idle
timeout per read once the first chunk arrived.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter

from ..agents import AgentItem, AgentRequest
from . import _errors as errors
from ._parse import ChunkParser, Provider, UpstreamCall, build_call, make_parser
from ._settings import ProviderSettings, provider_settings

_SESSIONS: dict[int, requests.Session] = {}  # one pool per process (after fork)
_SESSIONS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class _Route:
    """How this process sends one kind of request: prepared once, copied per request.

    ``Session.post`` prepares every request from scratch: it merges the session's
    headers, cookies and hooks, parses the URL and reads the environment (proxies,
    ``REQUESTS_CA_BUNDLE``, ``.netrc``) each time: about 60% of the twin's CPU per
    request. Those depend only on the URL and the headers, so they are worked out
    once, exactly as ``Session.post`` would, and each request copies the result and
    sets its body. Then the adapter sends it, as ``Session.send`` would, without the
    redirect and cookie-jar steps (an upstream chat API has no use for either; the
    async twin follows no redirect either).
    """

    adapter: HTTPAdapter
    template: requests.PreparedRequest
    options: dict[str, Any]  # verify, cert, proxies


def _session(settings: ProviderSettings) -> requests.Session:
    pid = os.getpid()
    session = _SESSIONS.get(pid)
    if session is None:
        with _SESSIONS_LOCK:
            session = _SESSIONS.get(pid)
            if session is None:
                session = requests.Session()
                # One connection per concurrent stream, kept alive for the next one.
                adapter = HTTPAdapter(pool_connections=4,
                                      pool_maxsize=settings.upstream_max_connections)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                _SESSIONS[pid] = session
    return session


_ROUTES: dict[tuple[int, str, tuple[tuple[str, str], ...]], _Route] = {}


def _route(settings: ProviderSettings, call: UpstreamCall) -> _Route:
    key = (os.getpid(), call.url, tuple(call.headers.items()))
    route = _ROUTES.get(key)
    if route is None:
        session = _session(settings)
        template = session.prepare_request(
            requests.Request("POST", call.url, headers=dict(call.headers)))
        env = session.merge_environment_settings(call.url, {}, True, None, None)
        adapter = session.get_adapter(call.url)
        assert isinstance(adapter, HTTPAdapter)
        route = _Route(adapter, template, {"verify": env["verify"], "cert": env["cert"],
                                           "proxies": env["proxies"]})
        with _SESSIONS_LOCK:
            _ROUTES.setdefault(key, route)
    return route


def stream_sync(provider: Provider, request: AgentRequest,
                settings: ProviderSettings | None = None) -> Iterator[AgentItem]:
    """Stream one chat completion from ``provider``; yields deltas and markers.

    Raises:
        UpstreamError: the upstream failed (its ``code`` is what our client sees).
    """
    settings = settings or provider_settings()
    call = build_call(provider, request, settings, via="requests")
    parser = make_parser(provider)
    first = settings.upstream_first_chunk_timeout
    route = _route(settings, call)
    prepared = route.template.copy()
    prepared.prepare_body(call.body, None)
    try:
        response = route.adapter.send(prepared, stream=True, timeout=(
            settings.upstream_connect_timeout, first), **route.options)
    except requests.ConnectTimeout:
        raise errors.unreachable(provider, "connect timeout") from None
    except requests.ReadTimeout:
        raise errors.timed_out(provider, True, first) from None
    except requests.ConnectionError as e:
        raise errors.unreachable(provider, _reason(e)) from None
    got_first = False
    # A read blocked on a silent upstream would outlive the stream until the idle
    # timeout: on cancel, the runner's thread shuts the socket down (the read returns,
    # the upstream sees FIN at once). Not after the terminal chunk: the connection
    # then goes back to the pool, and may already serve another stream.
    request.cancel.add_callback(lambda: _shutdown(response.raw, parser))
    try:
        if response.status_code >= 400:
            body = response.raw.read(errors.MAX_ERROR_BODY, decode_content=True) or b""
            raise errors.from_status(provider, response.status_code, body,
                                     response.headers.get("Retry-After"),
                                     max_retry_after=settings.upstream_max_retry_after)
        for chunk in _chunks(response.raw):
            if not got_first:
                got_first = True
                _set_read_timeout(response.raw, settings.upstream_idle_timeout)
            # Read on after the terminal chunk: the body's end returns the connection
            # to the pool instead of closing it.
            yield from parser.feed(chunk)
            if parser.error is not None:  # after the items that came before it
                raise parser.error
        yield from parser.close()
    except (urllib3.exceptions.ReadTimeoutError, TimeoutError):
        raise errors.timed_out(provider, not got_first, settings.upstream_idle_timeout
                               if got_first else first) from None
    except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
        raise errors.dropped(provider) from None
    finally:
        response.close()


def _chunks(raw: Any) -> Iterator[bytes]:
    """Body bytes as they arrive: each HTTP chunk, or whatever one recv returned."""
    if raw.chunked and raw.supports_chunked_reads():
        yield from raw.read_chunked(decode_content=True)
        return
    while True:
        data = raw.read1(65536, decode_content=True)
        if not data:
            return
        yield data


def _shutdown(raw: Any, parser: ChunkParser) -> None:
    with contextlib.suppress(AttributeError, OSError):
        if not parser.finished and raw.connection is not None:  # None once pooled
            raw.connection.sock.shutdown(socket.SHUT_RDWR)


def _set_read_timeout(raw: Any, seconds: float) -> None:
    # From the first chunk on, a read waits at most the idle timeout (not the longer
    # first-chunk one). urllib3 leaves the socket's timeout as set for the request.
    with contextlib.suppress(AttributeError, OSError):
        raw.connection.sock.settimeout(seconds)


def _reason(error: BaseException) -> str:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, ConnectionResetError):
            return "connection reset"
        for arg in getattr(seen, "args", ()):
            if isinstance(arg, BaseException):
                nested = _reason(arg)
                if nested != "connection failed":
                    return nested
        seen = seen.__cause__ or seen.__context__
    text = type(error).__name__
    return "connection failed" if text in ("ConnectionError", "MaxRetryError") else text
