"""MongoDB candle history.

One collection (default ``kiteohlc.candles``), one document per candle
``{token, tf, start, open, high, low, close, volume, oi, ticks}`` with a unique compound index
``(token, tf, start)``. Writes are unordered ``bulk_write`` batches of ``UpdateOne(upsert=True)``;
reads are one range query with a projection, turned into columns without building candle objects.
Works with a ``mongomock.MongoClient`` passed in (tests, demos).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd

from ..core.candles import CandleBatch, frame_from_arrays
from ..errors import StoreError

_FIELDS = ("start", "open", "high", "low", "close", "volume", "oi")
_PROJECTION = {"_id": 0, **{k: 1 for k in _FIELDS}}
_MOCK_LOCK = threading.Lock()
_CHUNK = 5000  # operations per bulk_write: bounded memory, still few round trips


class MongoHistory:
    """Closed-candle history in MongoDB.

    Parameters
    ----------
    uri_or_client : ``mongodb://`` URI or a ``pymongo.MongoClient`` / ``mongomock.MongoClient``.
    db, collection : where the candles live.
    """

    name = "mongo"

    def __init__(
        self, uri_or_client: Any, db: str = "kiteohlc", collection: str = "candles", **client_kw: Any
    ) -> None:
        if isinstance(uri_or_client, str):
            import pymongo

            kw = dict(serverSelectionTimeoutMS=3000, connectTimeoutMS=3000)
            kw.update(client_kw)
            self._client = pymongo.MongoClient(uri_or_client, **kw)
            self._owns_client = True
        else:
            self._client = uri_or_client
            self._owns_client = False
        self.db_name, self.collection_name = db, collection
        self._coll = self._client[db][collection]
        self._indexed = False
        # mongomock gets its own write path (see _mock_upsert); its bulk_write also breaks on
        # pymongo>=4.9 UpdateOne, which passes ``sort=``.
        self._mock = type(self._coll).__module__.startswith("mongomock")
        try:
            self._ensure_index()
        except Exception:  # server down at start: retried on first write (Resilient spools meanwhile)
            pass

    def _ensure_index(self) -> None:
        if not self._indexed and not self._mock:
            self._coll.create_index(
                [("token", 1), ("tf", 1), ("start", 1)], unique=True, name="token_tf_start"
            )
            self._indexed = True

    def write(self, batch: CandleBatch) -> None:
        """Upsert the batch's candles (unordered bulk writes of ``_CHUNK`` operations)."""
        if not len(batch):
            return
        from pymongo import UpdateOne

        self._ensure_index()
        tf = batch.tf
        cols = [getattr(batch, k).tolist() for k in
                ("token", "start", "open", "high", "low", "close", "volume", "oi", "ticks")]
        if self._mock:
            self._mock_upsert(tf, cols)
            return
        # the last row of each candle only: an unordered bulk write may apply two updates of one
        # document in either order (a batch can hold a candle and its amendment)
        last = {(row[0], row[1]): row for row in zip(*cols)}
        ops = [
            UpdateOne(
                {"token": t, "tf": tf, "start": s},
                {"$set": {"open": o, "high": h, "low": lo, "close": c, "volume": v, "oi": oi,
                          "ticks": n}},
                upsert=True,
            )
            for t, s, o, h, lo, c, v, oi, n in last.values()
        ]
        for i in range(0, len(ops), _CHUNK):
            self._coll.bulk_write(ops[i : i + _CHUNK], ordered=False)

    def _mock_upsert(self, tf: str, cols: list[list]) -> None:
        """Upsert for mongomock, which checks a unique index by scanning every document on every
        insert (quadratic: 4000 candles take 40 s) and scans for every update. The unique index is
        not created there; this in-process key map (kept on the mock client, shared by every
        ``MongoHistory`` on it) enforces ``(token, tf, start)`` uniqueness instead."""
        with _MOCK_LOCK:
            keys = self._mock_keys()
            docs: dict[tuple, dict] = {}
            for t, s, o, h, lo, c, v, oi, n in zip(*cols):
                docs[(t, tf, s)] = {"token": t, "tf": tf, "start": s, "open": o, "high": h,
                                    "low": lo, "close": c, "volume": v, "oi": oi, "ticks": n}
            old = [keys[k] for k in docs if k in keys]
            if old:  # one scan to delete, then re-insert: replace == $set of every field
                self._coll.delete_many({"_id": {"$in": old}})
            res = self._coll.insert_many(list(docs.values()), ordered=False)
            keys.update(zip(docs, res.inserted_ids))

    def _mock_keys(self) -> dict[tuple, Any]:
        store = vars(self._client).setdefault("_kiteohlc_keys", {})
        k = (self.db_name, self.collection_name)
        if k not in store:
            store[k] = {(d["token"], d["tf"], d["start"]): d["_id"] for d in
                        self._coll.find({}, {"token": 1, "tf": 1, "start": 1})}
        return store[k]

    def read(
        self, token: int, tf: str, start_ns: int | None = None, end_ns: int | None = None
    ) -> pd.DataFrame:
        """Candles with ``start_ns <= start < end_ns`` as the public frame, sorted by date."""
        query: dict[str, Any] = {"token": int(token), "tf": tf}
        rng: dict[str, int] = {}
        if start_ns is not None:
            rng["$gte"] = int(start_ns)
        if end_ns is not None:
            rng["$lt"] = int(end_ns)
        if rng:
            query["start"] = rng
        # sorted here (numpy, milliseconds) rather than by the server: the same on a real server
        # with the (token, tf, start) index, and mongomock's own sort is very slow
        docs = list(self._coll.find(query, _PROJECTION, batch_size=10_000))
        n = len(docs)
        start = np.fromiter((d["start"] for d in docs), dtype=np.int64, count=n)
        order = np.argsort(start, kind="stable")
        cols = [
            np.fromiter((d.get(k, np.nan) for d in docs), dtype=np.float64, count=n)[order]
            for k in _FIELDS[1:]
        ]
        return frame_from_arrays(start[order], *cols)

    def last_start(self, token: int, tf: str) -> int | None:
        doc = self._coll.find_one(
            {"token": int(token), "tf": tf}, {"_id": 0, "start": 1}, sort=[("start", -1)]
        )
        return None if doc is None else int(doc["start"])

    def count(self) -> int:
        return int(self._coll.count_documents({}))

    def health(self) -> dict:
        try:
            self._client.admin.command("ping")
            return dict(name=self.name, ok=True, error=None, spooled=0)
        except Exception as exc:  # noqa: BLE001 - any driver failure is "not ok"
            return dict(name=self.name, ok=False, error=str(exc).splitlines()[0], spooled=0)

    def describe(self) -> str:
        return f"MongoDB {self.db_name}.{self.collection_name}"

    def close(self) -> None:
        if self._owns_client:
            try:
                self._client.close()
            except Exception as exc:  # noqa: BLE001
                raise StoreError(f"closing MongoDB client failed: {exc}") from exc
