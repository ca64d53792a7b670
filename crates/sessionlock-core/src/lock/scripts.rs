//! The Lua scripts of the distributed lock and the Redis names they touch. Pure: no
//! connection, no Python. Every state change of a lock is one of these scripts, so each is
//! atomic on the server and costs one round trip.
//!
//! Names, for a lock whose full key is `K` (= `prefix{key}`: the user key is a Redis Cluster
//! hash tag, so `K` and every helper name below hash to one slot and each script touches a
//! single slot; on a single server the braces are just characters):
//!
//! | name              | type   | what                                     | lives          |
//! |-------------------|--------|------------------------------------------|----------------|
//! | `K`               | string | the lease: value = holder token          | the lease (PX) |
//! | `K \0fence`       | string | last fencing token handed out            | the lease      |
//! | `K \0queue`       | zset   | waiters in arrival order (score = µs)    | <= 3 s idle    |
//! | `K \0waiters`     | hash   | waiter token -> `deadline_ms:ttl_ms`     | same as queue  |
//! | `K \0released`    | pubsub | hand-off notices "token:fence"           | (a channel)    |
//!
//! User keys and prefixes may not contain NUL, so no `\0` name can be another lock's key.
//! Nothing outlives its lock: the fence key gets the lease's expiry whenever the lease is
//! set or renewed, the queue and waiters keys expire shortly after the last waiter's last
//! refresh. Fencing tokens still grow when a key is reused after its fence expired: a
//! token is the last one + 1 while the fence key lives, and the server time in µs when it
//! starts afresh. Every script takes more than a microsecond, so the counter never runs
//! ahead of the clock, and a fresh start is above every earlier token (unless the server
//! clock is stepped back by more than the time since the fence expired).
//!
//! Fairness: a release does not just delete the key, it hands the lease straight to the
//! first live waiter in the queue (SET key waiter-token PX claim-window, new fence) and
//! publishes "token:fence" on the channel, so the waiter owns the lock before it even wakes
//! and a releaser that immediately asks again queues behind it. The new owner claims it
//! (its first renewal, or its next acquire script) within `CLAIM_MS`; a waiter that died
//! never does, so the lock falls free and goes to the next waiter instead of sitting on a
//! dead process's full lease. A waiter's queue entry carries a deadline it refreshes on
//! every retry; entries whose waiter gave up or died are skipped once their deadline passes.

/// Suffixes of the helper names (see the module table).
pub const FENCE_SUFFIX: &str = "\0fence";
pub const QUEUE_SUFFIX: &str = "\0queue";
pub const WAITERS_SUFFIX: &str = "\0waiters";
pub const CHANNEL_SUFFIX: &str = "\0released";

/// The full Redis key of `key` under `prefix`: `prefix{key}`. The braces make `key` the
/// cluster hash tag of this name and of every name made by appending to it. (Should `prefix`
/// itself hold a `{...}` tag, that one wins: all keys of the prefix share one slot, which is
/// still consistent.)
#[must_use]
pub fn tagged(prefix: &str, key: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + key.len() + 2);
    out.push_str(prefix);
    out.push('{');
    out.push_str(key);
    out.push('}');
    out
}

/// The key inside `prefix{key}`, the inverse of [`tagged`].
#[must_use]
pub fn untagged<'a>(prefix: &str, full: &'a str) -> Option<&'a str> {
    full.strip_prefix(prefix)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// How long a lock handed to a waiter lasts until that waiter claims it.
pub const CLAIM_MS: u64 = 1000;

/// The four keys every script takes, in `KEYS[1..4]` order, and the channel name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub lock: String,
    pub fence: String,
    pub queue: String,
    pub waiters: String,
    pub channel: String,
}

impl Names {
    #[must_use]
    pub fn new(full_key: &str) -> Self {
        Names {
            lock: full_key.to_owned(),
            fence: format!("{full_key}{FENCE_SUFFIX}"),
            queue: format!("{full_key}{QUEUE_SUFFIX}"),
            waiters: format!("{full_key}{WAITERS_SUFFIX}"),
            channel: format!("{full_key}{CHANNEL_SUFFIX}"),
        }
    }

    #[must_use]
    pub fn keys(&self) -> [&str; 4] {
        [&self.lock, &self.fence, &self.queue, &self.waiters]
    }
}

/// The pub/sub pattern that covers every channel of `prefix` (glob characters escaped).
#[must_use]
pub fn channel_pattern(prefix: &str) -> String {
    let mut out = crate::redis::glob::escaped(prefix, 16);
    out.push('*');
    out.push_str(CHANNEL_SUFFIX);
    out
}

/// Result of a script that says "you hold it" or "held by X for N ms".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Got(i64),
    /// `fence`: the holder's fencing token (any hand-off to us comes with a larger one).
    Taken {
        pttl: i64,
        holder: String,
        fence: i64,
    },
}

/// The acquire script's reply: `{1, fence, '', 0}` or `{0, pttl, holder, fence}`.
#[must_use]
pub fn parse_attempt(r: (i64, i64, String, i64)) -> Attempt {
    if r.0 == 1 {
        Attempt::Got(r.1)
    } else {
        Attempt::Taken {
            pttl: r.1,
            holder: r.2,
            fence: r.3,
        }
    }
}

/// Splits a hand-off notice "token:fence". Tokens are hex uuids (no ':').
#[must_use]
pub fn parse_notice(payload: &str) -> Option<(&str, i64)> {
    let (token, fence) = payload.rsplit_once(':')?;
    Some((token, fence.parse().ok()?))
}

/// Shared prologue: locals, the server clock, the fence counter and the hand-off.
/// Numbers that can exceed 1e14 are formatted with `%.0f`: Lua 5.1's default number
/// format (`%.14g`) would turn them into `1.7e+15`.
const PROLOGUE: &str = r"
local CLAIM_MS = 1000
local lock, fence, queue, waiters = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local chan = lock .. '\0released'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- The next fencing token: the last one + 1 while its key lives; after it expired, the
-- server clock in microseconds (above every earlier token, which were all handed out
-- before). It lives as long as the lease `px` it comes with.
local function next_fence(px)
  local f = redis.call('INCR', fence)
  if f == 1 then
    f = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', fence, string.format('%.0f', f), 'PX', px)
  else
    redis.call('PEXPIRE', fence, px)
  end
  return f
end

-- Gives the free lock to the first waiter whose deadline has not passed, or returns nil.
-- `quiet` is a token that needs no notice (the caller itself).
local function grant_next(quiet)
  for _ = 1, 100 do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then return nil end
    local meta = redis.call('HGET', waiters, head)
    redis.call('ZREM', queue, head)
    redis.call('HDEL', waiters, head)
    if meta then
      local sep = string.find(meta, ':', 1, true)
      if tonumber(string.sub(meta, 1, sep - 1)) >= now then
        -- a claim window, not the full lease: a dead waiter never claims it
        local px = math.min(CLAIM_MS, tonumber(string.sub(meta, sep + 1)))
        redis.call('SET', lock, head, 'PX', px)
        local f = next_fence(px)
        if head ~= quiet then
          redis.call('PUBLISH', chan, head .. ':' .. string.format('%.0f', f))
        end
        return head, f
      end
    end
  end
  return nil
end
";

/// ARGV: token, `ttl_ms`, `queue_ms` (0: do not queue).
/// Returns `{1, fence, '', 0}` when the caller holds the lock (taken now, or handed to it
/// while it waited), else `{0, holder_pttl, holder_token, holder_fence}` (and queues the
/// caller). A hand-off notice whose fence is not above `holder_fence` predates this call:
/// it is stale (that hand-off's claim window ran out), not a grant to act on.
pub const ACQUIRE_BODY: &str = r"
local token, ttl, queue_ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local holder = redis.call('GET', lock)
if holder == token then
  -- handed to us while we waited: claim it (the full lease from now)
  redis.call('PEXPIRE', lock, ttl)
  redis.call('PEXPIRE', fence, ttl)
  return {1, tonumber(redis.call('GET', fence)) or 0, '', 0}
end
if not holder then
  local g, f = grant_next(token)
  if g == nil then
    redis.call('SET', lock, token, 'PX', ttl)
    redis.call('ZREM', queue, token)
    redis.call('HDEL', waiters, token)
    return {1, next_fence(ttl), '', 0}
  end
  if g == token then
    redis.call('PEXPIRE', lock, ttl)
    redis.call('PEXPIRE', fence, ttl)
    return {1, f, '', 0}
  end
  holder = g
end
if queue_ms > 0 then
  redis.call('ZADD', queue, 'NX', t[1] .. string.format('%06d', tonumber(t[2])), token)
  redis.call('HSET', waiters, token, string.format('%.0f', now + queue_ms) .. ':' .. ttl)
  local keep = queue_ms + 1000
  if redis.call('PTTL', queue) < keep then
    redis.call('PEXPIRE', queue, keep)
    redis.call('PEXPIRE', waiters, keep)
  end
end
return {0, redis.call('PTTL', lock), holder, tonumber(redis.call('GET', fence)) or 0}
";

/// ARGV: token. Compare-and-delete, then hand the lock to the next waiter.
/// Returns 1 if the caller held the lock.
pub const RELEASE_BODY: &str = r"
if redis.call('GET', lock) ~= ARGV[1] then return 0 end
redis.call('DEL', lock)
grant_next(nil)
return 1
";

/// ARGV: token. A waiter gives up: leave the queue; if the lock was handed to it in the
/// meantime, pass it on. Returns 1 if it had been handed the lock.
pub const CANCEL_BODY: &str = r"
redis.call('ZREM', queue, ARGV[1])
redis.call('HDEL', waiters, ARGV[1])
if redis.call('GET', lock) ~= ARGV[1] then return 0 end
redis.call('DEL', lock)
grant_next(nil)
return 1
";

/// Delete whoever holds the lock and hand it on. Returns 1 if a lease existed.
pub const FORCE_BODY: &str = r"
local had = redis.call('DEL', lock)
grant_next(nil)
return had
";

/// KEYS: lock, fence. ARGV: token, `ttl_ms`. Compare-and-pexpire (the fence key lives as
/// long as the lease). Also the claim of a hand-off. Returns 1 if the caller holds it.
pub const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Returns `{holder_token or '', pttl}`.
pub const HOLDER: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {'', -2} end
return {v, redis.call('PTTL', KEYS[1])}
";

/// Full source of a script that uses the prologue.
#[must_use]
pub fn with_prologue(body: &str) -> String {
    let mut s = String::with_capacity(PROLOGUE.len() + body.len());
    s.push_str(PROLOGUE);
    s.push_str(body);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagging_round_trips() {
        assert_eq!(tagged("p:", "42"), "p:{42}");
        assert_eq!(untagged("p:", "p:{42}"), Some("42"));
        assert_eq!(untagged("p:", "p:42"), None);
        assert_eq!(untagged("p:", "q:{42}"), None);
    }

    #[test]
    fn names_do_not_collide_with_user_keys() {
        let n = Names::new("p:user");
        assert_eq!(n.lock, "p:user");
        for other in [&n.fence, &n.queue, &n.waiters] {
            assert!(other.starts_with("p:user\0"));
        }
        assert_eq!(n.keys().len(), 4);
    }

    #[test]
    fn pattern_escapes_glob() {
        assert_eq!(channel_pattern("a*b:"), "a\\*b:*\0released");
        assert_eq!(channel_pattern("job:"), "job:*\0released");
    }

    #[test]
    fn acquire_replies() {
        assert_eq!(parse_attempt((1, 7, String::new(), 0)), Attempt::Got(7));
        assert_eq!(
            parse_attempt((0, 900, "abc".into(), 6)),
            Attempt::Taken {
                pttl: 900,
                holder: "abc".into(),
                fence: 6
            }
        );
    }

    #[test]
    fn notices() {
        assert_eq!(parse_notice("abc:17"), Some(("abc", 17)));
        assert_eq!(parse_notice("abc"), None);
        assert_eq!(parse_notice("abc:x"), None);
    }

    #[test]
    fn prologue_claim_window_matches_rust_constant() {
        assert!(PROLOGUE.contains(&format!("local CLAIM_MS = {CLAIM_MS}\n")));
    }

    #[test]
    fn prologue_channel_matches_rust_name() {
        assert!(PROLOGUE.contains(r"lock .. '\0released'"));
        assert_eq!(CHANNEL_SUFFIX, "\0released");
    }
}
