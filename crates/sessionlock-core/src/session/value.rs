//! The bytes a `RedisSessionManager` stores under one session key, and their signature.
//! Pure: no connection, no Python, so the format is tested with `cargo test`.
//!
//! Layout: `HEADER` (13 ASCII digits: the absolute deadline in ms since the epoch, all zeros
//! for none, then `:`), then — when the manager has a secret — two HMAC-SHA256 tags, then the
//! codec's payload:
//!
//! ```text
//! unsigned:  HEADER(14) payload
//! signed:    HEADER(14) HEADER_TAG(32) PAYLOAD_TAG(32) payload
//! ```
//!
//! Every stored byte is covered: `HEADER_TAG` signs the key and the header, `PAYLOAD_TAG` the
//! key and the payload (domain-separated, so one tag can never stand in for the other). The
//! two are separate because they change at different times: the header is made once, when the
//! session is created (the client proposes the deadline, the script checks it against the
//! server clock), and every later write copies `HEADER` + `HEADER_TAG` verbatim while replacing
//! the rest. Both tags cover the full Redis key, so a value copied to another session id fails
//! its check as surely as a tampered one. Tags are compared in constant time.

use ring::hmac;

/// Length of the deadline header, `:` included.
pub const HEADER_LEN: usize = 14;
/// Length of the HMAC-SHA256 tag.
pub const TAG_LEN: usize = 32;

/// `b"sessionlock header\0"`: the header tag's domain (the payload tag has none, and a
/// key-length prefix, so the two messages can never coincide).
const HEADER_DOMAIN: &[u8] = b"sessionlock header\0";

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

    /// Bytes of header (and header tag) that a write keeps from the stored value.
    #[must_use]
    pub fn head_len(&self) -> usize {
        if self.signs() {
            HEADER_LEN + TAG_LEN
        } else {
            HEADER_LEN
        }
    }

    fn message(domain: &[u8], redis_key: &[u8], part: &[u8]) -> Vec<u8> {
        let mut msg = Vec::with_capacity(domain.len() + 8 + redis_key.len() + part.len());
        msg.extend_from_slice(domain);
        msg.extend_from_slice(&(redis_key.len() as u64).to_be_bytes());
        msg.extend_from_slice(redis_key);
        msg.extend_from_slice(part);
        msg
    }

    /// The header for absolute deadline `deadline_ms` (0: none), with its tag when signing.
    #[must_use]
    pub fn head(&self, redis_key: &[u8], deadline_ms: u64) -> Vec<u8> {
        let mut out = format!("{deadline_ms:013}:").into_bytes();
        debug_assert_eq!(out.len(), HEADER_LEN, "deadline beyond 13 digits");
        if let Some(k) = &self.key {
            let tag = hmac::sign(k, &Self::message(HEADER_DOMAIN, redis_key, &out));
            out.extend_from_slice(tag.as_ref());
        }
        out
    }

    /// The body to store after the head (payload tag + payload, or the payload alone).
    #[must_use]
    pub fn seal(&self, redis_key: &[u8], payload: &[u8]) -> Vec<u8> {
        match &self.key {
            None => payload.to_vec(),
            Some(k) => {
                let tag = hmac::sign(k, &Self::message(b"", redis_key, payload));
                let mut out = Vec::with_capacity(TAG_LEN + payload.len());
                out.extend_from_slice(tag.as_ref());
                out.extend_from_slice(payload);
                out
            }
        }
    }

    /// The payload of a stored value, checked (header, and both tags when signing) before
    /// anyone decodes it.
    ///
    /// # Errors
    ///
    /// `Reject::Header` if `stored` does not start with a well-formed header;
    /// `Reject::Signature` (when signing) if it is too short to hold both tags or a tag
    /// does not match.
    pub fn open<'a>(&self, redis_key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], Reject> {
        let body = strip_header(stored).ok_or(Reject::Header)?;
        let Some(k) = &self.key else {
            return Ok(body);
        };
        if body.len() < 2 * TAG_LEN {
            return Err(Reject::Signature);
        }
        let (head_tag, rest) = body.split_at(TAG_LEN);
        let (payload_tag, payload) = rest.split_at(TAG_LEN);
        let header = &stored[..HEADER_LEN];
        hmac::verify(
            k,
            &Self::message(HEADER_DOMAIN, redis_key, header),
            head_tag,
        )
        .map_err(|_| Reject::Signature)?;
        hmac::verify(k, &Self::message(b"", redis_key, payload), payload_tag)
            .map_err(|_| Reject::Signature)?;
        Ok(payload)
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

    fn stored(s: &Signer, key: &[u8], deadline: u64, payload: &[u8]) -> Vec<u8> {
        let mut v = s.head(key, deadline);
        v.extend_from_slice(&s.seal(key, payload));
        v
    }

    #[test]
    fn unsigned_roundtrip() {
        let s = Signer::new(None);
        assert_eq!(s.head_len(), HEADER_LEN);
        assert_eq!(s.open(b"k", &stored(&s, b"k", 0, b"{}")).unwrap(), b"{}");
        assert_eq!(s.open(b"k", b"{}"), Err(Reject::Header));
        assert_eq!(s.open(b"k", b"00000000000x0:{}"), Err(Reject::Header));
    }

    #[test]
    fn signed_roundtrip_and_rejections() {
        let s = Signer::new(Some(b"secret"));
        let v = stored(&s, b"p:a", 1_700_000_000_000, b"payload");
        assert_eq!(v.len(), HEADER_LEN + 2 * TAG_LEN + 7);
        assert_eq!(s.head_len(), HEADER_LEN + TAG_LEN);
        assert_eq!(s.open(b"p:a", &v).unwrap(), b"payload");
        // another key, another secret, a truncated value: all rejected
        assert_eq!(s.open(b"p:b", &v), Err(Reject::Signature));
        let other = Signer::new(Some(b"other"));
        assert_eq!(other.open(b"p:a", &v), Err(Reject::Signature));
        assert_eq!(
            s.open(b"p:a", &v[..HEADER_LEN + 40]),
            Err(Reject::Signature)
        );
    }

    #[test]
    fn every_byte_is_covered() {
        let s = Signer::new(Some(b"secret"));
        let v = stored(&s, b"p:a", 1_700_000_000_000, b"{\"step\":1}");
        for i in 0..v.len() {
            for bit in [1u8, 0x80] {
                let mut bad = v.clone();
                bad[i] ^= bit;
                assert!(s.open(b"p:a", &bad).is_err(), "flip at {i} accepted");
            }
        }
    }

    #[test]
    fn a_header_from_another_deadline_is_rejected() {
        let s = Signer::new(Some(b"secret"));
        let v = stored(&s, b"p:a", 1_700_000_000_000, b"x");
        let mut swapped = s.head(b"p:a", 0);
        swapped.truncate(HEADER_LEN); // the digits of "no deadline", the old header tag kept
        swapped.extend_from_slice(&v[HEADER_LEN..]);
        assert_eq!(s.open(b"p:a", &swapped), Err(Reject::Signature));
    }
}
