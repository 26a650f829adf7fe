"""Bad ticks are rejected before the engine sees them (README "Candle conventions", rule 1).

A corrupt field must never become a candle or move the clock: one packet stamped ten years ahead
would otherwise close every candle and make every real tick after it late. Rejected ticks are
counted per instrument and kind, and each (instrument, kind) is reported once, in one line naming
the instrument and the value.

Kinds:

* ``bad_price``: price NaN, infinite, zero or negative;
* ``bad_volume``: cumulative volume negative or infinite (an absent volume, NaN, is fine);
* ``bad_stamp``: before 2000-01-01; live: later than the exchange clock + ``ahead_s``, or before
  00:00 IST of the exchange clock's day; replay: a lone jump of more than ``jump_s`` ahead of the
  tape's running time that the next tick does not follow (the last tick: more than
  ``end_jump_days`` ahead).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .ticks import TickBatch
from .timeframes import DAY_NS, IST_OFFSET_NS, NS

__all__ = ["TickFilter", "KINDS", "MIN_TS"]

KINDS = ("bad_price", "bad_volume", "bad_stamp")
MIN_TS = 946_684_800 * NS - IST_OFFSET_NS  # 2000-01-01 00:00 IST
_NONE = np.iinfo(np.int64).min


def _stamp(ts: int) -> str:
    import datetime as dt

    try:
        d = dt.datetime.fromtimestamp(ts / NS, dt.timezone(dt.timedelta(seconds=IST_OFFSET_NS // NS)))
        return d.strftime("%Y-%m-%d %H:%M:%S IST")
    except (OverflowError, OSError, ValueError):
        return f"{ts} ns"


def _span(ns: int) -> str:
    s = abs(ns) / NS
    if s >= 2 * 86400:
        return f"{s / 86400:.0f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.0f} hours"
    return f"{s:.0f} s"


class TickFilter:
    """Rejects bad ticks; counts and reports them.

    Parameters
    ----------
    live : live source (stamps checked against the exchange clock) or replay (against the tape)
    ahead_s : live: the most a stamp may be ahead of the exchange clock
    jump_s : replay: the largest forward jump a tape may make without the next tick following it
    end_jump_days : replay: the largest jump of a tape's last tick (no next tick can follow it)
    name_of : token -> display name for messages
    """

    def __init__(self, live: bool, *, ahead_s: float = 10.0, jump_s: float = 60.0, end_jump_days: float = 7.0,
                 name_of: Callable[[int], str] | None = None) -> None:
        self.live = bool(live)
        self.ahead_ns = int(ahead_s * NS)
        self.jump_ns = int(jump_s * NS)
        self.end_jump_ns = int(end_jump_days * 86400 * NS)
        self.name_of = name_of or str
        self.counts: dict[int, dict[str, int]] = {}
        self.totals = dict.fromkeys(KINDS, 0)
        self._run = _NONE  # replay: the latest accepted stamp
        self._held: TickBatch | None = None  # replay: a suspect last tick waiting for the next one
        self._messages: list[str] = []
        self._reported: set[tuple[int, str]] = set()
        # rejected rows for the tick store (take_rejected), kept only when it asks
        self.keep_rejected = False
        self._kept: list[tuple[TickBatch, np.ndarray]] = []

    # ------------------------------------------------------------------ API
    def check(self, batch: TickBatch, now_ns: int | None = None) -> TickBatch:
        """The accepted ticks of ``batch`` in arrival order (a replay may hold its last one back)."""
        if self._held is not None:
            batch = TickBatch.concat([self._held, batch])
            self._held = None
        n = len(batch)
        if n == 0:
            return batch
        price, vol, ts = batch.price, batch.volume, batch.ts
        if self._all_good(price, vol, ts, now_ns):
            return batch
        ok = (price > 0) & (price < np.inf)  # False for NaN too
        bad_price = ~ok
        bad_volume = (vol < 0) | (vol == np.inf)
        ok &= ~bad_volume
        bad_stamp = ts < MIN_TS
        why: dict[int, str] = {}
        if self.live and now_ns is not None:
            ahead = ts > now_ns + self.ahead_ns
            day0 = ((now_ns + IST_OFFSET_NS) // DAY_NS) * DAY_NS - IST_OFFSET_NS
            stale = (ts < day0) & ~bad_stamp
            if ahead.any():
                for i in np.flatnonzero(ahead)[:1]:
                    why[int(batch.token[i])] = (f"{_span(int(ts[i]) - now_ns)} ahead of the exchange clock "
                                                f"(accepted: up to {self.ahead_ns // NS} s)")
            if stale.any():
                for i in np.flatnonzero(stale)[:1]:
                    why.setdefault(int(batch.token[i]), "from an earlier day than the exchange clock's "
                                   "(Kite re-sends its cached last tick on subscribe)")
            bad_stamp |= ahead | stale
        ok &= ~bad_stamp
        if not self.live:
            jumps = self._jumps(ts, ok)
            if jumps is not None:
                bad_j, nxt, hold = jumps
                for i in np.flatnonzero(bad_j)[:1]:
                    why[int(batch.token[i])] = (f"{_span(int(ts[i]) - int(nxt[i]))} after the next tick of the "
                                                "tape, a lone jump the tape does not follow (accepted: up to "
                                                f"{self.jump_ns // NS} s ahead of the running time, or a jump "
                                                "the tape follows)")
                bad_stamp |= bad_j
                ok &= ~bad_j
                if hold is not None:
                    ok[hold] = False
                    self._held = batch.take(slice(hold, hold + 1))
        if not ok.all():
            self._count(batch, bad_price, bad_volume & ~bad_price,
                        bad_stamp & ~bad_price & ~bad_volume, why)
            if self.keep_rejected:
                self._keep(batch, bad_price, bad_volume, bad_stamp)
        if not self.live:
            acc = ts[ok]
            if len(acc):
                self._run = max(self._run, int(acc.max()))
        return batch if ok.all() else batch.take(ok)

    def _all_good(self, price: np.ndarray, vol: np.ndarray, ts: np.ndarray, now_ns: int | None) -> bool:
        """The usual batch, proved good by a few reductions instead of a mask per rule (the rules
        themselves are the masks of ``check``): prices finite above 0, volumes not negative nor
        infinite (NaN is fine), stamps after 2000; live: within the exchange clock's day and
        ``ahead_s``; replay: no tick more than ``jump_s`` ahead of the running time before it
        (then the running time moves on here)."""
        if not (price.min() > 0 and price.max() < np.inf):  # NaN fails both
            return False
        if np.fmin.reduce(vol) < 0 or np.fmax.reduce(vol) == np.inf:  # fmin/fmax skip NaN
            return False
        lo, hi = int(ts.min()), int(ts.max())
        if lo < MIN_TS:
            return False
        if self.live:
            if now_ns is None:
                return True
            day0 = ((now_ns + IST_OFFSET_NS) // DAY_NS) * DAY_NS - IST_OFFSET_NS
            return hi <= now_ns + self.ahead_ns and lo >= day0
        if self._run == _NONE or int(ts[0]) > self._run + self.jump_ns:
            return False
        if len(ts) > 1 and int(np.subtract(ts[1:], ts[:-1]).max()) > self.jump_ns:
            # no step between neighbours above J proves it (the running time before a tick is at
            # least its neighbour's stamp); else the running time itself
            run = np.maximum.accumulate(ts[:-1])
            if int((ts[1:] - run).max()) > self.jump_ns:
                return False
        self._run = max(self._run, hi)
        return True

    def flush(self) -> TickBatch:
        """The end of a tape: a held last tick is judged by the running time alone."""
        held, self._held = self._held, None
        if held is None:
            return TickBatch.empty()
        ts = int(held.ts[0])
        if self._run != _NONE and ts > self._run + self.end_jump_ns:
            tok = int(held.token[0])
            f = np.zeros(1, bool)
            self._count(held, f, f, np.ones(1, bool),
                        {tok: f"{_span(ts - self._run)} ahead of the tape's running time at its end "
                              f"(accepted: up to {self.end_jump_ns // (86400 * NS)} days)"})
            return TickBatch.empty()
        self._run = max(self._run, ts)
        return held

    def take_rejected(self) -> tuple[TickBatch, np.ndarray] | None:
        """The rejected ticks since the last call and their kinds (``keep_rejected`` on), or None."""
        kept, self._kept = self._kept, []
        if not kept:
            return None
        return TickBatch.concat(b for b, _ in kept), np.concatenate([r for _, r in kept])

    def _keep(self, batch: TickBatch, bad_price, bad_volume, bad_stamp) -> None:
        bad = bad_price | bad_volume | bad_stamp
        kinds = np.where(bad_price, "bad_price", np.where(bad_volume, "bad_volume", "bad_stamp"))
        self._kept.append((batch.take(bad), kinds[bad].astype(object)))

    def take_messages(self) -> list[str]:
        """New one-line reports since the last call (one per instrument and kind, ever)."""
        out, self._messages = self._messages, []
        return out

    def rejected(self, name_of: Callable[[int], str] | None = None) -> dict[str, dict[str, int]]:
        """``{symbol: {kind: n}}`` for ``status()``."""
        name = name_of or self.name_of
        return {name(tok): dict(c) for tok, c in self.counts.items()}

    # ------------------------------------------------------------------ internals
    def _jumps(self, ts: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, int | None] | None:
        """Replay: lone forward jumps among the ticks not already rejected.

        Returns (rejected mask, the next good tick's stamp for each, the index of a suspect last
        good tick that must wait for the next batch), or None when there is nothing to judge.
        """
        J = self.jump_ns
        if self._run != _NONE and ok.all():
            # the usual tape: every tick within J of the running time before it, so no jump to judge
            run = np.maximum.accumulate(ts)
            if int(ts[0]) <= self._run + J and (len(ts) == 1 or bool((ts[1:] <= run[:-1] + J).all())):
                return None
        idx = np.flatnonzero(ok)  # bad prices, volumes and impossible stamps are out already
        n = len(idx)
        if n == 0:
            return None
        t = ts[idx]
        nxt = np.empty(n, np.int64)
        nxt[:-1] = t[1:]
        nxt[-1] = np.iinfo(np.int64).max  # unknown: decided with the next batch
        acc = np.ones(n, bool)
        bad = np.zeros(n, bool)
        while True:
            # running time before each tick, over the accepted ones
            seen = np.where(acc, t, _NONE)
            run = np.empty(n, np.int64)
            run[0] = self._run
            if n > 1:
                np.maximum.accumulate(seen[:-1], out=run[1:])
                np.maximum(run[1:], self._run, out=run[1:])
            first = run == _NONE
            jump = acc & (first | (t > run + J))
            cand = jump & (t - J > nxt)
            if not cand.any():
                break
            i = int(np.flatnonzero(cand)[0])
            acc[i] = False
            bad[i] = True
        hold = int(idx[-1]) if (jump[-1] and acc[-1]) else None
        if not bad.any() and hold is None:
            return None
        full = np.zeros(len(ts), bool)
        full[idx[bad]] = True
        nxt_full = np.zeros(len(ts), np.int64)
        nxt_full[idx] = nxt
        return full, nxt_full, hold

    def _count(self, batch: TickBatch, bad_price, bad_volume, bad_stamp, why: dict[int, str]) -> None:
        for kind, mask in (("bad_price", bad_price), ("bad_volume", bad_volume), ("bad_stamp", bad_stamp)):
            if not mask.any():
                continue
            idx = np.flatnonzero(mask)
            self.totals[kind] += len(idx)
            toks, first, cnt = np.unique(batch.token[idx], return_index=True, return_counts=True)
            for tok, f, c in zip(toks.tolist(), first.tolist(), cnt.tolist()):
                per = self.counts.setdefault(tok, {})
                per[kind] = per.get(kind, 0) + c
                if (tok, kind) in self._reported:
                    continue
                self._reported.add((tok, kind))
                i = int(idx[f])
                self._messages.append(self._line(tok, kind, batch, i, why.get(tok)))

    def _line(self, tok: int, kind: str, batch: TickBatch, i: int, why: str | None) -> str:
        name = self.name_of(tok)
        tail = "; rejected, and further ones are counted in status()"
        if kind == "bad_price":
            return (f"bad tick from {name}: price {float(batch.price[i])!r} (accepted: a finite price "
                    f"above 0){tail}")
        if kind == "bad_volume":
            return (f"bad tick from {name}: cumulative volume {float(batch.volume[i])!r} (accepted: 0 "
                    f"or more){tail}")
        ts = int(batch.ts[i])
        reason = why or ("before 2000-01-01" if ts < MIN_TS else "implausible")
        return f"bad tick from {name}: stamped {_stamp(ts)}, {reason}{tail}"
