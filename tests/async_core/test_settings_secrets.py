"""Settings never show a secret in their repr (a log line or a traceback would leak it)."""

from __future__ import annotations

from async_core import Settings


def test_urls_with_passwords_and_keys_are_kept_out_of_the_repr() -> None:
    env = {
        "STREAMBRIDGE_REDIS_URL": "redis://:redis-pass-1@127.0.0.1:6390/0",
        "STREAMBRIDGE_DATABASE_URL": "postgresql+asyncpg://sb:db-pass-2@127.0.0.1/sb",
        "STREAMBRIDGE_API_KEYS": "acme:key-pass-3",
        "STREAMBRIDGE_OPERATOR_KEY": "op-pass-4",
    }
    settings = Settings.from_env(env)
    assert settings.log.redis_url.endswith("@127.0.0.1:6390/0")  # read, but not shown
    shown = repr(settings)
    for secret in ("redis-pass-1", "db-pass-2", "key-pass-3", "op-pass-4"):
        assert secret not in shown, secret
