//! The fleet's Lua scripts: each step that moves a pointer, the floor or the refused set runs as
//! one script, so concurrent publishers and instances cannot interleave.

/// Lua: whether the canonical decimal `a` is below `b` (any length: no floating point), and
/// whether a stored floor is a canonical decimal.
pub(super) const RELEASE_LUA: &str = r"
local function below(a, b)
  if #a ~= #b then
    return #a < #b
  end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then
      return x < y
    end
  end
  return false
end
local function readable(floor)
  return #floor <= 20 and (floor == '0' or string.match(floor, '^[1-9]%d*$') ~= nil)
end
";

/// Makes `hash` (ARGV[1]) of release ARGV[4] active: records it in the history (unless it
/// already heads it), moves the pointer, raises the floor (KEYS[6]) to its release, drops a
/// shadow of the same hash, takes it off the refused set (it is offered afresh) and announces
/// the change — in one step, so concurrent publishers cannot interleave. With ARGV[3]
/// (promote), only while the shadow pointer still holds it; answers 0 when it does not, -1
/// when the release is below the floor, -2 when the floor is not a number, and then changes
/// nothing.
pub(super) const ACTIVATE: &str = r"
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then
  return 0
end
local floor = redis.call('GET', KEYS[6])
if floor == '' then
  floor = false
end
if floor and not readable(floor) then
  return -2
end
if floor and below(ARGV[4], floor) then
  return -1
end
if not floor or below(floor, ARGV[4]) then
  redis.call('SET', KEYS[6], ARGV[4])
end
if redis.call('TYPE', KEYS[5]).ok == 'zset' then
  redis.call('ZREM', KEYS[5], ARGV[1])
end
local head = redis.call('LINDEX', KEYS[3], 0)
if head ~= ARGV[1] then
  redis.call('LPUSH', KEYS[3], ARGV[1])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[2]) - 1)
end
redis.call('SET', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', KEYS[4], 'active ' .. ARGV[1])
return 1
";

/// Returns to the history entry ARGV[2] (0-based index ARGV[3], release ARGV[4]), which
/// rollback has checked: drops the history down to it and points at it — only while the
/// active pointer still holds ARGV[1] (empty: no pointer), the entry is still there and the
/// floor (KEYS[4]) still holds ARGV[5] (empty: none). A release below the floor is a
/// downgrade: only with the record ARGV[6] (non-empty), which is pushed onto the downgrades
/// (KEYS[5], the newest ARGV[7] kept) while their counter (KEYS[6]) is incremented, and the
/// floor becomes the release. Otherwise the floor is raised to the release if it is below.
/// Answers 1, 0 when something moved, -1 when a downgrade has no record (and then changes
/// nothing).
pub(super) const ROLLBACK: &str = r"
local active = redis.call('GET', KEYS[1])
if (active or '') ~= ARGV[1] or redis.call('LINDEX', KEYS[2], ARGV[3]) ~= ARGV[2] then
  return 0
end
local floor = redis.call('GET', KEYS[4])
if (floor or '') ~= ARGV[5] then
  return 0
end
if floor and below(ARGV[4], floor) then
  if ARGV[6] == '' then
    return -1
  end
  redis.call('INCR', KEYS[6])
  redis.call('LPUSH', KEYS[5], ARGV[6])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[7]) - 1)
  redis.call('SET', KEYS[4], ARGV[4])
elseif not floor or below(floor, ARGV[4]) then
  redis.call('SET', KEYS[4], ARGV[4])
end
redis.call('LTRIM', KEYS[2], ARGV[3], -1)
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[3], 'active ' .. ARGV[2])
return 1
";

/// Reads the active and shadow pointers (the first ARGV[1] + 1 bytes), the floor and the
/// downgrade counter (ARGV[2] + 1 bytes): a missing key as empty, a key of another type as
/// `(a TYPE)`.
pub(super) const VIEW: &str = r"
local function read(key, last)
  local kind = redis.call('TYPE', key).ok
  if kind == 'none' then
    return ''
  end
  if kind ~= 'string' then
    return '(a ' .. kind .. ')'
  end
  return redis.call('GETRANGE', key, 0, last)
end
return {
  read(KEYS[1], ARGV[1]), read(KEYS[2], ARGV[1]), read(KEYS[3], ARGV[2]), read(KEYS[4], ARGV[2])
}
";

/// Adds ARGV[2] to the refused set with score ARGV[1] (ms) and keeps the newest ARGV[3]. A
/// refused set from before it was sorted (a plain set) is converted first.
pub(super) const REFUSE: &str = r"
if redis.call('TYPE', KEYS[1]).ok == 'set' then
  local members = redis.call('SMEMBERS', KEYS[1])
  redis.call('DEL', KEYS[1])
  for _, member in ipairs(members) do
    redis.call('ZADD', KEYS[1], 0, member)
  end
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
return 1
";
