"""Bad input gets a 4xx with a JSON error naming the problem, never a 500."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest

from tests.clients import exchange, status_of, stream
from tests.servers import PATH_ARGS, REPO, Server

MSG = [{"role": "user", "content": "x"}]
CASES = [
    ("/v1/chat", b"{not json", {}, 400, "not valid JSON"),
    ("/v1/chat", b"[1, 2]", {}, 400, "JSON object"),
    ("/v1/chat", b'{"messages": []}', {}, 400, "messages must be a non-empty array"),
    ("/v1/chat", b'{"messages": [{"role": "robot", "content": "x"}]}', {}, 400, "role"),
    ("/v1/chat", b'{"messages": [{"role": "user", "content": 5}]}', {}, 400, "content"),
    ("/v1/chat", b'{"message": "x", "stream": "yes"}', {}, 400, "stream must be a boolean"),
    ("/v1/chat", b'{"message": "x", "agent": "nope"}', {}, 404, "unknown agent"),
    ("/v1/chat", b'{"message": "x", "options": {"tokens": -1}}', {}, 400, "options.tokens"),
    ("/v1/chat", b'{"message": "x", "options": {"tokenz": 1}}', {}, 400, "tokenz"),
    ("/v1/chat", b'{"message": "x", "options": [1]}', {}, 400, "options must be an object"),
    ("/v1/chat", b'{"message": "x", "conversation_id": "a b"}', {}, 400, "conversation_id"),
    ("/v1/chat", b'{"message": "x"}', {"accept": "image/png"}, 406, "Accept"),
    ("/v1/chat?format=xml", b'{"message": "x"}', {}, 406, "format"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}]}', {}, 400,
     "model"),
    ("/v1/chat/completions", b'{"model": "demo"}', {}, 400, "messages"),
    ("/api/generate", b'{"model": "demo"}', {}, 400, "prompt"),
    ("/api/chat", b'{"model": "ghost", "messages": [{"role": "user", "content": "x"}]}', {},
     404, "unknown agent"),
    # issue 10: each of these was a 500 with a traceback (or, for the id, a 500 on legacy
    # after admission and a closed connection on async).
    ("/v1/chat", b"[" * 100_000 + b"]" * 100_000, {}, 400, "nests deeper"),
    ("/v1/chat", b'{"message": "x", "options": {"tokens": ' + b"9" * 5000 + b"}}", {}, 400,
     "options.tokens must be an integer of at most"),
    ("/v1/chat", b'{"messages": [{"role": ["user"], "content": "x"}]}', {}, 400,
     "messages[0].role"),
    ("/api/chat", b'{"model": "demo", "messages": [{"role": {"a": 1}, "content": "x"}]}', {},
     400, "messages[0].role"),
    ("/v1/chat/completions", b'{"model": "demo", "messages": [{"role": "user", "content": '
     b'"x"}], "stream_options": {"include_usage": "yes"}}', {}, 400,
     "stream_options.include_usage"),
    ("/v1/chat", b'{"message": "x", "conversation_id": "abc\\n"}', {}, 400, "conversation_id"),
]


@pytest.mark.parametrize(("route", "body", "headers", "status", "words"), CASES,
                         ids=[f"{c[0]}-{c[3]}-{c[4][:18]}" for c in CASES])
def test_bad_request_is_a_json_4xx(server: Server, route: str, body: bytes,
                                   headers: dict[str, str], status: int, words: str) -> None:
    """Each malformed request gets its status and an error body naming the problem."""
    r = httpx.post(server.url(route), content=body,
                   headers={"content-type": "application/json", **headers}, timeout=10)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] and words in error["message"]


def test_oversized_body_is_413(server: Server) -> None:
    """A body over the limit is refused with 413 before it is parsed."""
    big = b'{"message": "' + b"x" * 1_100_000 + b'"}'
    r = httpx.post(server.url("/v1/chat"), content=big, timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_and_wrong_method_are_json(server: Server) -> None:
    """404 and 405 are JSON errors too."""
    assert httpx.get(server.url("/nope"), timeout=5).json()["error"]["code"] == "not_found"
    r = httpx.get(server.url("/v1/chat"), timeout=5)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_health_ready_and_metrics(server: Server) -> None:
    """/healthz and /readyz answer 200; /metrics exposes the stream metrics."""
    assert httpx.get(server.url("/healthz"), timeout=5).status_code == 200
    assert httpx.get(server.url("/readyz"), timeout=5).json()["ready"] is True
    httpx.post(server.url("/v1/chat"), json={"message": "x", "stream": False}, timeout=10)
    text = httpx.get(server.url("/metrics"), timeout=5).text
    for name in ("streambridge_active_streams", "streambridge_streams_total",
                 "streambridge_time_to_first_chunk_seconds",
                 "streambridge_stream_duration_seconds", "streambridge_chunks_total"):
        assert name in text


# issue 10 (1): a lone surrogate cannot be stored (UTF-8 cannot encode it); every string
# field of every route refuses it up front, naming the field.
SURROGATE = "\ud800"
MSG_S = [{"role": "user", "content": SURROGATE}]
SURROGATE_CASES = [
    ("/v1/chat", {"message": SURROGATE}, "message"),
    ("/v1/chat", {"messages": MSG_S}, "messages[0].content"),
    ("/v1/chat", {"message": "x", "conversation_id": "a" + SURROGATE}, "conversation_id"),
    ("/v1/chat", {"message": "x", "agent": SURROGATE}, "agent"),
    ("/v1/chat", {"message": "x", "options": {"text": SURROGATE}}, "options.text"),
    ("/v1/chat", {"message": "x", "options": {SURROGATE: 1}}, "options"),
    ("/v1/chat/completions", {"model": "demo", "messages": MSG_S}, "messages[0].content"),
    ("/v1/chat/completions", {"model": SURROGATE, "messages": MSG}, "model"),
    ("/api/chat", {"model": "demo", "messages": MSG_S}, "messages[0].content"),
    ("/api/generate", {"model": "demo", "prompt": SURROGATE}, "prompt"),
    ("/api/generate", {"model": "demo", "prompt": "x", "system": SURROGATE}, "system"),
]


@pytest.mark.parametrize(("route", "body", "field"), SURROGATE_CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in SURROGATE_CASES])
def test_a_lone_surrogate_is_refused_naming_the_field(server: Server, route: str,
                                                      body: dict[str, object],
                                                      field: str) -> None:
    """A string the store could not write is a 400 naming its field, before streaming."""
    raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as \ud800
    r = httpx.post(server.url(route), content=raw, timeout=10)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(field) and "surrogate" in message


# issue 10 (2): NaN passed every range check (comparisons with NaN are false) and froze a
# gevent worker; Infinity and numbers that overflow to it are refused the same way.
NON_FINITE = [
    ("/v1/chat", b'{"message": "x", "options": {"interval_ms": NaN}}', "options.interval_ms"),
    ("/v1/chat", b'{"message": "x", "options": {"first_token_delay_ms": Infinity}}',
     "options.first_token_delay_ms"),
    ("/v1/chat", b'{"message": "x", "options": {"interval_ms": 1e400}}', "options.interval_ms"),
    ("/v1/chat", b'{"message": "x", "options": {"temperature": -Infinity}}',
     "options.temperature"),
    ("/v1/chat/completions", b'{"model": "demo", "messages": [{"role": "user", "content": '
     b'"x"}], "temperature": NaN}', "temperature"),
    ("/api/chat", b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], '
     b'"options": {"temperature": NaN}}', "options.temperature"),
    ("/api/generate", b'{"model": "demo", "prompt": "x", "options": {"top_p": NaN}}',
     "options.top_p"),
]


@pytest.mark.parametrize(("route", "body", "field"), NON_FINITE,
                         ids=[f"{c[0]}-{c[2]}" for c in NON_FINITE])
def test_a_non_finite_number_is_refused_naming_the_field(server: Server, route: str,
                                                         body: bytes, field: str) -> None:
    """NaN, Infinity and 1e400 are a 400 naming the field, on every route."""
    r = httpx.post(server.url(route), content=body, timeout=10)
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(field) and "finite" in message


def test_a_conversation_id_with_a_trailing_newline_is_refused_at_once(server: Server) -> None:
    """ "abc\n" is a 400 before admission ("$" matched before a final newline)."""
    body = {"message": "x", "conversation_id": "abc\n", "options": {"tokens": 1}}
    r = httpx.post(server.url("/v1/chat"), json=body, timeout=5)
    assert r.status_code == 400 and "conversation_id" in r.json()["error"]["message"]
    assert r.elapsed.total_seconds() < 2


def _post(route: bytes, body: bytes, headers: bytes = b"") -> bytes:
    return (b"POST " + route + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
            b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
            + headers + b"Connection: close\r\n\r\n" + body)


def _chunked(route: bytes, chunks: bytes) -> bytes:
    return (b"POST " + route + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: "
            b"chunked\r\nConnection: close\r\n\r\n" + chunks)


def _chunks(data: bytes, size: int = 65536) -> bytes:
    parts = [data[i:i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_oversized_body_gets_its_413_not_a_reset(server: Server, framing: str) -> None:
    """A 5 MB body is taken whole (the client's send does not fail with a reset) and
    answered 413, every time; hybrid answered a chunked one with 400."""
    body = b'{"message": "' + b"x" * 5_000_000 + b'"}'
    data = _post(b"/v1/chat", body) if framing == "content-length" else _chunked(
        b"/v1/chat", _chunks(body))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(data)  # no EPIPE/ECONNRESET: the server took the whole body
            raw = b""
            while b"\r\n\r\n" not in raw and (chunk := sock.recv(65536)):
                raw += chunk
        assert status_of(raw) == 413, raw[:300]


def test_a_chunked_body_is_read_on_every_path(server: Server) -> None:
    """A valid chunked request body is parsed (hybrid's Flask branch read it as empty)."""
    body = json.dumps({"message": "x", "stream": False, "options": {"tokens": 2}}).encode()
    raw = exchange(server.port, _chunked(b"/v1/chat", _chunks(body, 7)))
    assert status_of(raw) == 200, raw[:300]


MALFORMED_CHUNKS = [
    b"zz\r\nabc\r\n0\r\n\r\n",  # chunk size is not hex
    b"3\r\nabcdef\r\n0\r\n\r\n",  # chunk longer than its size
    b"-1\r\nabc\r\n0\r\n\r\n",  # negative size
    b"5\r\n{\"mes",  # cut short: the client stops sending (half-close)
]


@pytest.mark.parametrize("chunks", MALFORMED_CHUNKS, ids=["not-hex", "overlong", "negative",
                                                          "truncated"])
def test_a_malformed_chunked_body_is_a_4xx(server: Server, chunks: bytes) -> None:
    """Broken chunked framing is answered with a 4xx (or the connection closed), never a
    500 with a traceback (the module's server fixture checks the log)."""
    raw = exchange(server.port, _chunked(b"/v1/chat", chunks), half_close=True)
    status = status_of(raw)
    assert status is None or 400 <= status < 500, raw[:300]
    assert httpx.get(server.url("/healthz"), timeout=5).status_code == 200


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_client_leaving_mid_body_is_one_quiet_line(server: Server, framing: str) -> None:
    """A client that stops sending its body and leaves costs no traceback in the log."""
    if framing == "content-length":
        data = _post(b"/v1/chat", b'{"message": "x"}')
        data = data.replace(b"Content-Length: 16", b"Content-Length: 1000")
    else:
        data = _chunked(b"/v1/chat", b"400\r\n" + b'{"message": "x"')
    exchange(server.port, data, half_close=True)
    r = stream(server.url("/v1/chat"), {"message": "after", "options": {"tokens": 2}})
    assert r.status == 200 and r.kinds()[-1] == "done"
    assert not server.problems(), "\n".join(server.problems())


@pytest.mark.parametrize("setting", ["HEARTBEAT=nan", "IDLE_TIMEOUT=inf",
                                     "RATE_LIMIT=-nan"])
def test_a_non_finite_setting_is_one_line_and_a_failed_start(path_id: str,
                                                             setting: str) -> None:
    """STREAMBRIDGE_HEARTBEAT=nan is refused at start: one line, non-zero exit."""
    name, value = setting.split("=")
    env = {**os.environ, f"STREAMBRIDGE_{name}": value}
    proc = subprocess.run([sys.executable, "-m", "migration.cli", "serve",
                           *PATH_ARGS[path_id], "--port", "0"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, lines
    assert f"STREAMBRIDGE_{name}" in lines[0]
