"""API keys and tenants on every path: 401s, tenant isolation (404), per-key limits, binding."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.clients import RawStream, chat_body, stream, wait_for
from tests.reaper import REAPER
from tests.servers import Server

ACME, GLOBEX = "acme-key-0123456789abcdef", "globex-key-0123456789abcdef"
KEYS = f"acme:{ACME},globex:sha256:{hashlib.sha256(GLOBEX.encode()).hexdigest()}"


def bearer(key: str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def srv(path_id: str) -> Iterator[Server]:
    """A server with two tenants' keys, one stream per key, 20 requests/s per key."""
    server = Server(path_id, {"STREAMBRIDGE_API_KEYS": KEYS,
                              "STREAMBRIDGE_KEY_MAX_STREAMS": "1",
                              "STREAMBRIDGE_KEY_RATE_LIMIT": "20"})
    yield server
    REAPER.retire(server, __name__)  # waited for, and its log read, at the module's end


@pytest.mark.parametrize("headers", [{}, bearer("wrong-key-0123456789"), {"Authorization": ACME}])
def test_a_missing_or_wrong_key_is_401(srv: Server, headers: dict[str, str]) -> None:
    """No key, a wrong key or a non-Bearer header: 401 JSON error with a Bearer challenge."""
    for method, path in (("POST", "/v1/chat"), ("GET", "/v1/conversations/x")):
        r = httpx.request(method, srv.url(path), json=chat_body("demo"), headers=headers,
                          timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_health_readiness_and_metrics_need_no_key(srv: Server) -> None:
    """Probes and Prometheus scrape without credentials."""
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(srv.url(path), timeout=10).status_code == 200


def test_a_valid_key_streams(srv: Server) -> None:
    """A configured key (plain or given by its digest) streams as usual."""
    for key in (ACME, GLOBEX):
        r = stream(srv.url("/v1/chat"), chat_body("demo"), headers=bearer(key))
        assert r.status == 200 and r.kinds()[-1] == "done"


def test_another_tenants_conversation_is_404(srv: Server) -> None:
    """Tenant isolation: globex can neither read nor continue acme's conversation."""
    r = stream(srv.url("/v1/chat"), chat_body("demo"), headers=bearer(ACME))
    cid = r.headers["x-conversation-id"]
    url = srv.url(f"/v1/conversations/{cid}")
    wait_for(lambda: httpx.get(url, headers=bearer(ACME), timeout=10).status_code == 200)
    assert httpx.get(url, headers=bearer(GLOBEX), timeout=10).status_code == 404
    cont = httpx.post(srv.url("/v1/chat"), json={**chat_body("demo"), "conversation_id": cid},
                      headers=bearer(GLOBEX), timeout=10)
    assert cont.status_code == 404 and cont.json()["error"]["code"] == "not_found"


def test_per_key_concurrency_limit(srv: Server) -> None:
    """One stream per key: the second gets 503 with Retry-After; other keys are unaffected."""
    raw = RawStream(srv.port, "/v1/chat", chat_body("probe", tokens=5000, interval_ms=10),
                    headers=bearer(ACME))
    raw.read_until(b"event: delta")
    second = httpx.post(srv.url("/v1/chat"), json=chat_body("demo"), headers=bearer(ACME),
                        timeout=10)
    assert second.status_code == 503 and int(second.headers["retry-after"]) >= 1
    assert stream(srv.url("/v1/chat"), chat_body("demo"), headers=bearer(GLOBEX)).status == 200
    raw.close()
    wait_for(lambda: stream(srv.url("/v1/chat"), chat_body("demo"),
                            headers=bearer(ACME)).status == 200, timeout=10)


def test_per_key_rate_limit(srv: Server) -> None:
    """Past the key's rate: 429 with Retry-After."""
    body = {**chat_body("demo", tokens=1, interval_ms=0), "stream": False}
    # Sent 20 at a time, so they exceed the key's 20/s even when the machine is slow
    # (one after another at over 50 ms each, a loaded CI machine never passed the rate).
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=20)) as client, \
            ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(lambda _: client.post(srv.url("/v1/chat"), json=body,
                                                    headers=bearer(GLOBEX)), range(60)))
    limited = [r for r in codes if r.status_code == 429]
    assert limited and int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].json()["error"]["code"] == "rate_limited"


def test_without_keys_only_loopback_may_be_bound(path_id: str) -> None:
    """No keys configured: binding 0.0.0.0 is refused at start-up, saying why."""
    with pytest.raises(RuntimeError) as info:
        Server(path_id, args=["--host", "0.0.0.0"])
    assert "no API keys are configured" in str(info.value)
