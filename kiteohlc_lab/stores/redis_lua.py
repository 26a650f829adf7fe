"""The live store's write script (Lua, run by ``RedisLive.write`` on a single server).

It writes the forming hashes, the closed-candle streams, the last-price hashes and the engine state
blobs of many instruments in one call; the state blob's JSON is made from ``core.state``'s field
names (below), the keys follow ``stores/keys.py``.
"""

from __future__ import annotations

from ..core.state import CANDLE_FIELDS, STATE_FIELDS, VOLUME_FIELDS
from . import keys

# The single-server write: ARGV = prefix, now (ns), payload JSON, forming message ("" for none),
# stream maxlen, fence JSON ({token: lease generation}, "" for none), then the state column blobs.
# Fencing: an instrument in the fence whose generation is older than its lease's current one
# (``P{T}:lease:gen``, see kiteohlc_lab.lease) is not written at all (a stale writer's late batch);
# the script returns the tokens refused. Numbers are re-printed with the shortest of 15-17 digits that reads back to the same
# double (as Python's repr does); candle starts travel in seconds (they are whole seconds) so that
# epoch nanoseconds never pass through a Lua double. oi < 0 means "none" (nan).
_WRITE_LUA = """
local p, now, d, msg, maxlen = ARGV[1], ARGV[2], cjson.decode(ARGV[3]), ARGV[4], ARGV[5]
local gens = nil
if ARGV[6] ~= '' then gens = cjson.decode(ARGV[6]) end
local verdict, refused = {}, {}
local function num(x)
  if x ~= x then return 'nan' end
  if x == math.floor(x) and math.abs(x) < 1e15 then return string.format('%d', x) .. '.0' end
  local s = string.format('%.15g', x)
  if tonumber(s) ~= x then
    s = string.format('%.16g', x)
    if tonumber(s) ~= x then s = string.format('%.17g', x) end
  end
  return s
end
local function int(x) return string.format('%d', x) end
local function key(t, kind, tf)
  local k = p .. '{' .. int(t) .. '}:' .. kind
  if tf then k = k .. ':' .. tf end
  return k
end
local function oi(x) if x < 0 then return 'nan' end return num(x) end
local function ok(t)  -- may this writer write instrument t? (its generation is not older)
  if not gens then return true end
  local ts = int(t)
  local v = verdict[ts]
  if v ~= nil then return v end
  local mine = gens[ts]
  if mine == nil then
    v = true
  else
    v = mine >= tonumber(redis.call('GET', p .. '{' .. ts .. '}:@LEASE_GEN@') or '0')
    if not v then refused[#refused + 1] = ts end
  end
  verdict[ts] = v
  return v
end
local function write_last(last)  -- token -> {price, oi, start, tf}
  for t, v in pairs(last) do
    redis.call('HSET', p .. '{' .. t .. '}:@LAST@', 'price', v[1], 'oi', v[2], 'start', v[3], 'tf', v[4],
      'updated', now)
  end
end
for _, g in ipairs(d.x) do
  for i = 1, #g.t do
    if ok(g.t[i]) then redis.call('XADD', key(g.t[i], '@CLOSED@', g.tf), 'MAXLEN', '~', maxlen, '*',
      'start', int(g.s[i]) .. '000000000', 'open', num(g.o[i]), 'high', num(g.h[i]),
      'low', num(g.l[i]), 'close', num(g.c[i]), 'volume', num(g.v[i]), 'oi', oi(g.oi[i]),
      'ticks', int(g.n[i]), 'amended', int(g.a[i])) end
  end
end
local last = {}
for _, g in ipairs(d.f) do
  for i = 1, #g.t do
    if ok(g.t[i]) then
    local s, c, o = int(g.s[i]) .. '000000000', num(g.c[i]), oi(g.oi[i])
    redis.call('HSET', key(g.t[i], '@FORMING@', g.tf), 'start', s, 'open', num(g.o[i]),
      'high', num(g.h[i]), 'low', num(g.l[i]), 'close', c, 'volume', num(g.v[i]), 'oi', o,
      'ticks', int(g.n[i]), 'updated', now)
    last[int(g.t[i])] = {c, o, s, g.tf}
    end
  end
end
write_last(last)
for i = 1, #d.st.t do
  local t = int(d.st.t[i])
  if ok(t) then
    redis.call('SET', p .. '{' .. t .. '}:@STATE@', d.st.j[i])
    redis.call('SADD', p .. '@TOKENS@', t)
  end
end
local sc = d.sc
if sc then
  -- each blob holds columns of m doubles; unpack them into tables, 500 values per call
  local cache = {}
  local fmt500 = '<' .. string.rep('d', 500)
  local function column(b, m, c)
    local id = b * 64 + c
    local out = cache[id]
    if out then return out end
    out = {}
    local s, pos, left = ARGV[6 + b], ((c - 1) * m) * 8 + 1, m
    while left > 0 do
      local k = math.min(left, 500)
      local vals = {struct.unpack(k == 500 and fmt500 or ('<' .. string.rep('d', k)), s, pos)}
      for j = 1, k do out[#out + 1] = vals[j] end
      pos = vals[k + 1]
      left = left - k
    end
    cache[id] = out
    return out
  end
  local function col(b, m, c, i) return column(b, m, c)[i] end
  local function ns(sec, nano)
    if nano < 0 then return '-9223372036854775808' end
    return string.format('%d%09d', sec, nano)
  end
  local n = sc.n
  local parts, last = {}, {}
  for _, g in ipairs(sc.tfs) do
    local b, m, tf = g.blob, g.m, g.tf
    for k = 1, m do
      local i = col(b, m, 1, k)
      local t = int(col(1, n, 1, i))
      if ok(t) then
      local start = int(col(b, m, 2, k)) .. '000000000'
      local o, h, l, c, v = num(col(b, m, 3, k)), num(col(b, m, 4, k)), num(col(b, m, 5, k)),
        num(col(b, m, 6, k)), num(col(b, m, 7, k))
      local oi = col(b, m, 8, k)
      local ticks = int(col(b, m, 9, k))
      local lt = ns(col(b, m, 10, k), col(b, m, 11, k))
      redis.call('HSET', key(t, '@FORMING@', tf), 'start', start, 'open', o, 'high', h, 'low', l,
        'close', c, 'volume', v, 'oi', num(oi), 'ticks', ticks, 'updated', now)
      last[t] = {c, num(oi), start, tf}
      local js = oi ~= oi and 'null' or num(oi)
      local s = '"' .. tf .. '":' .. @CANDLE_JSON@
      if parts[i] then parts[i] = parts[i] .. ',' .. s else parts[i] = s end
      end
    end
  end
  write_last(last)
  for i = 1, n do
    local t = int(col(1, n, 1, i))
    if ok(t) then
    local prev = col(1, n, 2, i)
    local st = @STATE_JSON@
    redis.call('SET', p .. '{' .. t .. '}:@STATE@', st)
    redis.call('SADD', p .. '@TOKENS@', t)
    end
  end
end
if msg ~= '' then redis.call('PUBLISH', p .. '@FORMING_CHANNEL@', msg) end
return refused
"""


# The state blob the script writes is core.state's schema: its JSON objects are made from the field
# names defined there (STATE_FIELDS, CANDLE_FIELDS, VOLUME_FIELDS), each mapped to the Lua value the
# script has for it. A field added to or renamed in core.state fails here, at import, not in a reader.
_LUA_CANDLE = {"bucket": "start", "open": "o", "high": "h", "low": "l", "close": "c", "vol": "v",
               "oi": "js", "ticks": "ticks", "last_ts": "lt"}
_LUA_VOLUME = {"prev": "(prev ~= prev and 'null' or num(prev))",
               "prev_ts": "ns(col(1, n, 5, i), col(1, n, 6, i))", "segmax": "num(col(1, n, 3, i))",
               "day": "int(col(1, n, 4, i))"}


def _lua_json_object(fields: tuple[str, ...], values: dict[str, str]) -> str:
    """A Lua expression building the JSON object ``{"field": value, ...}`` in ``fields``' order."""
    if set(fields) != set(values):
        raise RuntimeError(f"redis_live's write script is out of step with core.state: {sorted(fields)}")
    parts = [f"'{'{' if k == 0 else ','}\"{f}\":' .. {values[f]}" for k, f in enumerate(fields)]
    return " .. ".join(parts) + " .. '}'"


_LUA_STATE = {"vol": _lua_json_object(VOLUME_FIELDS, _LUA_VOLUME),
              "forming": "'{' .. (parts[i] or '') .. '}'", "clock": "sc.clock"}

# ... and its keys follow stores/keys.py (the suffixes of an instrument's keys, the shared names)
_LUA_KEYS = {"@LEASE_GEN@": keys.LEASE_GEN, "@LAST@": keys.LAST, "@STATE@": keys.STATE,
             "@CLOSED@": keys.CLOSED, "@FORMING@": keys.FORMING, "@TOKENS@": keys.TOKENS,
             "@FORMING_CHANNEL@": keys.FORMING_CHANNEL}


def _fill(lua: str) -> str:
    lua = (lua.replace("@CANDLE_JSON@", _lua_json_object(CANDLE_FIELDS, _LUA_CANDLE))
           .replace("@STATE_JSON@", _lua_json_object(STATE_FIELDS, _LUA_STATE)))
    for mark, name in _LUA_KEYS.items():
        lua = lua.replace(mark, name)
    return lua


WRITE_LUA = _fill(_WRITE_LUA)
