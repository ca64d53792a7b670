//! sessionlock's native core. This file only wires the module; each concept lives in its
//! own file: `store` (session map), `keylock` (per-key FIFO locks), `manager`
//! (BaseSessionManager), `session_lock` (SessionLock and its awaitable), `errors`,
//! `config` (argument rules) and `pyglue` (asking Python who runs).

pub mod config;
pub mod errors;
pub mod keylock;
pub mod manager;
mod pyglue;
pub mod session_lock;
pub mod store;

use pyo3::prelude::*;

#[pymodule]
fn _sessionlock(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    pyglue::register(m)?;
    m.add_class::<manager::PyManager>()?;
    m.add_class::<session_lock::PySessionLock>()?;
    Ok(())
}
