"""The page at ``GET /`` in a real headless Chromium, streaming from two real servers.

Needs Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it)
and the ``playwright`` package: ``playwright install`` cannot fetch browsers here,
so the system browser is launched by path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from async_core.demo import demo_text
from tests.servers import Server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path("/tmp/streambridge-page.png")
OPTIONS = {"tokens": 30, "interval_ms": 15}
NUMBER = re.compile(r"^\d+(\.\d+)?$")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Server]]:
    """One real server per path: the page is served by async, legacy is the second origin."""
    started = {"async": Server("async"), "legacy": Server("legacy-gthread")}
    yield started
    for srv in started.values():
        srv.stop()
    problems = [p for srv in started.values() for p in srv.problems()]
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def browser(servers: dict[str, Server]) -> Iterator[Browser]:
    """Debian's chromium driven by playwright (no downloaded browser build)."""
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # Warm up: playwright's loop starts its executor threads on first use, which
        # the per-test thread-leak check would otherwise blame on the first test.
        warm = b.new_page()
        warm.goto(servers["async"].url("/"))
        warm.close()
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser page whose console errors fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 720})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors


def _send(page: Page, options: dict[str, int]) -> None:
    page.fill("#options", str(options).replace("'", '"'))
    page.click("#send")


def test_page_is_served_on_both_paths(servers: dict[str, Server]) -> None:
    """``GET /`` answers HTML naming its own path on legacy and async alike."""
    for name, srv in servers.items():
        r = httpx.get(srv.url("/"), timeout=10)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert f'data-self-path="{name}"' in r.text


def test_chat_allows_loopback_origins_only(servers: dict[str, Server]) -> None:
    """A loopback Origin gets CORS headers on the chat route; any other origin gets none."""
    for srv in servers.values():
        body = {"message": "hi", "options": {"tokens": 2, "interval_ms": 0}}
        ok = httpx.post(srv.url("/v1/chat"), json=body, timeout=10,
                        headers={"Origin": "http://127.0.0.1:9"})
        assert ok.headers["access-control-allow-origin"] == "http://127.0.0.1:9"
        assert "X-Stream-Path" in ok.headers["access-control-expose-headers"]
        other = httpx.post(srv.url("/v1/chat"), json=body, timeout=10,
                           headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_both_panes_stream_the_full_reply_with_numeric_latency(
        servers: dict[str, Server], page: Page) -> None:
    """Both panes show the whole demo text, the path that served it and numeric TTFC/gaps."""
    page.goto(servers["async"].url("/") + "?legacy=" + servers["legacy"].base_url)
    _send(page, OPTIONS)
    expected = demo_text(OPTIONS)
    for path in ("legacy", "async"):
        expect(page.locator(f"#status-{path}")).to_contain_text("done", timeout=20_000)
        assert page.text_content(f"#text-{path}") == expected
        for fig in ("ttfc", "gap50", "gap99"):
            assert NUMBER.match(page.inner_text(f"#{fig}-{path}")), fig
        # The engine may coalesce deltas that are ready together: count chunks, not tokens.
        assert 2 <= int(page.inner_text(f"#chunks-{path}")) <= OPTIONS["tokens"]
        assert float(page.inner_text(f"#ttfc-{path}")) < 2000
    # Bytes, written here: ``path=`` would start playwright executor threads (leak check).
    SCREENSHOT.write_bytes(page.screenshot(full_page=True))


def test_missing_second_origin_is_explained(servers: dict[str, Server], page: Page) -> None:
    """Without ``?legacy=`` the legacy pane says how to add it instead of failing."""
    page.goto(servers["async"].url("/"))
    expect(page.locator("#status-legacy")).to_contain_text("?legacy=")
    _send(page, {"tokens": 3, "interval_ms": 0})
    expect(page.locator("#status-async")).to_contain_text("done")
    assert page.text_content("#text-async") == demo_text({"tokens": 3})


def test_the_websocket_option_streams_the_same_reply(servers: dict[str, Server],
                                                     page: Page) -> None:
    """Transport "WebSocket" (``?transport=ws``): the pane shows the whole reply and
    numeric figures as over SSE, read from a ``/v1/ws`` socket; switching back to SSE
    shows the same text again."""
    srv = servers["async"]
    seen = len(srv.log())
    page.goto(srv.url("/") + "?transport=ws")
    assert page.input_value("#transport") == "ws"
    _send(page, OPTIONS)
    over_ws = re.compile(r"^done · .* · over WebSocket$")
    expect(page.locator("#status-async")).to_have_text(over_ws, timeout=20_000)
    assert page.text_content("#text-async") == demo_text(OPTIONS)
    for fig in ("ttfc", "gap50", "gap99"):
        assert NUMBER.match(page.inner_text(f"#{fig}-async")), fig
    assert 2 <= int(page.inner_text("#chunks-async")) <= OPTIONS["tokens"]
    assert '"WebSocket /v1/ws" [accepted]' in srv.log()[seen:]
    page.select_option("#transport", "sse")
    expect(page.locator("#send")).to_be_enabled()
    _send(page, OPTIONS)
    over_sse = re.compile(r"^done · .* ms$")  # the WebSocket's ends "· over WebSocket"
    expect(page.locator("#status-async")).to_have_text(over_sse, timeout=20_000)
    assert page.text_content("#text-async") == demo_text(OPTIONS)
