"""The side-by-side page at ``GET /`` and the CORS rule that lets it reach a second server.

One server serves one path, so the page (``page.html``) streams the same prompt
from its own origin and from a second origin given in its query string::

    http://127.0.0.1:8001/?legacy=http://127.0.0.1:8000   (served by the async path)

The page POSTs with ``Content-Type: text/plain`` (a CORS "simple request": no
preflight, so the chat routes need no ``OPTIONS`` handler) and reads the SSE body
with ``fetch()`` and a ``ReadableStream``, since ``EventSource`` cannot POST; with
its transport set to WebSocket (``?transport=ws``) it sends a ``start`` message over
``/v1/ws`` instead and shows the same events the same way.
Chat responses carry ``Access-Control-Allow-Origin`` only for loopback origins:
the page is a local comparison tool, and a production origin never matches.
Stdlib only; both paths (Starlette and Flask) use it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

# Used with fullmatch: "$" also matches before a final newline (issue 10).
_LOOPBACK_ORIGIN = re.compile(r"https?://(?:127\.0\.0\.1|localhost|\[::1\])(?::\d{1,5})?")
# Headers the page reads from a cross-origin stream (CORS hides them otherwise).
_EXPOSED = "X-Stream-Id, X-Stream-Path, X-Conversation-Id"
PAGE_CONTENT_TYPE = "text/html; charset=utf-8"


@lru_cache(maxsize=1)
def _template() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def render_page(path: str) -> bytes:
    """Return the page, telling its script which path serves it (``legacy``, ``async``...).

    Args:
        path: the serving path of this server, used as the default origin of that pane.
    """
    if not re.fullmatch(r"[a-z-]{1,32}", path):
        raise ValueError(f"bad path name {path!r}")
    return _template().replace("__SELF_PATH__", path).encode("utf-8")


def cors_headers(origin: str | None) -> dict[str, str]:
    """The CORS response headers for a chat request from ``origin`` (empty if not allowed).

    Args:
        origin: the request's ``Origin`` header, if any.
    """
    if not origin or not _LOOPBACK_ORIGIN.fullmatch(origin):
        return {}
    return {"Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": _EXPOSED,
            "Vary": "Origin"}
