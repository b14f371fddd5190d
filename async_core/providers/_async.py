"""The async twin: one provider stream as an async generator on ``httpx``.

Runs on the event loop as the engine's producer task. Cancellation (client gone,
stream cancelled, timeout) arrives as ``CancelledError`` at the pending read or as
``GeneratorExit`` at a ``yield``; either way the ``finally`` closes the response,
and with it the upstream connection, so the upstream sees the disconnect.

One ``httpx.AsyncClient`` per event loop (its connections belong to that loop),
created on first use: a client per stream would pay for an SSL context each time.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator

import httpx

from ..agents import AgentItem, AgentRequest
from . import _errors as errors
from ._parse import Provider, build_call, make_parser
from ._settings import ProviderSettings, provider_settings

_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary())


def _client(settings: ProviderSettings) -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None:
        size = settings.upstream_max_connections
        # Reads are bounded per chunk below; httpx's own read timeout is a backstop.
        timeout = httpx.Timeout(
            connect=settings.upstream_connect_timeout,
            read=max(settings.upstream_first_chunk_timeout, settings.upstream_idle_timeout),
            write=settings.upstream_connect_timeout, pool=settings.upstream_connect_timeout)
        client = httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=size,
                                                 max_keepalive_connections=size))
        _CLIENTS[loop] = client
    return client


async def stream_async(provider: Provider, request: AgentRequest,
                       settings: ProviderSettings | None = None) -> AsyncIterator[AgentItem]:
    """Stream one chat completion from ``provider``; yields deltas and markers.

    Raises:
        UpstreamError: the upstream failed (its ``code`` is what our client sees).
    """
    settings = settings or provider_settings()
    call = build_call(provider, request, settings, via="httpx")
    parser = make_parser(provider)
    client = _client(settings)
    first, idle = settings.upstream_first_chunk_timeout, settings.upstream_idle_timeout
    loop = asyncio.get_running_loop()
    first_deadline = loop.time() + first
    req = client.build_request("POST", call.url, content=call.body, headers=call.headers)
    try:
        async with asyncio.timeout_at(first_deadline):
            response = await client.send(req, stream=True)
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
            body = await _read_limited(response)
            raise errors.from_status(provider, response.status_code, body,
                                     response.headers.get("Retry-After"),
                                     max_retry_after=settings.upstream_max_retry_after)
        chunks = response.aiter_bytes()
        deadline = first_deadline
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            got_first = True
            deadline = loop.time() + idle
            # Read on after the terminal chunk: the body's end keeps the connection.
            for item in parser.feed(chunk):
                yield item
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
