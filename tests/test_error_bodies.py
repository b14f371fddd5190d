"""The JSON error body has one builder (``async_core.wire.error_body``) and its bytes are pinned.

Every place that answers an error before the first byte: the exceptions tree, the
Starlette app's 404/405/500, the Flask side's 404/405/500 and the read timeout's 408
(written by the server protocol before any app runs, without a ``type``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from flask import Flask

from async_core import Settings, create_app
from async_core import read_timeout as read_timeout_module
from async_core.exceptions import StreamBridgeError

NOT_FOUND = b'{"error":{"code":"not_found","message":"Not Found","type":"not_found"}}'
NOT_ALLOWED = (b'{"error":{"code":"method_not_allowed","message":"Method Not Allowed",'
               b'"type":"method_not_allowed"}}')
INTERNAL = (b'{"error":{"code":"internal_error","message":"internal server error",'
            b'"type":"internal_error"}}')
CASES = [("/nope", 404, NOT_FOUND), ("/v1/chat", 405, NOT_ALLOWED), ("/boom", 500, INTERNAL)]


def _every(cls: type[StreamBridgeError]) -> Iterator[type[StreamBridgeError]]:
    """The tree of ``async_core.exceptions`` (others take other constructor arguments)."""
    if cls.__module__ == "async_core.exceptions":
        yield cls
    for sub in cls.__subclasses__():
        yield from _every(sub)


@pytest.mark.parametrize("cls", list(_every(StreamBridgeError)), ids=lambda c: c.__name__)
def test_every_error_class_has_the_contract_body(cls: type[StreamBridgeError]) -> None:
    """``{"error": {"code", "message", "type"}}``, ``type`` being the code, in that order."""
    body = json.dumps(cls("a sentence").body(), separators=(",", ":"))
    code = cls.code
    assert body == f'{{"error":{{"code":"{code}","message":"a sentence","type":"{code}"}}}}'


async def _boom(request: object) -> None:
    raise RuntimeError("boom")


@pytest.mark.anyio
async def test_the_starlette_apps_own_errors_keep_their_bytes() -> None:
    """404, 405 and an unexpected exception's 500 from the native app."""
    app = create_app(Settings(database_url="none"))
    app.add_route("/boom", _boom)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for path, status, raw in CASES:
            r = await client.get(path)
            assert (r.status_code, r.content) == (status, raw), path


def test_the_flask_sides_own_errors_keep_their_bytes() -> None:
    """404, 405 and an unexpected exception's 500 from the reference Flask app."""
    from legacy_bridge.app import create_app as create_flask_app

    app: Flask = create_flask_app()

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    client = app.test_client()
    for path, status, raw in CASES:
        r = client.get(path)
        assert (r.status_code, r.data) == (status, raw), path


def test_the_read_timeouts_408_keeps_its_bytes() -> None:
    """The 408 the protocol writes itself: spaced JSON and no ``type``, as it always was."""
    assert read_timeout_module._BODY_408 == (
        b'{"error": {"code": "request_timeout", "message": '
        b'"the request was not received in time"}}')
