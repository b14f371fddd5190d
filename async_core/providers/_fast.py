"""The common upstream line, decoded without ``json.loads``: a plain content delta.

Nearly every line an upstream streams is one token's delta: Ollama's
``{"model":...,"created_at":...,"message":{"role":"assistant","content":"..."},"done":false}``
and OpenAI's ``{"id":...,"choices":[{"index":0,"delta":{"content":"..."},
"finish_reason":null}]}``. Decoding the whole object and walking its dicts cost more
per token than the rest of the parse; these patterns recognise exactly that shape
(a regex in C) and return the content alone.

The rule that keeps this safe: a pattern matches only text that ``json.loads`` would
decode to an object the full parser turns into that content and nothing else, so a
match can never change an outcome. Anything else returns ``None`` and the caller
takes the full path: errors, tool calls, usage, finish reasons, ``done`` lines,
other choices, numbers other than plain integers, escapes in any string but the
content, unusual whitespace. Duplicate keys are excluded where they would matter
(``error``, ``choices``, ``message``, ``done``, ``delta``, ``content``).
``tests/providers/test_fast.py`` property-tests both against ``json.loads``.
"""

from __future__ import annotations

import json
import re

__all__ = ["ollama_delta", "openai_delta"]

# A JSON string without escapes or control characters (json.loads rejects raw ones).
_STR = r'"[^"\\\x00-\x1f]*"'
# The content string, escapes allowed (decoded by json.loads of the string alone);
# written as an unrolled loop: an alternation per character costs more than json.loads.
_CONTENT = r'"([^"\\\x00-\x1f]*(?:\\["\\/bfnrtu][^"\\\x00-\x1f]*)*)"'
_SCALAR = rf"(?:{_STR}|-?(?:0|[1-9][0-9]*)|null|true|false)"


def _pairs(exclude: str) -> str:
    """Leading ``"key": scalar,`` members whose keys are none of ``exclude``."""
    return rf'(?:"(?!(?:{exclude})")[A-Za-z_][A-Za-z0-9_]*": ?{_SCALAR}, ?)*'


# Ollama's order: scalars (model, created_at), message {role, content}, done: false.
_OLLAMA = re.compile(
    rf'\{{{_pairs("error|message|done")}"message": ?\{{"role": ?{_STR}, ?'
    rf'"content": ?{_CONTENT}\}}, ?"done": ?false\}}\r?')
# OpenAI's order (and vLLM's, llama.cpp's): scalars (id, object, created, model,
# system_fingerprint...), one choice {index 0, delta {role?, content, refusal: null?},
# logprobs: null?, finish_reason: null}, then scalars (usage: null...).
_OPENAI = re.compile(
    rf'\{{{_pairs("error|choices")}"choices": ?\[\{{"index": ?0, ?"delta": ?\{{'
    rf'(?:"role": ?{_STR}, ?)?"content": ?{_CONTENT}(?:, ?"refusal": ?null)?\}}'
    rf'(?:, ?"logprobs": ?null)?, ?"finish_reason": ?null\}}\]'
    rf'(?:, ?"(?!(?:error|choices)")[A-Za-z_][A-Za-z0-9_]*": ?{_SCALAR})*\}}')


def _content(raw: str) -> str | None:
    if "\\" not in raw:
        return raw
    try:
        return json.loads('"' + raw + '"')  # type: ignore[no-any-return]  # a JSON string
    except ValueError:  # a bad \u escape: the full path says so
        return None


def ollama_delta(line: bytes) -> str | None:
    """The content of an Ollama chat line that is a plain delta, else ``None``.

    Args:
        line: one NDJSON line without its ``\\n``.
    """
    try:  # the whole line: invalid UTF-8 anywhere in it is the full path's error
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return None
    match = _OLLAMA.fullmatch(text)
    return None if match is None else _content(match.group(1))


def openai_delta(data: str) -> str | None:
    """The content of an OpenAI chunk (an SSE event's data) that is a plain delta, else
    ``None``."""
    match = _OPENAI.fullmatch(data)
    return None if match is None else _content(match.group(1))
