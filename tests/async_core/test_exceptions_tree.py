"""One exceptions tree (issue 12 item 6): configuration errors are not HTTP errors, and an
agent's failure is a client-visible error carrying its own code and status."""

from __future__ import annotations

import pytest

from async_core import AgentFailure, ConfigError, StreamBridgeError
from async_core.auth import AuthConfigError
from async_core.exceptions import AgentError, StreamFailure
from async_core.providers import UpstreamError
from async_core.store import StoreConfigError
from async_core.webhooks import WebhookConfigError


@pytest.mark.parametrize("cls", [AuthConfigError, StoreConfigError, WebhookConfigError])
def test_configuration_errors_are_not_http_errors(cls: type[ConfigError]) -> None:
    error = cls("STREAMBRIDGE_X: bad")
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)
    assert not isinstance(error, StreamBridgeError)
    assert not hasattr(error, "status") and error.message == "STREAMBRIDGE_X: bad"


def test_an_agent_failure_is_a_stream_failure_with_its_own_code_and_status() -> None:
    plain = AgentFailure("the tool broke")
    assert isinstance(plain, AgentError) and isinstance(plain, StreamFailure)
    assert (plain.code, plain.status, plain.retryable) == ("agent_error", 502, False)
    own = AgentFailure("slow down", retryable=True, code="upstream_rate_limited", status=429,
                       retry_after=2.5)
    assert (own.code, own.status, own.http_status, own.retryable) == (
        "upstream_rate_limited", 429, 429, True)
    assert own.headers() == {"Retry-After": "3"}
    assert own.body()["error"]["code"] == "upstream_rate_limited"
    # The instance's values never leak into the class.
    assert (AgentFailure.code, AgentFailure.status, AgentFailure.retryable) == (
        "agent_error", 502, False)


def test_an_upstream_error_keeps_the_upstream_status_apart_from_ours() -> None:
    error = UpstreamError("upstream_rate_limited", "openai: 429 rate limit", retryable=True,
                          status=429, retry_after=1.0)
    assert isinstance(error, AgentFailure)
    assert (error.upstream_status, error.status, error.code) == (429, 429,
                                                                 "upstream_rate_limited")
    down = UpstreamError("upstream_bad_request", "openai: 400", status=400)
    assert (down.upstream_status, down.status) == (400, 502)  # the upstream's fault, not yours
