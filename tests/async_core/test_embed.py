"""The engine inside another ASGI app: the contract under a prefix, the lifespan composed.

Buffered (``stream: false``) requests only, so ``httpx.ASGITransport`` is enough here;
the streaming behaviour inside a real FastAPI app under uvicorn is
``tests/examples/test_fastapi_example.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from async_core import Settings, StreamEngine, create_app

BODY = {"message": "hi", "stream": False, "options": {"tokens": 3}}


def _settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(database_path=str(tmp_path / "sb.sqlite3"), **kw)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_create_app_mounted_under_a_prefix_serves_the_contract(tmp_path: Path) -> None:
    """create_app() under /llm answers /llm/v1/chat (it was a 500 KeyError '/llm/v1/chat')."""
    inner = create_app(_settings(tmp_path), drain_on_sigterm=False)
    outer = Starlette(routes=[Mount("/llm", inner)], lifespan=inner.state.engine.lifespan)
    async with outer.router.lifespan_context(outer):
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/llm/v1/chat", json=BODY)
            assert r.status_code == 200, r.text
            r = await client.post("/llm/v1/chat/completions", json={
                "model": "demo", "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
            assert r.json()["object"] == "chat.completion"


@pytest.mark.anyio
async def test_public_paths_stay_public_under_a_prefix(tmp_path: Path) -> None:
    """With API keys, /llm/healthz needs none and /llm/v1/chat needs one (auth by route)."""
    engine = StreamEngine(_settings(tmp_path, api_keys="acme:sk-test-0123456789abcdef"),
                          drain_on_sigterm=False)
    outer = Starlette(routes=[Mount("/llm", engine.router())], lifespan=engine.lifespan)
    async with outer.router.lifespan_context(outer):
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/llm/healthz")).status_code == 200
            assert (await client.post("/llm/v1/chat", json=BODY)).status_code == 401
            r = await client.post("/llm/v1/chat", json=BODY,
                                  headers={"Authorization": "Bearer sk-test-0123456789abcdef"})
            assert r.status_code == 200, r.text


@pytest.mark.anyio
async def test_the_composed_lifespan_stores_the_conversation(tmp_path: Path) -> None:
    """The engine's lifespan inside the user's own: transcripts are stored and served."""
    engine = StreamEngine(_settings(tmp_path), drain_on_sigterm=False)
    seen: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        seen.append("user start")
        async with engine.lifespan(app):
            yield
        seen.append("user stop")

    outer = Starlette(routes=[Mount("/", engine.router())], lifespan=lifespan)
    async with outer.router.lifespan_context(outer):
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.post("/v1/chat", json={**BODY, "conversation_id": "conv-e1"})
            assert r.status_code == 200, r.text
            r = await client.get("/v1/conversations/conv-e1")
            assert r.status_code == 200, r.text
            assert [t["role"] for t in r.json()["turns"]] == ["user", "assistant"]
    assert seen == ["user start", "user stop"]


@pytest.mark.anyio
async def test_a_router_without_the_engine_lifespan_refuses_loudly(tmp_path: Path) -> None:
    """Mounted without its lifespan: a 503 not_started, never a silently unstored stream."""
    engine = StreamEngine(_settings(tmp_path), drain_on_sigterm=False)
    outer = Starlette(routes=[Mount("/", engine.router())])
    transport = httpx.ASGITransport(app=outer)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.post("/v1/chat", json=BODY)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "not_started"
    assert "lifespan" in r.json()["error"]["message"]
