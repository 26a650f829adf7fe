"""The live store's write scripts (Lua, run by ``RedisLive.write`` on a single server).

``CLOSED_LUA`` appends closed candles to their streams (``closed_calls`` makes its arguments);
``WRITE_LUA`` writes the forming hashes, the last-price hashes and the engine state blobs of many
instruments. ``RedisLive.write`` sends the closed candles first: a reader blocked on a stream is
answered when that short script ends, not after the state of thousands of instruments. The state
blob's JSON is made from ``core.state``'s field names (below), the keys follow ``stores/keys.py``.

Closed candles travel as the text their stream entries hold (Python's ``repr`` of each number,
made by ``closed_calls``, a column a field joined by spaces: the script only splits and appends).
The state's numbers travel as little-endian float64 rows (``struct.unpack`` reads one row per
call) and are re-printed with the shortest of 15-17 digits that reads back to the same double (as
Python's repr does); candle starts travel in seconds and other times as (seconds, nanoseconds), so
that epoch nanoseconds never pass through a Lua double. Fencing: each candle and row carries the writer's lease generation of its instrument
(-1: not fenced); an instrument whose generation is older than its lease's current one
(``P{T}:lease:gen``, see kiteohlc_lab.lease) is not written at all (a stale writer's late batch);
both scripts return the tokens refused.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

from ..core.candles import CandleBatch
from ..core.state import CANDLE_FIELDS, STATE_FIELDS, VOLUME_FIELDS
from ..core.ticks import lookup
from . import keys

# A closed candle's strings (CLOSED_LUA), made by closed_calls: Python's text of each value; the
# lease generation last (-1: not fenced)
CLOSED_TEXT = ("token", "start", "open", "high", "low", "close", "volume", "oi", "ticks", "amended", "gen")
# Row layouts of the state (float64 each), shared with redis_live.py
INSTRUMENT_ROW = ("token", "prev", "segmax", "day", "prev_ts_s", "prev_ts_ns", "gen")
FORMING_ROW = ("row", "bucket_s", "open", "high", "low", "close", "vol", "oi", "ticks", "last_ts_s",
               "last_ts_ns")

_PRELUDE = """
local fmt, floor, abs, tonumber, call, unpack_row = string.format, math.floor, math.abs, tonumber,
  redis.call, struct.unpack  -- locals: a global lookup per call costs as much as the call
local verdict, refused = {}, {}
local memo = {}  -- number -> its text: prices repeat (a new candle's open high low close, the
                 -- same close in every timeframe), and formatting one is most of a script's time
local function num(x)
  local s = memo[x]
  if s then return s end
  if x ~= x then return 'nan' end
  local a = abs(x)
  if x == floor(x) and a < 1e15 then
    s = fmt('%d', x) .. '.0'
  elseif a < 1e9 and floor(a * 100 + 0.5) / 100 == a then
    -- a price of whole paise: printed from the integer (a third of the cost of %g)
    local y = floor(a * 100 + 0.5)
    local r, sign = y % 100, x < 0 and '-' or ''
    if r % 10 == 0 then s = fmt('%s%d.%d', sign, (y - r) / 100, r / 10)
    else s = fmt('%s%d.%02d', sign, (y - r) / 100, r) end
  else
    s = fmt('%.15g', x)
    if tonumber(s) ~= x then
      s = fmt('%.16g', x)
      if tonumber(s) ~= x then s = fmt('%.17g', x) end
    end
  end
  memo[x] = s
  return s
end
local function int(x) return fmt('%d', x) end
local counts, starts = {}, {}
local function count(x)  -- an integer that repeats (ticks, flags, days): its text, memoized
  local s = counts[x]
  if s == nil then s = fmt('%d', x); counts[x] = s end
  return s
end
local function start_ns(sec)  -- a candle start in seconds (the same for most rows) as epoch ns
  local s = starts[sec]
  if s == nil then s = fmt('%d', sec) .. '000000000'; starts[sec] = s end
  return s
end
local function ok(t, mine)  -- may this writer (generation mine of token string t) write t?
  if mine == nil or mine < 0 then return true end
  local v = verdict[t]
  if v ~= nil then return v end
  v = mine >= tonumber(call('GET', P .. '{' .. t .. '}:@LEASE_GEN@') or '0')
  if not v then refused[#refused + 1] = t end
  verdict[t] = v
  return v
end
"""

# ARGV = prefix, stream maxlen, header JSON [{tf, m}, ...], then CLOSED_TEXT's eleven columns,
# each the text its stream entries hold of every candle of the call (m per timeframe in order),
# joined by single spaces, or "=" and the one text of a column whose candles all share it (a close's
# start, no oi, no amendment, no fence): appending is all the script does (formatting 250 candles'
# numbers in Lua took 3/4 of its 5 ms on a 2-core machine's Redis, which every reader woken by the
# close waited behind), and eleven arguments a call instead of eleven a candle spare the writer
# the packing of each one
_CLOSED_LUA = """
local P, maxlen, hdr = ARGV[1], ARGV[2], cjson.decode(ARGV[3])
""" + _PRELUDE + """
local gmatch, sub = string.gmatch, string.sub
local col = {}  -- each column's next value
for j = 1, 11 do
  local s = ARGV[3 + j]
  if sub(s, 1, 1) == '=' then
    local v = sub(s, 2)
    col[j] = function() return v end
  else
    col[j] = gmatch(s, '%S+')
  end
end
local c_tok, c_start, c_open, c_high, c_low, c_close = col[1], col[2], col[3], col[4], col[5], col[6]
local c_vol, c_oi, c_ticks, c_amended, c_gen = col[7], col[8], col[9], col[10], col[11]
for _, g in ipairs(hdr) do
  local tail = '}:@CLOSED@:' .. g.tf
  for _ = 1, g.m do
    local t, s, o, h, l, c = c_tok(), c_start(), c_open(), c_high(), c_low(), c_close()
    local v, oi, n, a, gen = c_vol(), c_oi(), c_ticks(), c_amended(), c_gen()
    if ok(t, tonumber(gen)) then
      call('XADD', P .. '{' .. t .. tail, 'MAXLEN', '~', maxlen, '*', 'start', s, 'open', o,
        'high', h, 'low', l, 'close', c, 'volume', v, 'oi', oi, 'ticks', n, 'amended', a)
    end
  end
end
return refused
"""

# ARGV = prefix, now (ns), header JSON, forming message ("" for none), fence JSON ({token: lease
# generation} for the per-token dicts of "f"/"st", "" for none), then the row blobs of "sc".
# header: {"f": forming candles as JSON columns, "st": {"t": tokens, "j": state JSON}} (states given
# as dicts), or "sc": {"n", "base", "clock", "tfs": [{"tf", "m", "blob"}]} with ARGV[6] the n
# INSTRUMENT_ROWs (blob 1) and each timeframe's blob (ARGV[5 + blob]) its m FORMING_ROWs (row: 1-based in the whole export,
# minus base: in this call's instruments) (the engine's state columns).
_WRITE_LUA = """
local P, now, d, msg = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4]
""" + _PRELUDE + """
local gens = nil
if ARGV[5] ~= '' then gens = cjson.decode(ARGV[5]) end
local function mine(ts) if gens then return gens[ts] end return nil end
local tokens_key = P .. '@TOKENS@'
local function sadd(list)  -- one SADD per 500 members
  for a = 1, #list, 500 do call('SADD', tokens_key, unpack(list, a, math.min(#list, a + 499))) end
end
local function write_last(last)  -- token -> {price, oi, start, tf}
  for t, v in pairs(last) do
    call('HSET', P .. '{' .. t .. '}:@LAST@', 'price', v[1], 'oi', v[2], 'start', v[3], 'tf', v[4],
      'updated', now)
  end
end
local function ns(sec, nano)
  if nano < 0 then return '-9223372036854775808' end
  return fmt('%d%09d', sec, nano)
end
local last = {}
for _, g in ipairs(d.f or {}) do
  local tail = '}:@FORMING@:' .. g.tf
  for i = 1, #g.t do
    local t = int(g.t[i])
    if ok(t, mine(t)) then
      local oi = g.oi[i] < 0 and 'nan' or num(g.oi[i])
      local s, c = start_ns(g.s[i]), num(g.c[i])
      call('HSET', P .. '{' .. t .. tail, 'start', s, 'open', num(g.o[i]), 'high', num(g.h[i]),
        'low', num(g.l[i]), 'close', c, 'volume', num(g.v[i]), 'oi', oi, 'ticks', count(g.n[i]), 'updated', now)
      last[t] = {c, oi, s, g.tf}
    end
  end
end
write_last(last)
if d.st then
  local added = {}
  for i = 1, #d.st.t do
    local t = int(d.st.t[i])
    if ok(t, mine(t)) then
      call('SET', P .. '{' .. t .. '}:@STATE@', d.st.j[i])
      added[#added + 1] = t
    end
  end
  sadd(added)
end
local sc = d.sc
if sc then
  local n, base = sc.n, sc.base
  local T, G, VJ = {}, {}, {}
  local fmt, pos, blob = '<@INSTRUMENT_FMT@', 1, ARGV[6]
  for i = 1, n do
    local t, prev, segmax, day, ps, pn, g
    t, prev, segmax, day, ps, pn, g, pos = unpack_row(fmt, blob, pos)
    T[i], G[i] = int(t), g
    VJ[i] = @VOLUME_JSON@
  end
  local parts, last = {}, {}
  fmt = '<@FORMING_FMT@'
  for _, g in ipairs(sc.tfs) do
    local tf, rows = g.tf, ARGV[5 + g.blob]
    local tail = '}:@FORMING@:' .. tf
    pos = 1
    for _ = 1, g.m do
      local i, b, o, h, l, c, v, oi, ticks, lts, ltn
      i, b, o, h, l, c, v, oi, ticks, lts, ltn, pos = unpack_row(fmt, rows, pos)
      i = i - base
      local t = T[i]
      if ok(t, G[i]) then
        local start, ois, js = start_ns(b), 'nan', 'null'
        if oi == oi then ois = num(oi); js = ois end
        o, h, l, c, v, ticks = num(o), num(h), num(l), num(c), num(v), count(ticks)
        local lt = ns(lts, ltn)
        call('HSET', P .. '{' .. t .. tail, 'start', start, 'open', o, 'high', h, 'low', l,
          'close', c, 'volume', v, 'oi', ois, 'ticks', ticks, 'updated', now)
        last[t] = {c, ois, start, tf}
        local s = '"' .. tf .. '":' .. @CANDLE_JSON@
        if parts[i] then parts[i] = parts[i] .. ',' .. s else parts[i] = s end
      end
    end
  end
  write_last(last)
  local added = {}
  for i = 1, n do
    local t = T[i]
    if ok(t, G[i]) then
      call('SET', P .. '{' .. t .. '}:@STATE@', @STATE_JSON@)
      added[#added + 1] = t
    end
  end
  sadd(added)
end
if msg ~= '' then call('PUBLISH', P .. '@FORMING_CHANNEL@', msg) end
return refused
"""


# The state blob the script writes is core.state's schema: its JSON objects are made from the field
# names defined there (STATE_FIELDS, CANDLE_FIELDS, VOLUME_FIELDS), each mapped to the Lua value the
# script has for it. A field added to or renamed in core.state fails here, at import, not in a reader.
_LUA_CANDLE = {"bucket": "start", "open": "o", "high": "h", "low": "l", "close": "c", "vol": "v",
               "oi": "js", "ticks": "ticks", "last_ts": "lt"}
_LUA_VOLUME = {"prev": "(prev ~= prev and 'null' or num(prev))", "prev_ts": "ns(ps, pn)",
               "segmax": "num(segmax)", "day": "count(day)"}


def _lua_json_object(fields: tuple[str, ...], values: dict[str, str]) -> str:
    """A Lua expression building the JSON object ``{"field": value, ...}`` in ``fields``' order."""
    if set(fields) != set(values):
        raise RuntimeError(f"redis_live's write script is out of step with core.state: {sorted(fields)}")
    parts = [f"'{'{' if k == 0 else ','}\"{f}\":' .. {values[f]}" for k, f in enumerate(fields)]
    return " .. ".join(parts) + " .. '}'"


_LUA_STATE = {"vol": "VJ[i]", "forming": "'{' .. (parts[i] or '') .. '}'", "clock": "sc.clock"}

# ... and its keys follow stores/keys.py (the suffixes of an instrument's keys, the shared names)
_LUA_KEYS = {"@LEASE_GEN@": keys.LEASE_GEN, "@LAST@": keys.LAST, "@STATE@": keys.STATE,
             "@CLOSED@": keys.CLOSED, "@FORMING@": keys.FORMING, "@TOKENS@": keys.TOKENS,
             "@FORMING_CHANNEL@": keys.FORMING_CHANNEL}


def _fill(lua: str) -> str:
    lua = (lua.replace("@CANDLE_JSON@", _lua_json_object(CANDLE_FIELDS, _LUA_CANDLE))
           .replace("@VOLUME_JSON@", _lua_json_object(VOLUME_FIELDS, _LUA_VOLUME))
           .replace("@STATE_JSON@", _lua_json_object(STATE_FIELDS, _LUA_STATE))
           .replace("@INSTRUMENT_FMT@", "d" * len(INSTRUMENT_ROW))
           .replace("@FORMING_FMT@", "d" * len(FORMING_ROW)))
    for mark, name in _LUA_KEYS.items():
        lua = lua.replace(mark, name)
    return lua


WRITE_LUA = _fill(_WRITE_LUA)
CLOSED_LUA = _fill(_CLOSED_LUA)


# -- what the scripts are given (made by RedisLive) -----------------------------------------
def generations(fence: tuple[np.ndarray, np.ndarray] | None, tokens: np.ndarray) -> np.ndarray:
    """The writer's lease generation of each token (-1: not fenced: no fence, or not in it)."""
    if fence is None or not len(fence[0]):
        return np.full(len(tokens), -1.0)
    toks, gens = fence
    at, held = lookup(toks, tokens)
    return np.where(held, gens[at], -1.0)


def texts(col: np.ndarray, integer: bool = False) -> list[str]:
    """Python's text of each value (``repr`` of a float, ``str`` of an int: what a reader's
    ``float()``/``int()`` read back exactly); a column of one value (a close's start, no oi, no
    amendment, no fence) is printed once."""
    n = len(col)
    if integer:
        vals = np.asarray(col).astype(np.int64, copy=False)
        if n and vals.min() == vals.max():
            return [str(int(vals[0]))] * n
        return list(map(str, vals.tolist()))
    if n and np.isnan(col).all():
        return ["nan"] * n
    return list(map(repr, np.asarray(col, np.float64).tolist()))


def closed_calls(closed: list[CandleBatch], fence: tuple[np.ndarray, np.ndarray] | None,
                  size: int) -> list[tuple[list[dict], list[str]]]:
    """Closed candles cut into calls of at most ``size`` candles: (header [{tf, m}], CLOSED_TEXT's
    columns: each the call's texts of that value joined by spaces, or "=" and the one text all its
    candles share)."""
    out: list[tuple[list[dict], list[str]]] = []
    header: list[dict] = []
    parts: list[list[list[str]]] = []  # per batch slice of the call: its eleven columns
    room = size
    for b in closed:
        if not len(b):
            continue
        amended = b.amended if b.amended is not None else np.zeros(len(b), bool)
        cols = (texts(b.token, True), texts(b.start, True), texts(b.open), texts(b.high),
                texts(b.low), texts(b.close), texts(b.volume), texts(b.oi), texts(b.ticks, True),
                texts(amended, True), texts(generations(fence, b.token), True))
        a = 0
        while a < len(b):
            z = min(len(b), a + room)
            header.append({"tf": b.tf, "m": z - a})
            parts.append([c[a:z] for c in cols])
            room -= z - a
            a = z
            if not room:
                out.append((header, _columns(parts)))
                header, parts, room = [], [], size
    if header:
        out.append((header, _columns(parts)))
    return out


def _columns(parts: list[list[list[str]]]) -> list[str]:
    """A call's CLOSED_TEXT columns from its batch slices' texts: each joined by spaces, or "="
    and the one text all its candles share."""
    columns = []
    for j in range(len(CLOSED_TEXT)):
        vals = parts[0][j] if len(parts) == 1 else list(chain.from_iterable(p[j] for p in parts))
        first = vals[0]
        columns.append("=" + first if vals.count(first) == len(vals) else " ".join(vals))
    return columns


def evalsha_pipelined(client: Any, calls: list[tuple], scripts: tuple[str, ...]) -> list:
    """Each call ``(sha, numkeys, keys..., args...)`` as EVALSHA in one pipeline (one round trip,
    without redis-py's SCRIPT EXISTS per pipeline); ``scripts`` are loaded, and the pipeline sent
    once more, when the server does not know them (first use, or it restarted). The live store's
    writes and the leases' renewals both run this way."""
    from redis.exceptions import NoScriptError

    for attempt in range(2):
        pipe = client.pipeline(transaction=False)
        for sha, *args in calls:
            pipe.evalsha(sha, *args)
        try:
            return pipe.execute()
        except NoScriptError:
            if attempt:
                raise
            for lua in scripts:
                client.script_load(lua)
    return []


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (``redis.cluster.RedisCluster``): the keys of two
    instruments may live in different slots, so no script or blocking read spans instruments."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)
