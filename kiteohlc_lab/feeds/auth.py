"""Kite credentials: where they come from, the login exchange, and keeping them out of text.

The access token is a bearer secret for the whole trading account until about 06:00 IST the next day.
It must never reach a log line, a repr, a status dict or an error message; ``redact`` and
``RedactFilter`` are the tools for that.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Mapping

from ..config import read_dotenv
from ..errors import CredentialsError

LOGIN_HINT = (
    "generate a new one with kiteohlc_lab.login(...) or set KITE_ACCESS_TOKEN"
)


@dataclass(frozen=True)
class Credentials:
    """An API key and access token. The repr never shows the token."""

    api_key: str
    access_token: str = field(repr=False)
    source: str = "explicit"

    def __repr__(self) -> str:
        return f"Credentials(api_key={self.api_key!r}, access_token='***', source={self.source!r})"


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of each non-empty secret in ``text`` by ``***``.

    >>> redact("wss://x?api_key=k&access_token=abc123", "abc123")
    'wss://x?api_key=k&access_token=***'
    """
    out = str(text)
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        out = out.replace(s, "***")
    return out


class RedactFilter(logging.Filter):
    """A logging filter that redacts registered secrets from records (message and args)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def add(self, *secrets: str | None) -> None:
        self.secrets.update(s for s in secrets if s and len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "kiteconnect.ticker" and record.levelno >= logging.ERROR:
            # kiteconnect logs every close, ours included, at ERROR; the feed reports real
            # problems itself (status, one warning), so these become DEBUG noise
            msg = str(record.msg)
            if msg.startswith(("Connection closed", "Connection error")):
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        if self.secrets:
            try:
                msg = record.getMessage()
            except Exception:  # noqa: BLE001 - a broken record is not ours to fix
                return True
            clean = redact(msg, *self.secrets)
            if clean != msg:
                record.msg, record.args = clean, None
        return True


_FILTER = RedactFilter()
# Loggers that may see a token: kiteconnect logs request headers (debug) and close reasons.
_GUARDED = ("kiteconnect", "kiteconnect.connect", "kiteconnect.ticker", "kiteohlc_lab", "urllib3")


def guard_logging(*secrets: str | None) -> None:
    """Redact ``secrets`` from every record of the loggers that could echo them."""
    _FILTER.add(*secrets)
    for name in _GUARDED:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)


def load_credentials(
    api_key: str | None = None,
    access_token: str | None = None,
    env: Mapping[str, str] = os.environ,
    dotenv_path: str | os.PathLike | None = ".env",
) -> Credentials:
    """Find the Kite API key and access token: explicit > ``KITE_API_KEY``/``KITE_ACCESS_TOKEN`` > .env.

    Each value is looked up on its own, so a key may come from the environment and a token from
    ``.env``. Raises ``CredentialsError`` naming what is missing (never a value).
    """
    dot = read_dotenv(dotenv_path) if dotenv_path else {}
    sources = []

    def pick(given: str | None, name: str) -> str | None:
        if given:
            sources.append("explicit")
            return given
        if env.get(name):
            sources.append("env")
            return env[name]
        if dot.get(name):
            sources.append(".env")
            return dot[name]
        return None

    key = pick(api_key, "KITE_API_KEY")
    token = pick(access_token, "KITE_ACCESS_TOKEN")
    missing = [n for n, v in (("KITE_API_KEY", key), ("KITE_ACCESS_TOKEN", token)) if not v]
    if missing:
        raise CredentialsError(
            f"missing Kite credentials: {', '.join(missing)}; pass them explicitly, set the "
            f"environment variables or put KEY=VALUE lines in {dotenv_path or '.env'}"
        )
    guard_logging(token)
    src = sources[0] if len(set(sources)) == 1 else "+".join(dict.fromkeys(sources))
    return Credentials(str(key), str(token), src)


def login(api_key: str, api_secret: str, request_token: str, api_url: str | None = None) -> str:
    """Exchange a login ``request_token`` for an access token (``KiteConnect.generate_session``).

    Returns the access token; prints and logs neither it nor the secret.
    """
    from kiteconnect import KiteConnect
    from kiteconnect import exceptions as kex

    guard_logging(api_secret, request_token)
    kite = KiteConnect(api_key, root=api_url)
    try:
        session = kite.generate_session(request_token, api_secret=api_secret)
    except kex.KiteException as exc:
        msg = redact(str(exc), api_secret, request_token)
        raise CredentialsError(f"Kite login failed: {msg}") from None
    token = session.get("access_token")
    if not token:
        raise CredentialsError("Kite login returned no access token")
    guard_logging(token)
    return str(token)
