"""Outage repair of a KiteSource: the minutes an outage missed, fetched from Kite's history once final.

After a reconnect, the first tick of each instrument opens a repair item (token, last tick before,
first tick after). Once the item's last minute is final (``repair_grace`` seconds after its end,
``core.repair.REPAIR_SETTLE_S``) its minutes are fetched and handed to the sink (``on_history``), then
the outage is marked (``on_gap``). The fetches run on the session's history thread when the source
was given ``jobs`` (runtime.history.HistoryService), else on a thread of the source's own.
"""

from __future__ import annotations

import queue
import threading

from ..core.timeframes import NS
from ..errors import CredentialsError
from .auth import LOGIN_HINT
from .reactor import call_in_reactor

_MINUTE_NS = 60 * NS
TOKEN_REJECTED = (
    "Kite rejected the access token (HTTP 403): it may have expired (tokens expire daily around "
    f"06:00 IST); {LOGIN_HINT}"
)


class OutageRepair:
    """The repair half of ``KiteSource`` (a mixin over its fields: ``_clock``, ``repair_grace``,
    ``_jobs``, ``_repair_q``/``_repair_stop``/``_repair_said``, ``_gen``, ``_sink``, the counters)."""

    def _repair_due(self, item: tuple[int, int, int]) -> bool:
        """The outage's minutes are final: its last minute ended ``repair_grace`` seconds ago."""
        return self._clock() >= (item[2] // _MINUTE_NS + 1) * _MINUTE_NS + self.repair_grace * NS

    def _queue_repair(self, gen: int, item: tuple[int, int, int]) -> None:
        if self._jobs is None:
            self._repair_q.put(item)
            return
        stop = self._repair_stop

        def run() -> None:
            if not self._repair_one(gen, item, stop):
                stop.set()  # the token was refused: no more repairs of this connection

        self._jobs(run, ready=lambda: self._repair_due(item),
                   cancelled=lambda: stop.is_set() or gen != self._gen, what=f"outage repair of {item[0]}")

    def _repair_loop(self, gen: int, q: queue.Queue, stop: threading.Event) -> None:
        pending: list[tuple[int, int, int]] = []
        while not stop.is_set():
            try:
                pending.append(q.get(timeout=0.25))
                continue  # drain the queue first
            except queue.Empty:
                pass
            for item in [p for p in pending if self._repair_due(p)]:
                if stop.is_set():
                    return
                pending.remove(item)
                if not self._repair_one(gen, item, stop):
                    return

    def _repair_one(self, gen: int, item: tuple[int, int, int], stop: threading.Event) -> bool:
        """Fetch one outage's minutes, hand them to the sink, mark the gap; False: stop repairing."""
        token, t0, t1 = item
        try:
            candles = self._history_client().fetch(
                token, "1m", (t0 // _MINUTE_NS) * _MINUTE_NS, (t1 // _MINUTE_NS + 1) * _MINUTE_NS)
        except CredentialsError:
            if gen == self._gen and self._running:
                call_in_reactor(self._fatal, TOKEN_REJECTED)
            return False
        except Exception as exc:  # noqa: BLE001 - historical unavailable: mark the gap
            candles = None
            if not self._repair_said:
                self._repair_said = True
                self._emit_error(f"gap repair unavailable, gaps are marked instead: {exc}", False)
        if stop.is_set() or gen != self._gen:
            return False
        sink = self._sink
        with self._lock:
            self._pending_repairs -= 1
        try:
            if candles is not None and len(candles):
                sink.on_history(token, "1m", candles)  # type: ignore[union-attr]
                self._repaired += 1
            self._gaps += 1
            sink.on_gap(token, int(t0), int(t1))  # type: ignore[union-attr]
        except Exception as exc:  # noqa: BLE001
            self._emit_error(f"sink failed during gap repair: {exc}", False)
        return True
