//! Logging through Python's `logging` (logger `sessionlock`): the binding's own records, and
//! the sink installed into the core's logging hook (`sessionlock_core::log`), which takes
//! the GIL for a record (from a runtime task too). Never raises into the caller.

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

pub use sessionlock_core::log::{DEBUG, WARNING};

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

/// The core's records go to the `sessionlock` logger. Each call attaches to the interpreter
/// (cheap when the calling thread holds the GIL already) and is skipped once it is
/// shutting down. The core calls it with none of its locks held.
struct PythonSink;

impl sessionlock_core::log::Sink for PythonSink {
    fn enabled(&self, level: u8) -> bool {
        Python::try_attach(|py| log_enabled(py, level)).unwrap_or(false)
    }

    fn emit(&self, level: u8, msg: String) {
        let _ = Python::try_attach(|py| {
            let res = logger(py).and_then(|l| {
                l.call_method1(pyo3::intern!(py, "log"), (level, msg))?;
                Ok(())
            });
            if let Err(e) = res {
                e.write_unraisable(py, None);
            }
        });
    }
}

/// Installs the sink (module init; a second module instance keeps the first sink).
pub fn install() {
    sessionlock_core::log::install(Box::new(PythonSink));
}
