"""Hostile input on every path: a seeded, bounded fuzz of malformed requests (issue 10).

A fixed-seed generator builds the same requests on every run: raw garbage, bad request
lines, huge headers, duplicate or wrong Content-Length, broken chunked bodies, invalid
UTF-8, lone surrogates, deep nesting, huge numbers, NaN/Infinity, wrong types in every
field and absurd options, at every route. Nothing may answer 5xx or log a traceback,
and afterwards the server still answers ``/healthz``, streams normally and stores the
new transcript.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.clients import exchange, status_of, stream, wait_for
from tests.servers import Server

SEED = 10  # the number: the same requests on every run
PER_KIND = 10  # requests of each kind per path (15 kinds): 150 per path

CHAT_ROUTES = ["/v1/chat", "/v1/chat/completions", "/api/chat", "/api/generate"]
OTHER_ROUTES = ["/", "/healthz", "/readyz", "/metrics", "/v1/conversations/fuzz-1",
                "/no/such/route"]
MSG = [{"role": "user", "content": "hi"}]
OPTS = {"tokens": 2, "interval_ms": 0}
BASE: dict[str, dict[str, Any]] = {
    "/v1/chat": {"messages": MSG, "agent": "demo", "stream": True, "options": OPTS},
    "/v1/chat/completions": {"model": "demo", "messages": MSG, "stream": True,
                             "stream_options": {"include_usage": True}, "temperature": 0.5,
                             "options": OPTS},
    "/api/chat": {"model": "demo", "messages": MSG, "stream": True, "options": OPTS},
    "/api/generate": {"model": "demo", "prompt": "hi", "system": "be brief",
                      "stream": False, "options": OPTS},
}
DEMO_OPTIONS = ["tokens", "interval_ms", "first_token_delay_ms", "text", "fail_at",
                "fail_before_first", "states", "temperature", "stop", "seed"]


@dataclass(frozen=True)
class Case:
    """One hostile request.

    Attributes:
        kind: the generator that made it.
        data: the bytes sent, as they are.
        complete: a whole HTTP request, which must get an answer (a truncated one is
            half-closed after sending, and may be answered or dropped).
    """

    kind: str
    data: bytes
    complete: bool = True


def _request(method: str, route: str, body: bytes = b"", headers: list[str] | None = None,
             length: str | None = None) -> bytes:
    lines = [f"{method} {route} HTTP/1.1", "Host: 127.0.0.1",
             "Content-Type: application/json", "Connection: close", *(headers or [])]
    if method == "POST":
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _post_json(route: str, text: str) -> bytes:
    return _request("POST", route, text.encode("utf-8", "surrogatepass"))


def _fields(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indexes)."""
    if path:
        yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _fields(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _fields(v, (*path, i))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)  # type: ignore[index]
    return copy


def _base(rng: random.Random, route: str) -> dict[str, Any]:
    """A normal body of ``route`` with a conversation id of its own (hybrid buckets it)."""
    return {**BASE[route], "conversation_id": f"fuzz-{rng.randrange(10**9)}"}


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def _mutant(rng: random.Random, new: Callable[[random.Random], Any],
            strings_only: bool = False) -> bytes:
    """A chat route's normal body with one field (any depth) replaced by ``new(rng)``
    (with ``strings_only``, a field that holds text: content, ids, names)."""
    route = rng.choice(CHAT_ROUTES)
    body = _base(rng, route)
    paths = [p for p in _fields(body) if not strings_only or isinstance(_at(body, p), str)]
    path = rng.choice(paths)
    # json.dumps writes NaN/Infinity as such, and lone surrogates as \ud800 escapes.
    return _post_json(route, json.dumps(_replace(body, path, new(rng))))


def _wrong_type(rng: random.Random) -> Any:
    return rng.choice([None, True, 0, -1, 3.5, "", "x", [], [1, "a"], {}, {"a": {"b": 1}},
                       [[[]]], 2**70])


def _surrogate(rng: random.Random) -> Any:
    s = rng.choice(["\ud800", "\udfff", "a\udc80b", "\ud83d"])  # lone halves
    return rng.choice([s, [s], {"k": s}, {s: 1}])


def _non_finite(rng: random.Random) -> Any:
    return rng.choice([float("nan"), float("inf"), -float("inf"), [float("nan")],
                       {"x": float("inf")}])


def _nested(rng: random.Random) -> str:
    depth = rng.choice([33, 100, 1000, 5000, 100_000])
    return rng.choice(["[" * depth + "]" * depth,
                       '{"a":' * depth + "1" + "}" * depth])


def _huge_number(rng: random.Random) -> str:
    return rng.choice(["9" * 5000, "-" + "9" * 4301, "1e400", "-1e400", "1" + "0" * 400 + ".5",
                       "0." + "0" * 5000 + "1", "1e-400"])


def _raw_json(rng: random.Random, text: Callable[[random.Random], str]) -> bytes:
    """A chat body with one field's JSON text replaced by ``text`` (raw, unparsed)."""
    route = rng.choice(CHAT_ROUTES)
    marker = "__FUZZ__"
    body = _base(rng, route)
    path = rng.choice(list(_fields(body)))
    template = json.dumps(_replace(body, path, marker)).replace(f'"{marker}"', text(rng))
    return _post_json(route, template)


def _absurd_options(rng: random.Random) -> bytes:
    route = rng.choice(["/v1/chat", "/api/chat", "/api/generate"])
    absurd = [-(10**30), 10**30, 10**12, -0.0, 1e308, 600_001, "10", "", "x" * 100_000,
              [], {"a": 1}, True, None]
    options = {rng.choice(DEMO_OPTIONS): rng.choice(absurd) for _ in range(rng.randint(1, 4))}
    if rng.random() < 0.3:
        options["x" * rng.choice([1, 1000])] = 1  # unknown option
    return _post_json(route, json.dumps({**_base(rng, route), "options": options}))


def _garbage(rng: random.Random) -> Case:
    noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 2000)))
    return Case("garbage", noise + b"\r\n\r\n", complete=False)


def _bad_request_line(rng: random.Random) -> Case:
    line = rng.choice([b"POST", b"POST /v1/chat", b"POST /v1/chat HTTP/9.9",
                       b"GET " + b"/" + b"a" * 20_000 + b" HTTP/1.1", b"\x00GET / HTTP/1.1",
                       b"GET /v1/chat\xff HTTP/1.1", b"BREW /v1/chat HTTP/1.1",
                       b"GET /%ED%A0%80 HTTP/1.1", b"GET /v1/conversations/%0A HTTP/1.1",
                       b" GET / HTTP/1.1", b"GET / HTTP/1.1 extra"])
    return Case("request-line", line + b"\r\nHost: x\r\nConnection: close\r\n\r\n",
                complete=False)


def _huge_headers(rng: random.Random) -> Case:
    route = rng.choice(CHAT_ROUTES + OTHER_ROUTES)
    method = "POST" if route in CHAT_ROUTES else "GET"
    headers = rng.choice([
        [f"X-Big: {'a' * 100_000}"],
        [f"X-H{i}: v" for i in range(500)],
        [f"Accept: {'text/plain;q=0.1,' * 5000}text/event-stream"],
        [f"X-Conversation-Id: {'c' * 10_000}"],
        ["X-Conversation-Id: abc\xff"],
        ["Authorization: Bearer " + "k" * 50_000],
    ])
    body = json.dumps(BASE.get(route, {})).encode()
    return Case("huge-headers", _request(method, route, body, headers), complete=False)


def _content_length(rng: random.Random) -> Case:
    route = rng.choice(CHAT_ROUTES)
    body = json.dumps(BASE[route]).encode()
    n = len(body)
    kind = rng.choice(["dup", "negative", "text", "plus", "longer", "shorter", "huge"])
    if kind == "dup":
        raw = _request("POST", route, body, [f"Content-Length: {n + 3}"])
        return Case("content-length", raw, complete=False)
    value = {"negative": "-1", "text": "abc", "plus": f"+{n}", "longer": str(n + 100),
             "shorter": str(max(1, n - 10)), "huge": "9" * 30}[kind]
    return Case("content-length", _request("POST", route, body, length=value),
                complete=kind == "shorter")


def _bad_chunked(rng: random.Random) -> Case:
    route = rng.choice(CHAT_ROUTES)
    body = json.dumps(BASE[route]).encode()
    chunks = rng.choice([
        b"zz\r\n" + body + b"\r\n0\r\n\r\n",
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - 5, body),
        b"%x\r\n%s\r\n" % (len(body), body),  # no last chunk
        b"-5\r\nabcde\r\n0\r\n\r\n",
        b"ffffffffffffffffffff\r\nab",
        b"%x;%s\r\n%s\r\n0\r\n\r\n" % (len(body), b"e" * 10_000, body),
        b"%x\r\n%s0\r\n\r\n" % (len(body), body),  # no CRLF after the data
        b"%x\r\n%s\r\n0\r\nX-Trailer: " % (len(body), body) + b"t" * 20_000,
    ])
    head = (f"POST {route} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n").encode()
    return Case("chunked", head + chunks, complete=False)


def _invalid_utf8(rng: random.Random) -> Case:
    route = rng.choice(CHAT_ROUTES)
    text = json.dumps(BASE[route]).encode()
    bad = rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])
    i = text.index(b'"', rng.randrange(len(text) // 2)) + 1
    return Case("utf-8", _request("POST", route, text[:i] + bad + text[i:]))


def _mid_body_exit(rng: random.Random) -> Case:
    route = rng.choice(CHAT_ROUTES)
    body = json.dumps(BASE[route]).encode()
    cut = body[:rng.randrange(1, len(body))]
    return Case("left-mid-body", _request("POST", route, cut, length=str(len(body))),
                complete=False)


KINDS: list[Callable[[random.Random], Case]] = [
    _garbage, _bad_request_line, _huge_headers, _content_length, _bad_chunked,
    _invalid_utf8, _mid_body_exit,
    lambda rng: Case("surrogate", _mutant(rng, _surrogate, strings_only=True)),
    lambda rng: Case("non-finite", _mutant(rng, _non_finite)),
    lambda rng: Case("wrong-type", _mutant(rng, _wrong_type)),
    lambda rng: Case("nesting", _raw_json(rng, _nested)),
    lambda rng: Case("huge-number", _raw_json(rng, _huge_number)),
    lambda rng: Case("absurd-options", _absurd_options(rng)),
    lambda rng: Case("other-routes", _request(rng.choice(["GET", "POST", "DELETE"]),
                                              rng.choice(OTHER_ROUTES), b"{")),
    lambda rng: Case("body-not-object", _post_json(rng.choice(CHAT_ROUTES), rng.choice(
        ["", "null", "[]", '"x"', "1", "{", '{"a":1}{', "\ufeff{}", " " * 1000]))),
]


def cases(seed: int = SEED) -> list[Case]:
    """The fuzz requests of one run: ``PER_KIND`` of each kind, shuffled, seeded."""
    rng = random.Random(seed)
    out = [kind(rng) for kind in KINDS for _ in range(PER_KIND)]
    rng.shuffle(out)
    return out


def test_the_fuzz_cases_are_the_same_on_every_run() -> None:
    """The generator is seeded: a failure names a case that reproduces."""
    assert cases() == cases()
    assert len({c.kind for c in cases()}) == len(KINDS)


@pytest.fixture(scope="module")
def fuzzed(path_id: str) -> Iterator[tuple[Server, list[tuple[Case, int | None]]]]:
    """A server of the path after every fuzz case was sent to it, and what each got."""
    srv = Server(path_id)
    try:
        answers = [(case, status_of(exchange(srv.port, case.data, timeout=10,
                                             half_close=not case.complete)))
                   for case in cases()]
        yield srv, answers
    finally:
        srv.stop()


def test_no_hostile_request_gets_a_5xx(fuzzed: tuple[Server, list[tuple[Case, int | None]]]
                                       ) -> None:
    """Every answer is below 500; every complete request is answered."""
    _, answers = fuzzed
    bad = [(c.kind, status, c.data[:160]) for c, status in answers
           if (status is not None and status >= 500) or (status is None and c.complete)]
    assert not bad, bad


WRONG_TYPES = [None, True, 0, -1, 3.5, "", "x", [], [1, "a"], {}, {"a": {"b": 1}}, 2**70,
               "\u2028", "a" * 10_000]


def test_every_field_of_every_route_takes_any_type_without_a_5xx(
        fuzzed: tuple[Server, list[Any]]) -> None:
    """Each field of each chat route's body (any depth), given each wrong type, in turn:
    a 2xx or a 4xx, never a 5xx (a list as messages[].role was a 500)."""
    srv, _ = fuzzed
    requests = []
    for n, (route, base) in enumerate(BASE.items()):
        for i, path in enumerate(_fields(base)):
            for j, value in enumerate(WRONG_TYPES):
                body = {**_replace(base, path, value), "conversation_id": f"t-{n}-{i}-{j}"}
                if path != ("stream",):
                    body["stream"] = False  # one JSON answer, no stream to drain
                requests.append((route, path, value, json.dumps(body)))
    with httpx.Client(timeout=20) as client, ThreadPoolExecutor(8) as pool:
        # in parallel: a wrong "options" leaves the demo's defaults (64 tokens, 1.3 s)
        codes = list(pool.map(lambda req: client.post(srv.url(req[0]), content=req[3])
                              .status_code, requests))
    bad = [(r[0], r[1], repr(r[2])[:20], code) for r, code in zip(requests, codes, strict=True)
           if code >= 500]
    assert not bad, bad


def test_the_server_still_serves_and_stores(fuzzed: tuple[Server, list[Any]]) -> None:
    """After the fuzz: /healthz answers, a normal stream ends with done, and its
    transcript is stored (GET /v1/conversations/{id} returns it)."""
    srv, _ = fuzzed
    assert httpx.get(srv.url("/healthz"), timeout=5).status_code == 200
    r = stream(srv.url("/v1/chat"), {"message": "after the fuzz", "options": OPTS})
    assert r.status == 200 and r.kinds()[-1] == "done"
    cid = r.headers["x-conversation-id"]

    def stored() -> bool:
        got = httpx.get(srv.url(f"/v1/conversations/{cid}"), timeout=5)
        return got.status_code == 200 and any(
            t["role"] == "assistant" and t["content"] == r.text() for t in got.json()["turns"])

    assert wait_for(stored, timeout=10)


def test_no_traceback_in_the_log(fuzzed: tuple[Server, list[Any]]) -> None:
    """The server logged no traceback, leaked task or unexpected error for any case."""
    srv, _ = fuzzed
    assert not srv.problems(), "\n".join(srv.problems()[:40])
