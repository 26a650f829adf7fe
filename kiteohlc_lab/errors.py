"""The project's exception family. Messages are one line: the bad value and what is accepted."""

from __future__ import annotations


class KiteOHLCError(Exception):
    """Base class for every error kiteohlc_lab raises on purpose."""


class TimeframeError(KiteOHLCError, ValueError):
    """A timeframe string that the grammar does not accept."""


class SymbolError(KiteOHLCError, LookupError):
    """A symbol that cannot be resolved to an instrument token."""


class TapeError(KiteOHLCError, ValueError):
    """A replay tape that cannot be read (missing column, malformed row)."""


class ConfigError(KiteOHLCError, ValueError):
    """A configuration value that is not accepted."""


class CredentialsError(KiteOHLCError):
    """Missing, rejected or expired Kite credentials."""


class StoreError(KiteOHLCError):
    """A store that cannot be reached or used."""


class TickStoreError(KiteOHLCError, ValueError):
    """A tick store range that cannot be read (bad bounds, nothing stored there)."""


class MissingExtraError(KiteOHLCError, ImportError):
    """An optional dependency that is not installed (the message names the pip extra)."""
