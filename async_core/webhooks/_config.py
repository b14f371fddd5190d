"""Webhook configuration, checked once at start-up, and the signed request.

A server with a bad webhook configuration must not start and then lose every
delivery quietly: ``WebhookConfig.from_settings`` refuses it with a sentence
naming the setting. Signing follows Standard Webhooks v1 (the ``standardwebhooks``
package): ``webhook-id`` (the outbox row id, the same on every retry: the
receiver's idempotency key), ``webhook-timestamp`` (fresh per attempt) and
``webhook-signature`` (one ``v1,`` signature per configured secret, so secrets
rotate without downtime).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from standardwebhooks import Webhook

from .._settings import Settings
from ..exceptions import ConfigError
from ._ssrf import IPNetwork, UrlRefused, parse_allowlist, refusal, split_url

MIN_SECRET_BYTES, MAX_SECRET_BYTES = 24, 64


class WebhookConfigError(ConfigError):
    """The webhook settings cannot work; the server refuses to start."""


@dataclass(frozen=True, kw_only=True)
class WebhookConfig:
    """Checked webhook settings (see ``Settings`` for each field's meaning)."""

    urls: tuple[str, ...]
    signers: tuple[Webhook, ...] = field(repr=False)
    allow: tuple[IPNetwork, ...] = ()
    timeout: float = 15.0
    max_attempts: int = 12
    backoff: float = 5.0
    backoff_max: float = 21600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookConfig | None:
        """Check the ``STREAMBRIDGE_WEBHOOK_*`` settings; None when no URL is configured.

        Raises:
            WebhookConfigError: naming the setting and what is wrong with it.
        """
        urls = tuple(u.strip() for u in settings.webhook_urls.split(",") if u.strip())
        if not urls:
            return None
        try:
            allow = parse_allowlist(settings.webhook_allow)
        except ValueError as e:
            raise WebhookConfigError(f"STREAMBRIDGE_WEBHOOK_ALLOW: {e}") from None
        for url in urls:
            _check_url(url, allow)
        secrets = [s.strip() for s in settings.webhook_secret.split(",") if s.strip()]
        if not secrets:
            raise WebhookConfigError(
                "STREAMBRIDGE_WEBHOOK_URLS is set but STREAMBRIDGE_WEBHOOK_SECRET is not: "
                "webhooks must be signed (whsec_ + base64 of 24-64 random bytes)")
        if settings.webhook_timeout <= 0 or settings.webhook_max_attempts < 1:
            raise WebhookConfigError("STREAMBRIDGE_WEBHOOK_TIMEOUT must be > 0 and "
                                     "STREAMBRIDGE_WEBHOOK_MAX_ATTEMPTS >= 1")
        if settings.webhook_backoff < 0 or settings.webhook_backoff_max < settings.webhook_backoff:
            raise WebhookConfigError("STREAMBRIDGE_WEBHOOK_BACKOFF must be >= 0 and <= "
                                     "STREAMBRIDGE_WEBHOOK_BACKOFF_MAX")
        return cls(urls=urls, signers=tuple(_signer(s) for s in secrets), allow=allow,
                   timeout=settings.webhook_timeout, max_attempts=settings.webhook_max_attempts,
                   backoff=settings.webhook_backoff, backoff_max=settings.webhook_backoff_max)

    def headers(self, msg_id: str, payload: str, now: datetime | None = None) -> dict[str, str]:
        """The Standard Webhooks headers of one attempt to send ``payload``."""
        now = now or datetime.now(UTC)
        sigs = " ".join(s.sign(msg_id, now, payload) for s in self.signers)
        return {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": sigs, "content-type": "application/json"}


def _check_url(url: str, allow: tuple[IPNetwork, ...]) -> None:
    try:
        _, host, _ = split_url(url)
    except UrlRefused as e:
        raise WebhookConfigError(f"STREAMBRIDGE_WEBHOOK_URLS: {e.message}") from None
    # An address literal (any spelling inet_aton accepts is caught again at send
    # time, after resolution) can be judged now; names are checked on every attempt.
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host.lower() in ("localhost", "metadata.google.internal", "metadata.amazonaws.com") \
                and not allow:
            raise WebhookConfigError(
                f"STREAMBRIDGE_WEBHOOK_URLS: {url!r} names an internal host; allow its "
                "addresses with STREAMBRIDGE_WEBHOOK_ALLOW if that is intended") from None
        return
    why = refusal(address, allow)
    if why is not None:
        raise WebhookConfigError(
            f"STREAMBRIDGE_WEBHOOK_URLS: {url!r} points at {address}, which is {why}; "
            "allow it with STREAMBRIDGE_WEBHOOK_ALLOW if that is intended")


def _signer(secret: str) -> Webhook:
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "==", validate=False)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith("whsec_") or not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise WebhookConfigError(
            "STREAMBRIDGE_WEBHOOK_SECRET must be whsec_ followed by the base64 of "
            f"{MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} random bytes (Standard Webhooks)")
    return Webhook(secret)
