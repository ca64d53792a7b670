//! Session ids as the map and the lock table store them, and a located key (`Loc`): an id
//! parsed and hashed once per call, then handed to the store and the lock table, so that a
//! call that touches both (update, a lock round trip) pays for one parse and one hash.
//!
//! Canonical uuid strings (what `create_session` makes, and what most callers pass) are
//! packed into 16 inline bytes; other ids of up to 22 bytes are stored inline too; longer
//! ones are boxed. So a typical id costs no heap allocation, neither in the map nor in the
//! lock table. A given string always takes the same form, so forms never need to compare.
//!
//! One hasher for the process (foldhash, randomly seeded): the store and the lock table
//! must agree on hashes to share them.

use std::hash::BuildHasher;
use std::sync::OnceLock;

use foldhash::fast::RandomState;

/// Longest id stored inline (the enum stays 24 bytes: a tag, a length and 22 bytes).
const INLINE: usize = 22;

#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    Uuid([u8; 16]),
    Inline(u8, [u8; INLINE]),
    Str(Box<str>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyRef<'a> {
    Uuid([u8; 16]),
    Str(&'a str),
}

/// A key with its hash, computed once per call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Loc<'a> {
    pub key: KeyRef<'a>,
    pub hash: u64,
}

fn hasher() -> &'static RandomState {
    static HASHER: OnceLock<RandomState> = OnceLock::new();
    HASHER.get_or_init(RandomState::default)
}

impl<'a> KeyRef<'a> {
    #[must_use]
    pub fn new(s: &'a str) -> Self {
        parse_uuid(s).map_or(KeyRef::Str(s), KeyRef::Uuid)
    }

    #[inline]
    #[must_use]
    pub fn hash(self) -> u64 {
        match self {
            KeyRef::Uuid(u) => hasher().hash_one(u128::from_ne_bytes(u)),
            KeyRef::Str(s) => hasher().hash_one(s),
        }
    }
}

/// Formats as the id string in quotes (as `{:?}` of a `str`), for messages.
impl std::fmt::Debug for KeyRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyRef::Uuid(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                write!(
                    f,
                    "{:?}",
                    uuid::Uuid::from_bytes(*u)
                        .hyphenated()
                        .encode_lower(&mut buf)
                )
            }
            KeyRef::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl std::fmt::Debug for Loc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.key.fmt(f)
    }
}

impl<'a> Loc<'a> {
    #[inline]
    #[must_use]
    pub fn new(s: &'a str) -> Self {
        let key = KeyRef::new(s);
        Self {
            key,
            hash: key.hash(),
        }
    }
}

/// Parses the lowercase hyphenated form only (so that formatting gives the same string back).
/// SWAR: eight hex digits are checked and decoded at once in a `u64`; it runs on every call.
#[inline]
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let text: &[u8; 36] = s.as_bytes().try_into().ok()?;
    if text[8] != b'-' || text[13] != b'-' || text[18] != b'-' || text[23] != b'-' {
        return None;
    }
    let chunk = |lo: usize, hi: usize| ld32(text, lo) | (ld32(text, hi) << 32);
    let (w0, bad0) = hex8(chunk(0, 4));
    let (w1, bad1) = hex8(chunk(9, 14));
    let (w2, bad2) = hex8(chunk(19, 24));
    let (w3, bad3) = hex8(chunk(28, 32));
    if bad0 | bad1 | bad2 | bad3 != 0 {
        return None;
    }
    let all = u128::from(w0) | u128::from(w1) << 32 | u128::from(w2) << 64 | u128::from(w3) << 96;
    Some(all.to_le_bytes())
}

#[inline]
fn ld32(text: &[u8; 36], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(
        text[at..at + 4].try_into().expect("four bytes"),
    ))
}

/// Eight lowercase hex digits (little-endian bytes of `x`, first digit lowest) to four
/// bytes, and a non-zero "bad" word if any byte is not one.
#[inline]
fn hex8(x: u64) -> (u32, u64) {
    const L: u64 = 0x0101_0101_0101_0101;
    const H: u64 = 0x8080_8080_8080_8080;
    // Per byte b < 0x80: the high bit of ((b | 0x80) - n) is set iff b >= n (no borrows).
    let ge = |n: u64| ((x | H) - n * L) & H;
    let digit = ge(0x30) & !ge(0x3A);
    let letter = ge(0x61) & !ge(0x67);
    let bad = (x & H) | ((digit | letter) ^ H);
    // '0'..'9' -> low nibble; 'a'..'f' (bit 6 set) -> low nibble + 9.
    let nib = (x & (0x0F * L)) + ((x >> 6) & L) * 9;
    // Byte 2j becomes (digit 2j << 4) | digit 2j+1, then the even bytes are gathered.
    let mut v = ((nib << 4) | (nib >> 8)) & 0x00FF_00FF_00FF_00FF;
    v = (v | (v >> 8)) & 0x0000_FFFF_0000_FFFF;
    v = (v | (v >> 16)) & 0x0000_0000_FFFF_FFFF;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "v is masked to its low 32 bits just above: the cast drops only zeros"
    )]
    let word = v as u32;
    (word, bad)
}

impl Key {
    #[must_use]
    pub fn from_ref(k: KeyRef<'_>) -> Self {
        match k {
            KeyRef::Uuid(u) => Key::Uuid(u),
            KeyRef::Str(s) if s.len() <= INLINE => {
                let mut bytes = [0u8; INLINE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "this arm is taken only when s.len() <= INLINE (22), which fits a u8"
                )]
                let len = s.len() as u8;
                Key::Inline(len, bytes)
            }
            KeyRef::Str(s) => Key::Str(s.into()),
        }
    }

    /// The key as a [`KeyRef`] (no allocation).
    ///
    /// # Panics
    ///
    /// Never in practice: an inline key's bytes were copied from a `str` by
    /// [`Key::from_ref`], so they are valid UTF-8 (the `expect` states that invariant).
    #[inline]
    #[must_use]
    pub fn as_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Uuid(u) => KeyRef::Uuid(*u),
            Key::Inline(n, b) => {
                KeyRef::Str(std::str::from_utf8(&b[..*n as usize]).expect("stored from a str"))
            }
            Key::Str(s) => KeyRef::Str(s),
        }
    }

    /// The key with its hash (recomputed).
    #[must_use]
    pub fn loc(&self) -> Loc<'_> {
        let key = self.as_ref();
        Loc {
            key,
            hash: key.hash(),
        }
    }

    #[inline]
    #[must_use]
    pub fn matches(&self, k: KeyRef<'_>) -> bool {
        match (self, k) {
            (Key::Uuid(a), KeyRef::Uuid(b)) => *a == b,
            (Key::Inline(n, a), KeyRef::Str(b)) => {
                *n as usize == b.len() && &a[..b.len()] == b.as_bytes()
            }
            (Key::Str(a), KeyRef::Str(b)) => &**a == b,
            _ => false,
        }
    }

    pub fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self.as_ref() {
            KeyRef::Uuid(u) => {
                let mut buf = uuid::Uuid::encode_buffer();
                f(uuid::Uuid::from_bytes(u)
                    .hyphenated()
                    .encode_lower(&mut buf))
            }
            KeyRef::Str(s) => f(s),
        }
    }

    #[must_use]
    pub fn into_box(self) -> Box<str> {
        match self {
            Key::Str(s) => s,
            other => other.with_str(|s| Box::from(s)),
        }
    }
}

/// A located key owned by a long-lived object (a lock handle, a pending acquire), so that
/// it is parsed and hashed once, when made.
#[derive(Clone)]
pub struct OwnedLoc {
    key: Key,
    hash: u64,
}

impl std::fmt::Debug for OwnedLoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.loc().fmt(f)
    }
}

impl OwnedLoc {
    #[must_use]
    pub fn new(k: &Loc<'_>) -> Self {
        Self {
            key: Key::from_ref(k.key),
            hash: k.hash,
        }
    }

    #[inline]
    #[must_use]
    pub fn loc(&self) -> Loc<'_> {
        Loc {
            key: self.key.as_ref(),
            hash: self.hash,
        }
    }

    /// The id as the caller wrote it.
    #[must_use]
    pub fn id_string(&self) -> String {
        self.key.with_str(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_parse_matches_the_uuid_crate() {
        for _ in 0..1000 {
            let u = crate::random::uuid_v4();
            let mut buf = uuid::Uuid::encode_buffer();
            let s = u.hyphenated().encode_lower(&mut buf);
            assert_eq!(parse_uuid(s), Some(*u.as_bytes()), "{s}");
        }
        let canon = "0b9d7c3e-4f1a-4c2b-9d8e-7f6a5b4c3d2e";
        assert!(parse_uuid(canon).is_some());
        assert!(parse_uuid("00000000-0000-0000-0000-000000000000").is_some());
        assert!(parse_uuid("ffffffff-ffff-ffff-ffff-ffffffffffff").is_some());
        // every single-character change outside the digit alphabet is refused
        for i in (0..36).filter(|i| ![8, 13, 18, 23].contains(i)) {
            for c in [
                b'/', b':', b'`', b'g', b'A', b'F', b'G', b'-', b' ', 0x80, 0xE9,
            ] {
                let mut b = canon.as_bytes().to_vec();
                b[i] = c;
                if let Ok(s) = std::str::from_utf8(&b) {
                    assert!(parse_uuid(s).is_none(), "{s:?}");
                }
            }
        }
        assert!(parse_uuid("0b9d7c3e-4f1a-4c2b-9d8e-7f6a5b4c3d2").is_none());
        assert!(parse_uuid("0b9d7c3e_4f1a-4c2b-9d8e-7f6a5b4c3d2e").is_none());
    }

    #[test]
    fn forms_round_trip() {
        for s in [
            "a",
            "s0",
            "exactly-twenty-two-ch",
            "twenty-three-characters",
            "é",
        ] {
            let k = Key::from_ref(KeyRef::new(s));
            assert!(k.matches(KeyRef::new(s)));
            assert_eq!(k.loc().hash, Loc::new(s).hash);
            assert_eq!(k.clone().into_box().as_ref(), s);
            assert!(!k.matches(KeyRef::new("other")));
        }
        assert!(matches!(
            Key::from_ref(KeyRef::new("exactly-twenty-two-ch!")),
            Key::Inline(22, _)
        ));
        assert!(matches!(
            Key::from_ref(KeyRef::new("twenty-three-characters")),
            Key::Str(_)
        ));
        assert_eq!(std::mem::size_of::<Key>(), 24);
    }
}
