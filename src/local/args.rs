//! The argument rules of the in-memory manager that need Python objects (a session id must
//! be a non-empty `str`, callbacks must be callable); the numeric ones are the core's
//! `limits`.

use pyo3::prelude::*;
use pyo3::types::PyString;

use crate::errors::{Error, Result};

pub fn session_id<'a>(key: &'a Bound<'_, PyAny>) -> Result<&'a str> {
    let s = key.cast::<PyString>().map_err(|_| {
        Error::Type(format!(
            "session_id must be str, not {}",
            key.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?;
    // SAFETY-free fast path: PyO3 caches the UTF-8 of a str, so this is a borrow.
    let s = s.to_str()?;
    if s.is_empty() {
        return Err(Error::Value("session_id must be a non-empty str".into()));
    }
    Ok(s)
}

pub fn check_callable(name: &str, f: &Bound<'_, PyAny>) -> Result<()> {
    if f.is_callable() {
        Ok(())
    } else {
        Err(Error::Type(format!(
            "{name} must be callable, not {}",
            f.get_type().name()?
        )))
    }
}
