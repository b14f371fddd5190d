"""Webhook URL refusals (SSRF), start-up configuration checks, and Standard Webhooks signing."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from async_core import Settings
from async_core.webhooks import (
    UrlRefused,
    WebhookConfig,
    WebhookConfigError,
    parse_allowlist,
    refusal,
    resolve,
)
from tests.webhooks.receiver import SECRET

REFUSED = ["127.0.0.1", "127.9.9.9", "::1", "0.0.0.0", "10.1.2.3", "172.16.0.1",
           "192.168.1.1", "169.254.169.254", "100.64.0.1", "224.0.0.1", "fc00::1", "fe80::1",
           "::ffff:127.0.0.1", "::ffff:169.254.169.254", "ff02::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    """Loopback, private, link-local/metadata, shared, multicast and mapped forms are refused."""
    assert refusal(ipaddress.ip_address(address), ()) is not None


def test_public_and_allowlisted_addresses_are_allowed() -> None:
    """A public address passes; a loopback one passes only when allowlisted."""
    assert refusal(ipaddress.ip_address("93.184.216.34"), ()) is None
    allow = parse_allowlist("127.0.0.0/8, ::1")
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow) is None
    assert refusal(ipaddress.ip_address("10.0.0.1"), allow) is not None


@pytest.mark.anyio
@pytest.mark.parametrize("url", [
    "http://localhost:9/x", "http://2130706433/x", "http://0x7f.0.0.1/x", "http://0177.0.0.1/x",
    "http://[::1]/x", "http://169.254.169.254/latest/meta-data", "ftp://example.com/x",
    "http://user:pw@example.com/x", "http:///x",
])
async def test_urls_resolving_to_internal_space_are_refused(url: str) -> None:
    """Every resolved address is checked, whatever spelling the URL uses."""
    with pytest.raises(UrlRefused):
        await resolve(url, ())


@pytest.mark.anyio
async def test_a_checked_url_is_pinned_to_its_address() -> None:
    """The request goes to the checked address; the name travels in Host and SNI."""
    target = await resolve("http://localhost:8123/hook?q=1", parse_allowlist("127.0.0.0/8,::1"))
    assert target.address in ("127.0.0.1", "::1")
    assert target.url in ("http://127.0.0.1:8123/hook?q=1", "http://[::1]:8123/hook?q=1")
    assert target.host_header == "localhost:8123" and target.sni == "localhost"


@pytest.mark.parametrize(("env", "words"), [
    ({"webhook_urls": "http://127.0.0.1:9/h", "webhook_secret": SECRET}, "127.0.0.1"),
    ({"webhook_urls": "http://169.254.169.254/", "webhook_secret": SECRET}, "link-local"),
    ({"webhook_urls": "ftp://example.com/h", "webhook_secret": SECRET}, "http and https"),
    ({"webhook_urls": "https://example.com/h"}, "STREAMBRIDGE_WEBHOOK_SECRET is not"),
    ({"webhook_urls": "https://example.com/h", "webhook_secret": "whsec_c2hvcnQ="},
     "24-64 random bytes"),
    ({"webhook_urls": "https://example.com/h", "webhook_secret": SECRET,
      "webhook_allow": "not-a-net"}, "STREAMBRIDGE_WEBHOOK_ALLOW"),
    ({"webhook_urls": "http://localhost/h", "webhook_secret": SECRET}, "internal host"),
])
def test_bad_configuration_is_refused_with_a_clear_message(env: dict[str, str],
                                                            words: str) -> None:
    """Each bad setting is refused at start-up, naming the setting and the problem."""
    with pytest.raises(WebhookConfigError) as info:
        WebhookConfig.from_settings(Settings.from_env({}, **env))
    assert words in info.value.message


def test_signature_matches_the_standard_webhooks_example() -> None:
    """Known answer: the example of the Standard Webhooks reference library."""
    cfg = WebhookConfig.from_settings(Settings.from_env(
        {}, webhook_urls="https://example.com/h", webhook_secret=SECRET))
    assert cfg is not None
    headers = cfg.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", '{"test": 2432232314}',
                          datetime.fromtimestamp(1614265330, UTC))
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert headers["webhook-timestamp"] == "1614265330"


def test_rotated_secrets_both_sign_and_verify() -> None:
    """Two secrets: two signatures, each verifies with its own secret (zero-downtime rotation)."""
    new = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0IQ=="
    cfg = WebhookConfig.from_settings(Settings.from_env(
        {}, webhook_urls="https://example.com/h", webhook_secret=f"{SECRET},{new}"))
    assert cfg is not None
    headers = cfg.headers("msg_1", '{"a":1}')
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (SECRET, new):
        assert Webhook(secret).verify('{"a":1}', headers) == {"a": 1}
