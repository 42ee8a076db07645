//! The compare-and-set script and how a call of it is written.

use redis::Pipeline;

use crate::store::Write;

/// Compare-and-set of one or more keys (`KEYS[i]`, with its [`CAS_ARGS_PER_KEY`] arguments at
/// `ARGV[(i-1)*9+1 ..= (i-1)*9+9]`): expected revision, expected writer, status, version,
/// timestamp_ms, payload, rule, position, and this write's id. Each key is written only if its
/// stored revision and writer are the expected ones (an absent key has revision 0 and writer
/// "0"). Answers one entry per key: the new revision, or, when they did not match (nothing
/// written), `{-1}` for an absent key and `{-1, rev, wid, status, version, timestamp_ms,
/// payload}` otherwise.
///
/// On standalone Redis a batch's writes go in calls of [`KEYS_PER_CALL`] keys, so the cost of
/// a script call is paid once per call rather than once per key; on a cluster, one key per
/// call (keys of one call must share a slot). Writers are compared as strings: Lua numbers are
/// doubles and would round a 64-bit id.
pub const COMPARE_AND_SET: &str = r"
local answers = {}
for i = 1, #KEYS do
  local a = (i - 1) * 9
  local fence = redis.call('HMGET', KEYS[i], 'rev', 'wid')
  local stored = tonumber(fence[1] or '0')
  if stored ~= tonumber(ARGV[a + 1]) or (fence[2] or '0') ~= ARGV[a + 2] then
    if not fence[1] then
      answers[i] = {-1}
    else
      local now = redis.call('HMGET', KEYS[i], 'rev', 'wid', 'status', 'version', 'timestamp_ms', 'payload')
      answers[i] = {-1, now[1], now[2] or '0', now[3] or '', now[4] or '', now[5] or '', now[6] or ''}
    end
  else
    local rev = stored + 1
    redis.call('HSET', KEYS[i], 'rev', rev, 'wid', ARGV[a + 9], 'status', ARGV[a + 3],
      'version', ARGV[a + 4], 'timestamp_ms', ARGV[a + 5], 'payload', ARGV[a + 6],
      'rule', ARGV[a + 7], 'position', ARGV[a + 8])
    answers[i] = rev
  end
end
return answers
";

/// Arguments of [`COMPARE_AND_SET`] per key.
pub const CAS_ARGS_PER_KEY: usize = 9;

/// Keys per [`COMPARE_AND_SET`] call on standalone Redis: large enough to spread the cost of a
/// call, small enough that one call holds the server for well under a millisecond.
pub const KEYS_PER_CALL: usize = 64;

/// One compare-and-set call of the writes at `items`.
pub(super) fn cas_command(
    pipe: &mut Pipeline,
    verb: &str,
    script: &str,
    items: &[usize],
    redis_keys: &[String],
    writes: &[Write],
) {
    let command = pipe.cmd(verb).arg(script).arg(items.len());
    for &index in items {
        command.arg(&redis_keys[index]);
    }
    for &index in items {
        let write = &writes[index];
        let state = &write.state;
        command
            .arg(write.expected_revision)
            .arg(write.expected_writer)
            .arg(&state.status)
            .arg(state.version)
            .arg(state.timestamp_ms)
            .arg(&state.payload)
            .arg(&write.rule)
            .arg(&write.position)
            .arg(write.writer);
    }
}
