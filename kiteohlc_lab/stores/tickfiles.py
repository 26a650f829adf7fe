"""The tick store's layout, shared by its writer (``stores/ticks.py``) and readers
(``stores/tickread.py``): the schema, where the store is, file names, date directories, retention,
usage. See ``stores/ticks.py`` for the layout itself.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from typing import Any

import numpy as np

from ..core.timeframes import DAY_NS, IST_OFFSET_NS

log = logging.getLogger("kiteohlc_lab.ticks")

REJECTED_DIR = "_rejected"
SYMBOLS_DIR = "_symbols"
REASONS = ("bad_price", "bad_volume", "bad_stamp")
ZONE = "Asia/Kolkata"
# the top of the book (full mode): prices float64, quantities float32 (exact to 2**24); null where a
# tick has none. Files written before these columns read them as null.
BOOK = ("bid", "ask", "bid_qty", "ask_qty")
PART_NAME = re.compile(r"part-(?P<host>.+)-(?P<pid>\d+)-(?P<start>\d+)-(?P<seq>\d+)\.parquet$")


def schema(rejected: bool = False) -> Any:
    import pyarrow as pa

    ts = pa.timestamp("ns", tz=ZONE)
    fields = [("token", pa.int64()), ("exchange_time", ts), ("receive_time", ts),
              ("last_price", pa.float64()), ("volume", pa.float64()), ("oi", pa.float64()),
              *((name, pa.float64() if name in ("bid", "ask") else pa.float32()) for name in BOOK)]
    if rejected:
        fields.append(("reason", pa.string()))
    return pa.schema(fields)


def resolve(url: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, root path on it)`` of a path or URL (``file://``, ``s3://`` ...)."""
    from pyarrow import fs

    if "://" in url:
        filesystem, path = fs.FileSystem.from_uri(url)
        return filesystem, path.rstrip("/")
    return fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(url))


def store_url(cfg: Any) -> str:
    """Where the configuration's tick store is: ``tick_store``, else ``data_dir/ticks``."""
    return cfg.tick_store or os.path.join(cfg.data_dir, "ticks")


def host_name() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def ist_date(ns: int) -> str:
    """``YYYY-MM-DD`` of the IST day holding ``ns``."""
    day = (int(ns) + IST_OFFSET_NS) // DAY_NS
    return str(np.datetime64(int(day), "D"))


def parse_part(name: str) -> tuple[int, int] | None:
    """``(opened ns, seq)`` of a published part's file name (its order), None for other files."""
    m = PART_NAME.search(name)
    return (int(m.group("start")), int(m.group("seq"))) if m else None


def prune(filesystem: Any, root: str, keep_days: int, today: str) -> list[str]:
    """Delete the ``date=`` directories older than ``keep_days`` before ``today`` (every host,
    accepted and rejected). Returns the paths deleted."""
    if keep_days <= 0:
        return []
    oldest = str(np.datetime64(today) - np.timedelta64(keep_days - 1, "D"))
    gone = []
    for base in (root, f"{root}/{REJECTED_DIR}"):
        for hdir in list_dirs(filesystem, base, "host="):
            for ddir in list_dirs(filesystem, hdir, "date="):
                if ddir.rsplit("date=", 1)[1] < oldest:
                    try:
                        filesystem.delete_dir(ddir)
                        gone.append(ddir)
                    except OSError as exc:  # another host pruning the same day
                        log.debug("tick store: %s not deleted: %s", ddir, exc)
    return gone


def list_dirs(filesystem: Any, base: str, prefix: str) -> list[str]:
    from pyarrow import fs

    try:
        infos = filesystem.get_file_info(fs.FileSelector(base, allow_not_found=True))
    except OSError:
        return []
    return sorted(i.path for i in infos if i.type == fs.FileType.Directory
                  and i.base_name.startswith(prefix))


def usage(filesystem: Any, root: str, today: str, rows_cache: dict[str, int] | None = None) -> dict:
    """``{"bytes": size of the store, "today_closed": ticks in today's published files}``."""
    from pyarrow import fs
    import pyarrow.parquet as pq

    infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    size = sum(i.size or 0 for i in infos if i.type == fs.FileType.File)
    cache = rows_cache if rows_cache is not None else {}
    count = 0
    for i in infos:
        if (i.type == fs.FileType.File and f"/date={today}/" in i.path and parse_part(i.base_name)
                and not i.base_name.startswith(".") and f"/{REJECTED_DIR}/" not in i.path):
            if i.path not in cache:  # published files never change
                with filesystem.open_input_file(i.path) as fh:
                    cache[i.path] = pq.ParquetFile(fh).metadata.num_rows
            count += cache[i.path]
    return {"bytes": size, "today_closed": count}


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True
