"""SymbolBook: which instrument token a symbol the researcher types means.

It owns the instrument tables (one per source, loaded once), the last tapes read, the symbols learned
from streams and the ``symbols.json`` memory in the data directory (symbol -> token across sessions).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import KiteOHLC
from ..errors import KiteOHLCError, SymbolError

log = logging.getLogger("kiteohlc_lab")


class SymbolBook:
    """Symbol -> token (and token -> display symbol) for one Manager."""

    def __init__(self, config: Callable[[], KiteOHLC], lock: threading.RLock) -> None:
        self._config = config  # the Manager's current configuration (it may be replaced)
        self._lock = lock  # the Manager's lock (the tables load once between threads)
        self.names: dict[int, str] = {}  # token -> display symbol
        self.symbol_tokens: dict[str, int] = {}  # SYMBOL (upper) -> token, learned from streams
        self._tables: dict[str, Any] = {}  # instrument tables: "cache" or "<source>:<api url>"
        self._tapes: dict[tuple[str, float], Any] = {}  # (path, mtime) -> the last two tapes read

    def table(self, kite: Any = None, key: str = "cache") -> Any:
        """The instruments table ``key`` (loaded once; an empty one when it is not available)."""
        from ..feeds.instruments import InstrumentTable

        with self._lock:
            t = self._tables.get(key)
            if t is None:
                try:
                    t = InstrumentTable.load(kite, self._config().data_dir)
                except KiteOHLCError:
                    raise
                except Exception as exc:
                    log.warning("instruments table not available (%s); aliases and tokens only", exc)
                    t = InstrumentTable(None)
                self._tables[key] = t
            return t

    def read_tape(self, path: str) -> Any:
        """The tape at ``path`` (opened once while its file is unchanged): a well-typed file is
        streamed block by block (``feeds.tapefile.TapeStream``), any other read whole."""
        from ..feeds.tapefile import open_tape as read_tape

        p = Path(path).expanduser()
        key = (str(p.resolve()) if p.exists() else str(p), p.stat().st_mtime if p.exists() else 0.0)
        tape = self._tapes.get(key)
        if tape is None:
            tape = self._tapes[key] = read_tape(p)
            while len(self._tapes) > 2:  # the last two tapes (one read whole is ~40 bytes a tick)
                self._tapes.pop(next(iter(self._tapes)))
        return tape

    def resolve(self, symbol: str, extra: dict[str, int] | None = None, table: Any = None) -> int:
        """Symbol -> instrument token (tape symbols, aliases, the instruments table, a token)."""
        up = symbol.strip().upper()
        if extra is None and up in self.symbol_tokens:
            return self.symbol_tokens[up]
        t = table if table is not None else self.table()
        inst = t.resolve(symbol, extra)
        return int(inst.token)

    def _symbols_file(self) -> Path:
        return Path(self._config().data_dir) / "symbols.json"

    def remember(self, pairs: list[tuple[str, int]]) -> None:
        """Learn (symbol, token) pairs a stream writes, and keep them across sessions, so
        candles('RELIANCE', ...) works after a restart."""
        self._save(pairs)
        for sym, tok in pairs:
            self.names.setdefault(tok, sym)
            self.symbol_tokens[sym.upper()] = tok

    def _save(self, pairs: list[tuple[str, int]]) -> None:
        known = self.known()
        new = {s.upper(): int(t) for s, t in pairs if known.get(s.upper()) != int(t)}
        if not new:
            return
        known.update(new)
        try:
            path = self._symbols_file()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, indent=0, sort_keys=True))
            tmp.replace(path)
        except OSError as exc:
            log.debug("symbols not saved: %s", exc)

    def known(self) -> dict[str, int]:
        """The symbols.json memory ({} when there is none)."""
        try:
            return {k: int(v) for k, v in json.loads(self._symbols_file().read_text()).items()}
        except (OSError, ValueError):
            return {}

    def token_of(self, symbol: str | int) -> int:
        """Token for a symbol the researcher reads (no network: streams, tapes, cache, aliases)."""
        if isinstance(symbol, (int, np.integer)):
            return int(symbol)
        up = str(symbol).strip().upper()
        if up in self.symbol_tokens:
            return self.symbol_tokens[up]
        known = self.known()
        if up in known:
            self.symbol_tokens[up] = known[up]
            return known[up]
        extra: dict[str, int] = {}
        for tape in self._tapes.values():
            extra.update(tape.symbols)
        for t in self._tables.values():
            try:
                return int(t.resolve(symbol, extra).token)
            except SymbolError:
                continue
        return self.resolve(symbol, extra)

    def tick_size(self, symbol: str | int) -> float | None:
        """The instrument's tick size from the tables loaded so far (None if none knows it)."""
        for t in list(self._tables.values()):
            try:
                ts = float(t.resolve(symbol).tick_size)
            except Exception:  # noqa: BLE001 - a table that does not know the symbol
                continue
            if ts > 0:
                return ts
        return None
