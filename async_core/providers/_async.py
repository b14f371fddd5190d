"""The async twin: one provider stream as an async generator on ``httpx``.

Runs on the event loop as the engine's producer task. Cancellation (client gone,
stream cancelled, timeout) arrives as ``CancelledError`` at the pending read or as
``GeneratorExit`` at a ``yield``; either way the ``finally`` closes the response,
and with it the upstream connection, so the upstream sees the disconnect.

One connection pool per event loop (its connections belong to that loop), created
on first use: a pool per stream would pay for an SSL context and a connection each
time. It is ours (``_transport.PoolTransport``: our HTTP/1.1 connections, parsed by
httptools, pooled in O(1), on plain asyncio sockets), unless an environment proxy applies to
the upstream: then an ``httpx.AsyncClient`` with httpx's own transport, as before.

Every read is bounded by this module's deadlines (first chunk, then idle per read),
so httpx's own read timeout is off: a second timer per token would only cost CPU.
On our transport the socket reads themselves enforce them (``bound_reads``).
"""

from __future__ import annotations

import asyncio
import functools
import urllib.request
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

import httpx

from ..agents import AgentItem, AgentRequest
from . import _errors as errors
from ._parse import Provider, build_call, make_parser
from ._settings import ProviderSettings, provider_settings
from ._transport import PoolTransport, bound_reads

# What httpx.AsyncClient adds to a request (the upstream sees the same bytes as before).
_DEFAULT_HEADERS = (("Accept-Encoding", "gzip, deflate"), ("Connection", "keep-alive"))

Send = Callable[[httpx.Request], Awaitable[httpx.Response]]
_SENDERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Send]] = (
    weakref.WeakKeyDictionary())


def _sender(settings: ProviderSettings, url: str) -> Send:
    """How this loop sends a request to ``url``: our pool, or httpx's client if proxied.

    Our transport is called directly: ``AsyncClient.send`` costs about 150 µs per
    request (auth and redirect flows, and a cookie jar that an upstream's cookies
    have no business in), paid by every stream of a burst in turn.
    """
    loop = asyncio.get_running_loop()
    senders = _SENDERS.setdefault(loop, {})
    key = "proxied" if _env_proxied(url) else "direct"
    send = senders.get(key)
    if send is None:
        size = settings.upstream_max_connections
        if key == "proxied":
            client = httpx.AsyncClient(limits=httpx.Limits(
                max_connections=size, max_keepalive_connections=size))

            async def send(request: httpx.Request) -> httpx.Response:
                return await client.send(request, stream=True)
        else:
            transport = PoolTransport(httpx.create_ssl_context(), max_connections=size,
                                      max_keepalive=size)

            async def send(request: httpx.Request) -> httpx.Response:
                response = await transport.handle_async_request(request)
                response.request = request
                return response
        senders[key] = send
    return send


@functools.lru_cache(maxsize=64)
def _env_proxied(url: str) -> bool:
    """Whether ``HTTP(S)_PROXY``/``ALL_PROXY`` (minus ``NO_PROXY``) route ``url``."""
    proxies = urllib.request.getproxies()
    parts = urlsplit(url)
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.hostname or "")


async def stream_async(provider: Provider, request: AgentRequest,
                       settings: ProviderSettings | None = None) -> AsyncIterator[AgentItem]:
    """Stream one chat completion from ``provider``; yields deltas and markers.

    Raises:
        UpstreamError: the upstream failed (its ``code`` is what our client sees).
    """
    settings = settings or provider_settings()
    call = build_call(provider, request, settings, via="httpx")
    parser = make_parser(provider)
    send = _sender(settings, call.url)
    first, idle = settings.upstream_first_chunk_timeout, settings.upstream_idle_timeout
    loop = asyncio.get_running_loop()
    first_deadline = loop.time() + first
    connect = settings.upstream_connect_timeout
    req = httpx.Request("POST", call.url, content=call.body,
                        headers=[*_DEFAULT_HEADERS, *call.headers.items()],
                        extensions={"timeout": {"connect": connect, "read": None,
                                                "write": connect, "pool": connect}})
    try:
        async with asyncio.timeout_at(first_deadline):
            response = await send(req)
    except (httpx.ConnectTimeout, httpx.PoolTimeout):
        raise errors.unreachable(provider, "connect timeout") from None
    except (TimeoutError, httpx.ReadTimeout):
        raise errors.timed_out(provider, True, first) from None
    except httpx.ConnectError as e:
        raise errors.unreachable(provider, _reason(e)) from None
    except httpx.TransportError as e:
        raise errors.dropped(provider, _reason(e)) from None
    got_first = False
    try:
        if response.status_code >= 400:
            async with asyncio.timeout_at(first_deadline):
                body = await _read_limited(response)
            raise errors.from_status(provider, response.status_code, body,
                                     response.headers.get("Retry-After"),
                                     max_retry_after=settings.upstream_max_retry_after)
        # No content coding (the upstreams send none when streaming): the raw body,
        # without httpx's decoder and re-chunking layers on every token.
        coded = response.headers.get("Content-Encoding", "identity").lower() != "identity"
        # On our transport the socket reads enforce the deadlines (a timer only when
        # a read waits); elsewhere a timeout scope around each chunk does. There the
        # raw body is read from its stream itself: httpx's aiter_raw adds a generator
        # and a context manager per chunk and nothing this loop uses.
        bounded = bound_reads(response, deadline=first_deadline)
        chunks = response.aiter_bytes() if coded else (
            aiter(response.stream) if bounded else response.aiter_raw())  # type: ignore[arg-type]
        deadline = first_deadline
        while True:
            try:
                if bounded:
                    chunk = await anext(chunks)
                else:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            if not got_first:
                got_first = True
                if bounded:
                    bound_reads(response, idle=idle)
            deadline = loop.time() + idle
            # Read on after the terminal chunk: the body's end keeps the connection.
            for item in parser.feed(chunk):
                yield item
            if parser.error is not None:  # after the items that came before it
                raise parser.error
        for item in parser.close():
            yield item
    except (TimeoutError, httpx.TimeoutException):
        raise errors.timed_out(provider, not got_first, idle if got_first else first) from None
    except httpx.TransportError:
        raise errors.dropped(provider) from None
    finally:
        await response.aclose()


async def _read_limited(response: httpx.Response) -> bytes:
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= errors.MAX_ERROR_BODY:
            break
    return body[:errors.MAX_ERROR_BODY]


def _reason(error: httpx.TransportError) -> str:
    text = str(error).lower()
    for needle in ("connection refused", "connection reset", "incomplete chunked read",
                   "peer closed connection"):
        if needle in text:
            return needle
    return type(error).__name__
