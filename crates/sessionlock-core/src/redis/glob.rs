//! Redis glob patterns (`SCAN MATCH`, `PSUBSCRIBE`): the one escaping rule for a literal
//! prefix, shared by the session SCAN pattern and the lock's hand-off channel pattern.

/// `literal` with every glob metacharacter (`* ? [ ] \`) escaped, so a pattern built on it
/// matches the literal text only, followed by `reserve` bytes of spare capacity.
#[must_use]
pub fn escaped(literal: &str, reserve: usize) -> String {
    let mut out = String::with_capacity(literal.len() + reserve);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metacharacters_are_escaped() {
        assert_eq!(escaped("a*?[b]\\:", 0), "a\\*\\?\\[b\\]\\\\:");
        assert_eq!(escaped("plain:", 0), "plain:");
    }
}
