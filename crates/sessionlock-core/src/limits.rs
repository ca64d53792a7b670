//! Validation of the numbers users pass in (TTLs, timeouts, sizes), with the error types
//! `threading` and DESIGN.md promise. Nothing here touches shared state, so a bad argument
//! is rejected before anything changes.

use std::time::Duration;

use crate::error::{Error, Result};

/// `threading.TIMEOUT_MAX` on 64-bit Linux and macOS (`PY_TIMEOUT_MAX` in seconds).
pub const TIMEOUT_MAX: f64 = 9_223_372_036.0;

fn finite_non_negative(name: &str, v: f64) -> Result<f64> {
    if v.is_nan() {
        return Err(Error::Value(format!("{name} must be a number, not NaN")));
    }
    if v < 0.0 {
        return Err(Error::Value(format!(
            "{name} must be non-negative, got {v}"
        )));
    }
    Ok(v)
}

/// A TTL in seconds to nanoseconds; `None` (or infinity) means no limit, encoded as 0.
///
/// # Errors
///
/// `Error::Value` if `v` is NaN, negative or zero.
pub fn ttl_ns(name: &str, v: Option<f64>) -> Result<u64> {
    let Some(v) = v else { return Ok(0) };
    let v = finite_non_negative(name, v)?;
    if v == 0.0 {
        return Err(Error::Value(format!(
            "{name} must be > 0 (use None for no limit)"
        )));
    }
    if v.is_infinite() {
        return Ok(0);
    }
    // `u64::MAX as f64` rounds up to 2^64; the final cast saturates at `u64::MAX`.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "v is checked finite and > 0 above, the float is clamped to [1, 2^64] and \
                  float-to-int `as` saturates; sub-nanosecond digits are meant to be dropped"
    )]
    let ns = (v * 1e9).min(u64::MAX as f64).max(1.0) as u64;
    Ok(ns)
}

/// `timeout=None` style: `None` waits forever; otherwise seconds >= 0.
///
/// # Errors
///
/// `Error::Value` if `v` is NaN or negative; `Error::Overflow` if it is above
/// [`TIMEOUT_MAX`] (infinity included).
pub fn optional_timeout(name: &str, v: Option<f64>) -> Result<Option<f64>> {
    match v {
        None => Ok(None),
        Some(v) => {
            let v = finite_non_negative(name, v)?;
            if v > TIMEOUT_MAX {
                return Err(Error::Overflow(format!("{name} value is too large")));
            }
            Ok(Some(v))
        }
    }
}

/// The longest duration any seconds argument is taken to mean (longer values are capped).
const MAX_SECS: f64 = 1e9;

/// A TTL in seconds to whole milliseconds (rounded up); `None` (or infinity) means no limit,
/// encoded as 0. The rules are [`ttl_ns`]'s.
///
/// # Errors
///
/// `Error::Value` if `v` is NaN, negative or zero (as [`ttl_ns`]).
pub fn ttl_ms(name: &str, v: Option<f64>) -> Result<u64> {
    Ok(ttl_ns(name, v)?.div_ceil(1_000_000))
}

/// A lease, a timeout between retries and the like: finite seconds > 0, at least 1 ms (the
/// resolution of Redis's `PX`), at most 1e9 s.
///
/// # Errors
///
/// `Error::Value` if `v` is not positive and finite (NaN, infinite, zero or negative).
pub fn positive_secs(name: &str, v: f64) -> Result<Duration> {
    if v.is_nan() || !v.is_finite() || v <= 0.0 {
        return Err(Error::Value(format!(
            "{name} must be a positive number of seconds, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v.min(MAX_SECS)).max(Duration::from_millis(1)))
}

/// A wait that may be zero (a single try): finite seconds >= 0, at most 1e9 s.
///
/// # Errors
///
/// `Error::Value` if `v` is NaN, infinite or negative.
pub fn non_negative_secs(name: &str, v: f64) -> Result<Duration> {
    if v.is_nan() || !v.is_finite() || v < 0.0 {
        return Err(Error::Value(format!(
            "{name} must be a finite number of seconds >= 0, got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v.min(MAX_SECS)))
}

#[expect(
    clippy::float_cmp,
    reason = "-1 is threading's exact sentinel for \"no timeout\""
)]
/// `threading.Lock.acquire(blocking, timeout)` argument rules. Returns `None` for "wait
/// forever", `Some(0.0)` for a non-blocking attempt.
///
/// # Errors
///
/// `Error::Value` if a non-blocking call gives a timeout other than -1, or a blocking one
/// gives NaN or a negative timeout other than -1; `Error::Overflow` if the timeout is
/// above [`TIMEOUT_MAX`].
pub fn rlock_timeout(blocking: bool, timeout: f64) -> Result<Option<f64>> {
    if !blocking {
        if timeout != -1.0 {
            return Err(Error::Value(
                "can't specify a timeout for a non-blocking call".into(),
            ));
        }
        return Ok(Some(0.0));
    }
    if timeout == -1.0 {
        return Ok(None);
    }
    if timeout.is_nan() {
        return Err(Error::Value("Invalid value NaN (not a number)".into()));
    }
    if timeout < 0.0 {
        return Err(Error::Value(
            "timeout value must be a non-negative number".into(),
        ));
    }
    if timeout > TIMEOUT_MAX {
        return Err(Error::Overflow("timeout value is too large".into()));
    }
    Ok(Some(timeout))
}

/// `max_sessions`: `None` means no limit, encoded as 0; a count above `usize::MAX` is
/// capped to it.
///
/// # Errors
///
/// `Error::Value` if `v` is below 1.
pub fn max_sessions(v: Option<i64>) -> Result<usize> {
    match v {
        None => Ok(0),
        Some(n) if n >= 1 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Some(n) => Err(Error::Value(format!(
            "max_sessions must be >= 1 or None, got {n}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rules() {
        assert_eq!(ttl_ns("t", None).unwrap(), 0);
        assert_eq!(ttl_ns("t", Some(f64::INFINITY)).unwrap(), 0);
        assert_eq!(ttl_ns("t", Some(1.5)).unwrap(), 1_500_000_000);
        assert!(ttl_ns("t", Some(-1.0)).is_err());
        assert!(ttl_ns("t", Some(f64::NAN)).is_err());
        assert!(ttl_ns("t", Some(0.0)).is_err());
    }

    #[test]
    fn seconds_rules() {
        assert_eq!(ttl_ms("t", Some(0.0015)).unwrap(), 2);
        assert_eq!(ttl_ms("t", None).unwrap(), 0);
        assert_eq!(positive_secs("t", 1e-6).unwrap(), Duration::from_millis(1));
        assert_eq!(
            positive_secs("t", 1e12).unwrap(),
            Duration::from_secs(1_000_000_000)
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(positive_secs("t", bad), Err(Error::Value(_))));
        }
        assert_eq!(non_negative_secs("t", 0.0).unwrap(), Duration::ZERO);
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(non_negative_secs("t", bad), Err(Error::Value(_))));
        }
    }

    #[test]
    fn rlock_rules_match_threading() {
        assert_eq!(rlock_timeout(true, -1.0).unwrap(), None);
        assert_eq!(rlock_timeout(false, -1.0).unwrap(), Some(0.0));
        assert!(matches!(rlock_timeout(false, 1.0), Err(Error::Value(_))));
        assert!(matches!(rlock_timeout(true, -2.0), Err(Error::Value(_))));
        assert!(matches!(
            rlock_timeout(true, f64::NAN),
            Err(Error::Value(_))
        ));
        assert!(matches!(
            rlock_timeout(true, 1e300),
            Err(Error::Overflow(_))
        ));
        assert_eq!(rlock_timeout(true, 0.5).unwrap(), Some(0.5));
    }
}
