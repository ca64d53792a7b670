//! Logging through Python's `logging` (logger `sessionlock`): from a thread that holds the
//! GIL, or detached from a runtime task. Never raises into the caller.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

fn logger(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    LOGGER
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("logging")?
                    .call_method1("getLogger", ("sessionlock",))?
                    .unbind(),
            )
        })
        .map(|l| l.bind(py))
}

/// Logs `msg` with the traceback of `err` at ERROR level; never raises.
pub fn log_exception(py: Python<'_>, msg: &str, err: &PyErr) {
    let res = logger(py).and_then(|l| {
        let kw = PyDict::new(py);
        kw.set_item("exc_info", err.value(py))?;
        l.call_method("error", (msg,), Some(&kw))?;
        Ok(())
    });
    if let Err(e) = res {
        e.write_unraisable(py, None);
    }
}

/// `logging` levels used by the Redis lock.
pub const DEBUG: u8 = 10;
pub const INFO: u8 = 20;
pub const WARNING: u8 = 30;

/// Logs through the `sessionlock` logger if it is enabled for `level`; `msg` is built only
/// then, so a disabled DEBUG line costs one `isEnabledFor` call. Never raises.
pub fn log(py: Python<'_>, level: u8, msg: impl FnOnce() -> String) {
    let res = logger(py).and_then(|l| {
        if l.call_method1(pyo3::intern!(py, "isEnabledFor"), (level,))?
            .is_truthy()?
        {
            l.call_method1(pyo3::intern!(py, "log"), (level, msg()))?;
        }
        Ok(())
    });
    if let Err(e) = res {
        e.write_unraisable(py, None);
    }
}

/// Whether the `sessionlock` logger would emit `level` now (false if it cannot say).
pub fn log_enabled(py: Python<'_>, level: u8) -> bool {
    logger(py)
        .and_then(|l| {
            l.call_method1(pyo3::intern!(py, "isEnabledFor"), (level,))?
                .is_truthy()
        })
        .unwrap_or(false)
}

/// [`log`] from a thread that does not hold the GIL (a runtime task). Skipped when the
/// interpreter is shutting down.
pub fn log_detached(level: u8, msg: impl FnOnce() -> String) {
    let _ = Python::try_attach(|py| log(py, level, msg));
}
