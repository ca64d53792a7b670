//! The one internal error enum and its mapping to Python exceptions.
//!
//! The exception classes need multiple inheritance (`LockTimeout` is both a
//! `SessionLockError` and a `TimeoutError`), which `create_exception!` cannot express, so
//! they are built once at module init by calling `type(name, bases, ns)` and kept in
//! `PyOnceLock`s. Every fallible path of the crate returns `Error`; `From<Error> for PyErr`
//! is the only place that chooses a Python exception type.

use pyo3::exceptions::{
    PyConnectionError, PyException, PyKeyError, PyOverflowError, PyRuntimeError, PyTimeoutError,
    PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

#[derive(Debug)]
pub enum Error {
    Type(String),
    Value(String),
    Overflow(String),
    Timeout(String),
    NotOwned(String),
    Lost(String),
    Unavailable(String),
    NotFound(String),
    Deadlock(String),
    Corrupted(String),
    Py(PyErr),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sessionlock_core::Error> for Error {
    fn from(err: sessionlock_core::Error) -> Self {
        match err {
            sessionlock_core::Error::Type(m) => Error::Type(m),
            sessionlock_core::Error::Value(m) => Error::Value(m),
            sessionlock_core::Error::Overflow(m) => Error::Overflow(m),
            sessionlock_core::Error::Timeout(m) => Error::Timeout(m),
            sessionlock_core::Error::Lost(m) => Error::Lost(m),
            sessionlock_core::Error::Unavailable(m) => Error::Unavailable(m),
            sessionlock_core::Error::State(m) | sessionlock_core::Error::Redis(m) => {
                Error::Py(pyo3::exceptions::PyRuntimeError::new_err(m))
            }
            sessionlock_core::Error::Corrupted(m) => Error::Corrupted(m),
            sessionlock_core::Error::Deadlock(m) => Error::Deadlock(m),
            sessionlock_core::Error::NotOwned(m) => Error::NotOwned(m),
        }
    }
}

impl From<PyErr> for Error {
    fn from(err: PyErr) -> Self {
        Error::Py(err)
    }
}

macro_rules! exception_cells {
    ($($cell:ident),* $(,)?) => { $(static $cell: PyOnceLock<Py<PyType>> = PyOnceLock::new();)* };
}
exception_cells!(
    SESSION_LOCK_ERROR,
    LOCK_TIMEOUT,
    LOCK_NOT_OWNED,
    LOCK_LOST,
    REDIS_UNAVAILABLE,
    SESSION_NOT_FOUND,
    LOCK_DEADLOCK,
    SESSION_CORRUPTED,
);

fn make_type(
    py: Python<'_>,
    name: &str,
    bases: &[Bound<'_, PyType>],
    doc: &str,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "sessionlock")?;
    ns.set_item("__doc__", doc)?;
    let bases = PyTuple::new(py, bases)?;
    let ty = py.get_type::<PyType>().call1((name, bases, ns))?;
    Ok(ty.cast_into::<PyType>()?.unbind())
}

type Def<'a, 'py> = (
    &'a PyOnceLock<Py<PyType>>,
    &'a str,
    Bound<'py, PyType>,
    &'a str,
);

/// Creates the exception classes and adds them to the module.
///
/// # Errors
///
/// The Python error if a class cannot be created or added to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = make_type(
        py,
        "SessionLockError",
        &[py.get_type::<PyException>()],
        "Base class of every error raised by sessionlock.",
    )?;
    let b = base.bind(py).clone();
    let defs: [Def<'_, '_>; 7] = [
        (
            &LOCK_TIMEOUT,
            "LockTimeout",
            py.get_type::<PyTimeoutError>(),
            "A lock could not be taken within its timeout (raised by `with` / `async with`).",
        ),
        (
            &LOCK_NOT_OWNED,
            "LockNotOwned",
            py.get_type::<PyRuntimeError>(),
            "A lock was released by a thread or task that does not own it.",
        ),
        (
            &LOCK_LOST,
            "LockLost",
            py.get_type::<PyException>(),
            "A distributed lock's lease ran out or was taken over while held.",
        ),
        (
            &REDIS_UNAVAILABLE,
            "RedisUnavailable",
            py.get_type::<PyConnectionError>(),
            "Redis could not be reached and no fallback applies.",
        ),
        (
            &SESSION_NOT_FOUND,
            "SessionNotFound",
            py.get_type::<PyKeyError>(),
            "The session does not exist (or was deleted while it was being updated).",
        ),
        (
            &LOCK_DEADLOCK,
            "LockDeadlock",
            py.get_type::<PyRuntimeError>(),
            "A wait could only deadlock (e.g. a sync wait on the event loop the holder runs on).",
        ),
        (
            &SESSION_CORRUPTED,
            "SessionCorrupted",
            py.get_type::<PyValueError>(),
            "A stored session value failed its signature check or could not be decoded.",
        ),
    ];
    m.add("SessionLockError", base.clone_ref(py))?;
    let _ = SESSION_LOCK_ERROR.set(py, base);
    for (cell, name, extra, doc) in defs {
        // LockLost has only the package base; the others also subclass a builtin.
        let bases: Vec<Bound<'_, PyType>> = if name == "LockLost" {
            vec![b.clone()]
        } else {
            vec![b.clone(), extra]
        };
        let ty = make_type(py, name, &bases, doc)?;
        m.add(name, ty.clone_ref(py))?;
        let _ = cell.set(py, ty);
    }
    Ok(())
}

fn new_err(cell: &PyOnceLock<Py<PyType>>, fallback: fn(String) -> PyErr, msg: String) -> PyErr {
    Python::attach(|py| match cell.get(py) {
        Some(ty) => PyErr::from_type(ty.bind(py).clone(), msg),
        None => fallback(msg),
    })
}

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        match err {
            Error::Type(m) => PyTypeError::new_err(m),
            Error::Value(m) => PyValueError::new_err(m),
            Error::Overflow(m) => PyOverflowError::new_err(m),
            Error::Timeout(m) => new_err(&LOCK_TIMEOUT, PyTimeoutError::new_err, m),
            Error::NotOwned(m) => new_err(&LOCK_NOT_OWNED, PyRuntimeError::new_err, m),
            Error::Lost(m) => new_err(&LOCK_LOST, PyRuntimeError::new_err, m),
            Error::Unavailable(m) => new_err(&REDIS_UNAVAILABLE, PyConnectionError::new_err, m),
            Error::NotFound(m) => new_err(&SESSION_NOT_FOUND, PyKeyError::new_err, m),
            Error::Deadlock(m) => new_err(&LOCK_DEADLOCK, PyRuntimeError::new_err, m),
            Error::Corrupted(m) => new_err(&SESSION_CORRUPTED, PyValueError::new_err, m),
            Error::Py(e) => e,
        }
    }
}
