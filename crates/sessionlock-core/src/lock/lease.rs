//! How long a lease lasts as far as this host can tell: the local deadline every held handle
//! keeps, from the moment the confirmed request was sent, minus a drift margin.

use std::time::{Duration, Instant};

/// Where a lease confirmed by a request sent at `sent` ends, as far as this host can
/// tell: Redis started it no earlier than `sent`, so it ends no earlier than
/// `sent + lease`; the margin covers the two clocks' drift (Redlock's 1 % + 2 ms).
#[must_use]
pub fn lease_end(sent: Instant, lease: Duration) -> Instant {
    sent + lease.saturating_sub(lease / 100 + Duration::from_millis(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_one_percent_and_two_ms() {
        let t = Instant::now();
        assert_eq!(
            lease_end(t, Duration::from_secs(10)),
            t + Duration::from_millis(9_898)
        );
        assert_eq!(lease_end(t, Duration::from_millis(1)), t);
    }
}
