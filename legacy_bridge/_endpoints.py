"""Streaming endpoints a user declares once, served on every path.

``StreamBridge.endpoint("/chat", agent="my-agent", to_request=fn)`` (or the
``@bridge.streaming("/chat", agent="my-agent")`` decorator) adds a Flask view to the
user's app. The view reads the request's JSON object, calls ``to_request(body)`` and
streams the agent's request it returns (the native ``POST /v1/chat`` shape:
``messages`` or ``message``, ``conversation_id``, ``stream``, ``options``; the agent
is the declared one).

Auth, one rule on every path: ``to_request`` always runs inside the user's Flask
request context, after their ``before_request`` hooks and inside whatever decorators
wrap it (``flask.g.user``, sessions, cookies). Behind the hybrid front the same view
runs for every request of the endpoint and only then asks the front, through
``ROUTE_HOOK`` in the WSGI environ, which path serves the stream: ``legacy`` streams
right here through the seam; ``async`` hands the agent's request to the front, which
serves it natively, and this view answers a placeholder that the front drops (only
its ``Set-Cookie`` headers are kept). A request their auth refuses never reaches the
hook, so it is refused the same way on both branches; a view that raises is their
error handler's answer on both branches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from flask import Response, request

from async_core.exceptions import BadRequest, PayloadTooLarge
from async_core.protocol import check_body_size, load_body

# environ key the hybrid front sets: hook(agent, agent_body) -> True when the front
# serves the stream natively. It may add a conversation_id to agent_body (sticky buckets).
ROUTE_HOOK = "streambridge.route"

ToRequest = Callable[[dict[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One declared streaming endpoint.

    Attributes:
        path: the Flask URL rule (``POST`` only), e.g. ``/chat``.
        agent: the agent that serves it (the migration flag's per-agent key).
        to_request: turns the user's JSON body into the agent's request.
        name: the Flask endpoint name (for ``url_for``).
    """

    path: str
    agent: str
    to_request: ToRequest
    name: str


def read_json_object(limit: int) -> dict[str, Any]:
    """The current request's body as a JSON object (the contract's 400/413 otherwise).

    Raises:
        PayloadTooLarge: the body exceeds ``limit`` bytes.
        BadRequest: the body is not a JSON object.
    """
    check_body_size(request.content_length, limit)
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    data = load_body(raw)  # the strict parser every route uses (issue 10: no 500s)
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def endpoint_view(endpoint: Endpoint, limit: int,
                  stream: Callable[[str, Mapping[str, Any]], Response]
                  ) -> Callable[..., Response]:
    """The Flask view of ``endpoint``: ``to_request``, then the front's hook or ``stream``."""

    def view(**_: Any) -> Response:  # URL variables are in flask.request.view_args
        body = endpoint.to_request(read_json_object(limit))
        if not isinstance(body, Mapping):
            raise TypeError(f"to_request of {endpoint.path} returned {type(body).__name__}, "
                            "not a mapping")
        agent_body = {**body, "agent": endpoint.agent}
        hook = request.environ.get(ROUTE_HOOK)
        if hook is not None and hook(endpoint.agent, agent_body):
            return Response(status=204)  # the front serves it natively and drops this
        return stream(endpoint.agent, agent_body)

    return view
