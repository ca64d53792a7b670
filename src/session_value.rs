//! The bytes a `RedisSessionManager` stores under one session key, and their signature.
//! Pure: no connection, no Python, so the format is tested with `cargo test`.
//!
//! Layout: `HEADER` (13 ASCII digits: the absolute deadline in ms since the epoch, server
//! clock, all zeros for none, then `:`), then — when the manager has a secret — a 32-byte
//! HMAC-SHA256 tag, then the codec's payload. The header is written by the Lua scripts
//! (they read the server clock) so that every process agrees on the absolute expiry, and it
//! is kept by every later write. The tag covers the full Redis key and the payload, so a
//! value copied to another session id fails its check as surely as a tampered one.

use ring::hmac;

/// Length of the deadline header, `:` included.
pub const HEADER_LEN: usize = 14;
/// Length of the HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

/// Why a stored value is rejected (mapped to `SessionCorrupted`).
#[derive(Debug, PartialEq, Eq)]
pub enum Reject {
    Header,
    Signature,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reject::Header => "it has no sessionlock header (written by something else?)",
            Reject::Signature => "its HMAC-SHA256 signature does not match (tampered, copied from another session, or written with another secret)",
        })
    }
}

/// Signs and checks values; `None` key means values are stored unsigned.
pub struct Signer {
    key: Option<hmac::Key>,
}

impl Signer {
    #[must_use]
    pub fn new(secret: Option<&[u8]>) -> Self {
        Signer {
            key: secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s)),
        }
    }

    #[must_use]
    pub fn signs(&self) -> bool {
        self.key.is_some()
    }

    fn tag(key: &hmac::Key, redis_key: &[u8], payload: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(key);
        ctx.update(&(redis_key.len() as u64).to_be_bytes());
        ctx.update(redis_key);
        ctx.update(payload);
        ctx.sign()
    }

    /// The body to store (tag + payload, or the payload alone); the scripts add the header.
    #[must_use]
    pub fn seal(&self, redis_key: &[u8], payload: &[u8]) -> Vec<u8> {
        match &self.key {
            None => payload.to_vec(),
            Some(k) => {
                let tag = Self::tag(k, redis_key, payload);
                let mut out = Vec::with_capacity(TAG_LEN + payload.len());
                out.extend_from_slice(tag.as_ref());
                out.extend_from_slice(payload);
                out
            }
        }
    }

    /// The payload of a stored value (header included), checked before anyone decodes it.
    /// The tag comparison is constant-time (`ring::hmac::verify`).
    pub fn open<'a>(&self, redis_key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], Reject> {
        let body = strip_header(stored).ok_or(Reject::Header)?;
        match &self.key {
            None => Ok(body),
            Some(k) => {
                if body.len() < TAG_LEN {
                    return Err(Reject::Signature);
                }
                let (tag, payload) = body.split_at(TAG_LEN);
                let mut msg = Vec::with_capacity(8 + redis_key.len() + payload.len());
                msg.extend_from_slice(&(redis_key.len() as u64).to_be_bytes());
                msg.extend_from_slice(redis_key);
                msg.extend_from_slice(payload);
                hmac::verify(k, &msg, tag).map_err(|_| Reject::Signature)?;
                Ok(payload)
            }
        }
    }
}

/// The part after the header, if the header is well-formed.
#[must_use]
pub fn strip_header(stored: &[u8]) -> Option<&[u8]> {
    if stored.len() < HEADER_LEN
        || stored[HEADER_LEN - 1] != b':'
        || !stored[..HEADER_LEN - 1].iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    Some(&stored[HEADER_LEN..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(body: &[u8]) -> Vec<u8> {
        let mut v = b"0000000000000:".to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn unsigned_roundtrip() {
        let s = Signer::new(None);
        let body = s.seal(b"k", b"{}");
        assert_eq!(s.open(b"k", &stored(&body)).unwrap(), b"{}");
        assert_eq!(s.open(b"k", b"{}"), Err(Reject::Header));
        assert_eq!(s.open(b"k", b"00000000000x0:{}"), Err(Reject::Header));
    }

    #[test]
    fn signed_roundtrip_and_rejections() {
        let s = Signer::new(Some(b"secret"));
        let body = s.seal(b"p:a", b"payload");
        assert_eq!(body.len(), TAG_LEN + 7);
        assert_eq!(s.open(b"p:a", &stored(&body)).unwrap(), b"payload");
        // another key, another secret, a flipped bit, a truncated tag: all rejected
        assert_eq!(s.open(b"p:b", &stored(&body)), Err(Reject::Signature));
        let other = Signer::new(Some(b"other"));
        assert_eq!(other.open(b"p:a", &stored(&body)), Err(Reject::Signature));
        let mut bad = body.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(s.open(b"p:a", &stored(&bad)), Err(Reject::Signature));
        assert_eq!(s.open(b"p:a", &stored(&body[..10])), Err(Reject::Signature));
    }
}
