"""The Lua scripts of the Redis backend: each touches only the keys of one stream.

Every key of a stream shares the hash tag ``{<stream_id>}`` (one Redis Cluster slot), so
each script is atomic and Cluster-safe. Keys (``k`` = ``sb:{<stream_id>}``):

- ``k:log``   the stream's entries (Redis Stream; id ``fence-seq``; one field: the
  event name, whose value is the event's JSON data: the least a reader must parse)
- ``k:meta``  hash: tenant, conv, status, epoch, last (newest id), cancel, token
- ``k:owner`` the fenced lease: ``<owner>:<token>`` with a TTL of ``lease_ttl``
- ``k:ctl``   cancel wake-ups (Redis Stream, MAXLEN 1) that the owner's reader follows

The one key outside a stream's slot is ``sb:running``, a sorted set of running streams
scored by lease expiry: only a hint for the sweeper, never trusted (the sweep script
re-checks the lease under its own keys).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._settings import LogSettings

RUNNING = "sb:running"


def check_id(stream_id: str) -> str:
    """Return ``stream_id`` if it can be a key part (no braces: the hash tag), else raise.

    Raises:
        ValueError: empty, longer than 200 characters, or holding ``{ }``, space, CR, LF.
    """
    if stream_id and len(stream_id) <= 200 and not any(c in stream_id for c in "{} \r\n"):
        return stream_id
    raise ValueError(f"stream id {stream_id[:200]!r} is not usable as a Redis key part")


def keys(stream_id: str) -> tuple[str, str, str, str]:
    """Return the ``log``, ``meta``, ``owner`` and ``ctl`` keys of a stream."""
    k = f"sb:{{{stream_id}}}"
    return (f"{k}:log", f"{k}:meta", f"{k}:owner", f"{k}:ctl")


# KEYS log meta owner ctl; ARGV tenant conv epoch owner ttl_ms → token, or 0 if it exists.
CREATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local token = redis.call('HINCRBY', KEYS[2], 'token', 1)
redis.call('HSET', KEYS[2], 'tenant', ARGV[1], 'conv', ARGV[2], 'status', 'running',
           'epoch', ARGV[3], 'last', '0-0', 'cancel', '0')
redis.call('SET', KEYS[3], ARGV[4] .. ':' .. token, 'PX', ARGV[5])
redis.call('DEL', KEYS[1], KEYS[4])
return token
"""

# KEYS log meta owner ctl; ARGV fence new_epoch tenant conv maxlen retention_ms ttl_ms
# terminal_status force_epoch; items: the decoded [id, event, data] entries (APPEND
# passes them as ARGV[10], one JSON argument a batch: packing three arguments an entry
# cost the client more); oldest: the owner's oldest entry not known to be stored
# (ARGV[11] of APPEND).
# → {'ok', epoch, recreated}, {'stale', epoch} or {'gap', epoch}. Ids at or below `last`
# were already written by an earlier try and are skipped (retries are idempotent); a
# first new id that does not follow `last` is refused whole ('gap', nothing written).
# A log that is gone (Redis lost its data) is recreated only by a batch that starts at
# `oldest`: a batch sent while an earlier one was in flight, and the earlier one failed
# (NOSCRIPT from the restarted Redis), would otherwise recreate it without the earlier
# one's entries, a silent gap.
_APPEND_FN = """
local function append(KEYS, ARGV, items, oldest)
  local m = redis.call('HMGET', KEYS[2], 'epoch', 'last')  -- one call, not two
  local epoch = m[1]
  local recreated = 0
  if not epoch then
    if items[1][1] ~= oldest then return {'gap', ARGV[2]} end
    epoch = ARGV[2]
    recreated = 1
    redis.call('HSET', KEYS[2], 'tenant', ARGV[3], 'conv', ARGV[4], 'status', 'running',
               'epoch', epoch, 'last', '0-0', 'cancel', '0', 'token', '0')
    redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[7])
  elseif redis.call('GET', KEYS[3]) ~= ARGV[1] then
    return {'stale', epoch}
  elseif ARGV[9] == '1' then  -- entries were dropped: a new log, so readers reset
    epoch = ARGV[2]
    redis.call('HSET', KEYS[2], 'epoch', epoch, 'last', '0-0')
    redis.call('DEL', KEYS[1])
    m[2] = false
  end
  local last = m[2] or '0-0'
  local lmaj, lmin = string.match(last, '(%d+)-(%d+)')
  lmaj, lmin = tonumber(lmaj), tonumber(lmin)
  local i = 1
  -- skip what an earlier try of this batch wrote (ids increase within a batch)
  while i <= #items do
    local maj, min = string.match(items[i][1], '(%d+)-(%d+)')
    maj, min = tonumber(maj), tonumber(min)
    if maj > lmaj or (maj == lmaj and min > lmin) then break end
    i = i + 1
  end
  -- refuse a gap: the next id must follow `last` (a batch after a failed one; the
  -- writer resends from the failed one in order). A new or restarted log takes any.
  if i <= #items and recreated == 0 and ARGV[9] ~= '1' then
    local maj, min = string.match(items[i][1], '(%d+)-(%d+)')
    maj, min = tonumber(maj), tonumber(min)
    if not ((lmaj == 0 and min == 1) or (maj == lmaj and min == lmin + 1)) then
      return {'gap', epoch}
    end
  end
  for j = i, #items do
    local item = items[j]
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], item[1], item[2], item[3])
    last = item[1]
  end
  redis.call('HSET', KEYS[2], 'last', last)
  if ARGV[8] ~= '' then
    redis.call('HSET', KEYS[2], 'status', ARGV[8])
    redis.call('DEL', KEYS[3])
    redis.call('PEXPIRE', KEYS[1], ARGV[6])
    redis.call('PEXPIRE', KEYS[2], ARGV[6])
    redis.call('PEXPIRE', KEYS[4], ARGV[6])
  end
  return {'ok', epoch, recreated}
end
"""
APPEND = _APPEND_FN + "return append(KEYS, ARGV, cjson.decode(ARGV[10]), ARGV[11])\n"


def append_args(settings: LogSettings, *, fence: str, epoch: str, tenant: str, conv: str,
                terminal: str, force_epoch: bool, entries: list[tuple[str, str, str]],
                oldest: str | None = None) -> list[Any]:
    """Return the 11 ``ARGV`` of one stream's ``APPEND``.

    Args:
        settings: the log settings (maxlen, retention, lease TTL).
        fence: the lease's ``<owner>:<token>``.
        epoch: the epoch to use if the log must be recreated (a fresh ``new_epoch()``).
        tenant: the stream's tenant (kept if the log is recreated).
        conv: its conversation id.
        terminal: ``done``/``error`` when ``entries`` ends with the terminal entry, else "".
        force_epoch: whether to switch to ``epoch`` now (entries were dropped).
        entries: ``(native id, event, JSON data)`` in increasing id order.
        oldest: the id of the oldest entry not yet acknowledged (default: the first of
            ``entries``, for a producer with one batch in flight at most).
    """
    return [fence, epoch, tenant, conv, settings.log_maxlen, int(settings.log_retention * 1000),
            int(settings.lease_ttl * 1000), terminal, "1" if force_epoch else "0",
            json.dumps(entries, separators=(",", ":")), oldest or entries[0][0]]


# The same for several streams at once, in one call a flush instead of one a stream,
# where keys of different slots may meet (a single Redis, not a Cluster). ARGV maxlen
# retention_ms ttl_ms new_epoch streams, where streams is ONE JSON array of [stream_id,
# fence, tenant, conv, terminal_status, force_epoch, entries, oldest]: the client packs five
# arguments a flush instead of fourteen a stream (packing them was most of a flush's
# time at 100 streams). The keys are built here as ``keys()`` builds them, so none is
# declared: the reason this script never runs on a Cluster.
APPEND_MANY = _APPEND_FN + """
local groups = cjson.decode(ARGV[5])
local out = {}
for g = 1, #groups do
  local x = groups[g]
  local k = 'sb:{' .. x[1] .. '}'
  out[g] = append({k .. ':log', k .. ':meta', k .. ':owner', k .. ':ctl'},
                  {x[2], ARGV[4], x[3], x[4], ARGV[1], ARGV[2], ARGV[3], x[5], x[6]}, x[7],
                  x[8])
end
return out
"""

# KEYS owner meta; ARGV fence ttl_ms → 1 renewed, 3 renewed and a cancel intent is
# recorded, 2 the log was lost (the next append recreates it), 0 the lease is gone.
RENEW = """
if redis.call('EXISTS', KEYS[2]) == 0 then return 2 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('HGET', KEYS[2], 'cancel') == '1' then return 3 end
return 1
"""

# KEYS log meta owner ctl; ARGV data maxlen retention_ms → 1 ended by this call,
# 2 its lease is alive, 0 not running (or gone).
SWEEP = """
if redis.call('HGET', KEYS[2], 'status') ~= 'running' then return 0 end
if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
local maj, min = string.match(redis.call('HGET', KEYS[2], 'last'), '(%d+)-(%d+)')
local id = maj .. '-' .. string.format('%d', tonumber(min) + 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'error', ARGV[1])
redis.call('HSET', KEYS[2], 'status', 'error', 'last', id)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return 1
"""

# KEYS meta ctl → {status, recorded}; status 'missing' when there is no such stream.
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', 0} end
if st ~= 'running' or redis.call('HGET', KEYS[1], 'cancel') == '1' then return {st, 0} end
redis.call('HSET', KEYS[1], 'cancel', '1')
redis.call('XADD', KEYS[2], 'MAXLEN', '1', '*', 'cancel', '1')
return {st, 1}
"""

# KEYS meta log; ARGV cursor_id cursor_epoch count → false when unknown, else
# {{tenant, conv, status, epoch, cancel}, reset_reason, entries} where the entries are
# the first page after the cursor (after the oldest kept entry when reset). Ids are
# dense (``fence-1``, ``fence-2``, ...), so the oldest kept entry tells whether anything
# after the cursor was trimmed (``XINFO``'s max-deleted-entry-id ignores trimming).
OPEN = """
local m = redis.call('HMGET', KEYS[1], 'tenant', 'conv', 'status', 'epoch', 'cancel')
if not m[4] then return false end
local reason = ''
local start = '-'
if ARGV[1] ~= '' then
  if ARGV[2] ~= m[4] then reason = 'epoch' else start = '(' .. ARGV[1] end
end
local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
if reason == '' and first then
  local fmaj, fmin = string.match(first[1], '(%d+)-(%d+)')
  fmaj, fmin = tonumber(fmaj), tonumber(fmin)
  if ARGV[1] == '' then
    if fmin ~= 1 then reason = 'trimmed' end
  else
    local cmaj, cmin = string.match(ARGV[1], '(%d+)-(%d+)')
    cmaj, cmin = tonumber(cmaj), tonumber(cmin)
    if cmaj < fmaj or (cmaj == fmaj and cmin < fmin - 1) then reason = 'trimmed' end
  end
  if reason ~= '' then start = '-' end
end
return {m, reason, redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', ARGV[3])}
"""
