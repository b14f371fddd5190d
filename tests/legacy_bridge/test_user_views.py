"""A user's own Flask view that calls ``bridge.stream(agent)`` reads its body strictly.

In process, through Flask's test client (a real Flask app and a real bridge loop
thread): the body goes through the same parser as every route (issue 10), so hostile
JSON is the contract's 400 JSON, never a 500 or a silently empty request.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from legacy_bridge import StreamBridge


@pytest.fixture(scope="module")
def client() -> Iterator[FlaskClient]:
    """A user app whose ``POST /mine`` view streams the demo agent with its own body."""
    app = Flask("user")
    bridge = StreamBridge(app)

    @app.post("/mine")
    def mine() -> object:
        return bridge.stream("demo")

    yield app.test_client()
    bridge.bridge.stop()


@pytest.mark.parametrize(("body", "needle"), [
    (b"[" * 5000 + b"]" * 5000, "nests deeper"),
    (b"[1, 2]", "JSON object"),
    (b'{"message": "hi", "options": {"interval_ms": NaN}}', "interval_ms"),
    (b'{"message": "\\ud800"}', "surrogate"),
    (b"{not json", "not valid JSON"),
])
def test_a_hostile_body_is_a_400_json_error(client: FlaskClient, body: bytes,
                                            needle: str) -> None:
    """Deep nesting, a non-object, NaN, a lone surrogate and bad JSON are each a 400."""
    response = client.post("/mine", data=body, content_type="application/json")
    assert response.status_code == 400, response.data
    assert needle in response.get_json()["error"]["message"]


def test_a_good_body_streams_to_one_done(client: FlaskClient) -> None:
    """The same view streams a well-formed request to exactly one ``done``."""
    response = client.post("/mine", json={"message": "hi", "options": {"tokens": 3}})
    assert response.status_code == 200
    assert response.get_data().count(b"event: done") == 1
