//! The Lua scripts of `RedisSessionManager`. Pure text, no connection, no Python.
//!
//! A session is one string key `prefix + session_id` holding the value of `session::value`
//! (a head: the 13-digit absolute deadline header, plus its tag when signed; then the body).
//! The client makes the head when a session is created (it signs it) and the scripts check
//! its deadline against the server clock; every later write keeps the stored head verbatim. Expiry is Redis's own: every write
//! sets `PX` to the smaller of the idle TTL and the time left before the absolute deadline,
//! and reads that refresh the idle clock do the same, so Redis never keeps a session past
//! either limit. Reads without an idle TTL are plain `GET`s and idle-only reads are `GETEX`
//! (no script); everything that must read the header, compare a lock token or choose
//! between create and overwrite is one script, i.e. one atomic round trip.
//!
//! ARGV numbers are milliseconds; 0 means "no limit".

/// Shared prologue: the server clock (read only when needed) and the expiry rule.
const PROLOGUE: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A head proposed by the client claims deadline dl for a session of absolute TTL abs: it
-- must agree with the server clock within a second, else the client learns the server's
-- time from the {'skew', now} reply and proposes again.
local function skewed(dl, abs, now)
  return abs > 0 and math.abs(dl - (now + abs)) > 1000
end

-- PX for a session whose absolute deadline is dl (0: none): nil = no expiry, <= 0 = expired
local function px_for(dl, idle, now)
  local px = nil
  if idle > 0 then px = idle end
  if dl > 0 then
    local left = dl - now
    if px == nil or left < px then px = left end
  end
  return px
end

local function store(k, value, px)
  if px == nil then
    redis.call('SET', k, value)
  else
    redis.call('SET', k, value, 'PX', string.format('%.0f', px))
  end
end

-- The deadline in a stored value's header (0 if none or unreadable).
local function deadline_of(v)
  return tonumber(string.sub(v, 1, 13)) or 0
end
";

/// KEYS: session. ARGV: `idle_ms`. Read and refresh the idle clock when the session also
/// has an absolute deadline. Returns the stored value or nil.
pub const GET_REFRESH_BODY: &str = r"
local k, idle = KEYS[1], tonumber(ARGV[1])
local v = redis.call('GET', k)
if not v then return false end
local dl = deadline_of(v)
local now = 0
if dl > 0 then now = now_ms() end
local px = px_for(dl, idle, now)
if px ~= nil then
  if px <= 0 then redis.call('DEL', k) return false end
  redis.call('PEXPIRE', k, string.format('%.0f', px))
end
return v
";

/// KEYS: session. ARGV: `idle_ms`. `touch`: refresh the idle clock without reading the
/// body. Returns 1 if the session exists.
pub const TOUCH_BODY: &str = r"
local k, idle = KEYS[1], tonumber(ARGV[1])
local h = redis.call('GETRANGE', k, 0, 12)
if h == '' then return 0 end
local dl = tonumber(h) or 0
local now = 0
if dl > 0 then now = now_ms() end
local px = px_for(dl, idle, now)
if px ~= nil then
  if px <= 0 then redis.call('DEL', k) return 0 end
  redis.call('PEXPIRE', k, string.format('%.0f', px))
end
return 1
";

/// KEYS: session. ARGV: body, `idle_ms`, `abs_ms`, head, `deadline_ms`, `head_len`,
/// fresh (0/1). `set_session`: overwrite (keeping the stored head, so the absolute deadline) or create
/// (with the proposed head); `fresh` = 1 replaces the stored head too (the client found it
/// unreadable). Returns the previous value, nil, or `{'skew', now}` (nothing written).
pub const SET_BODY: &str = r"
local k, body, idle, abs = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local head, dl, hl = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local old = redis.call('GET', k)
local odl = 0
if old then odl = deadline_of(old) end
local now = 0
if odl > 0 or abs > 0 then now = now_ms() end
if old and odl > 0 and odl <= now then old = false end
if old and ARGV[7] ~= '1' then
  head, dl = string.sub(old, 1, hl), odl
elseif skewed(dl, abs, now) then
  return {'skew', now}
end
store(k, head .. body, px_for(dl, idle, now))
return old
";

/// KEYS: session. ARGV: body, `idle_ms`, `abs_ms`, `want_existing` (0/1), head,
/// `deadline_ms`.
/// Create only if absent (`SET NX` semantics, in a script so the proposed deadline is checked
/// against the server clock). Returns 1 when stored; `{'skew', now}` when the deadline is off;
/// otherwise the existing value if `want_existing`, else 0.
pub const INSERT_BODY: &str = r"
local k, body, idle, abs = KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local head, dl = ARGV[5], tonumber(ARGV[6])
local v = redis.call('GET', k)
if v then
  if ARGV[4] == '1' then return v end
  return 0
end
local now = 0
if abs > 0 then now = now_ms() end
if skewed(dl, abs, now) then return {'skew', now} end
local px = px_for(dl, idle, now)
if px == nil then
  redis.call('SET', k, head .. body, 'NX')
else
  redis.call('SET', k, head .. body, 'NX', 'PX', string.format('%.0f', px))
end
return 1
";

/// KEYS: session, lock. ARGV: token, body, `idle_ms`, `head_len`. Write-back under a
/// distributed lock: only if the lock key still holds our token (else -1: the lock was lost) and only if
/// the session still exists (else 0: deleted meanwhile, never resurrected). Returns 1 when
/// written; the stored head (absolute deadline and its tag) is kept.
pub const WRITE_BACK_BODY: &str = r"
local k, lk, token, body, idle = KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('GET', lk) ~= token then return -1 end
local h = redis.call('GETRANGE', k, 0, tonumber(ARGV[4]) - 1)
if h == '' then return 0 end
local dl = deadline_of(h)
local now = 0
if dl > 0 then now = now_ms() end
local px = px_for(dl, idle, now)
if px ~= nil and px <= 0 then redis.call('DEL', k) return 0 end
store(k, h .. body, px)
return 1
";

/// Full source of a script body with the prologue.
#[must_use]
pub fn script(body: &str) -> String {
    let mut s = String::with_capacity(PROLOGUE.len() + body.len());
    s.push_str(PROLOGUE);
    s.push_str(body);
    s
}

/// The SCAN pattern matching every key of `prefix` (glob characters escaped).
#[must_use]
pub fn scan_pattern(prefix: &str) -> String {
    let mut out = crate::redis::glob::escaped(prefix, 1);
    out.push('*');
    out
}

/// Where the session locks live: the prefix with its last character replaced by
/// `-lock:` (`_lock:` if that character is `-`), so lock keys never start with the
/// session prefix and a SCAN of the sessions never sees them.
#[must_use]
pub fn lock_prefix(prefix: &str) -> String {
    let mut chars = prefix.chars();
    let last = chars.next_back();
    let stem = chars.as_str();
    let sep = if last == Some('-') { '_' } else { '-' };
    format!("{stem}{sep}lock:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_outside_the_session_namespace() {
        for p in ["sessionlock:session:", "a", "x-", "é", "app:s-"] {
            let lp = lock_prefix(p);
            assert!(!lp.starts_with(p), "{p} -> {lp}");
        }
        assert_eq!(
            lock_prefix("sessionlock:session:"),
            "sessionlock:session-lock:"
        );
    }

    #[test]
    fn pattern_escapes_glob() {
        assert_eq!(scan_pattern("a*[b]:"), "a\\*\\[b\\]:*");
    }

    #[test]
    fn scripts_have_the_prologue() {
        assert!(script(SET_BODY).contains("local function px_for"));
    }
}
