//! `types.GenericAlias` for the classes that are generic at runtime
//! (`BaseSessionManager[Ctx]`, `SessionLock[Ctx]`, ...).

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// `types.GenericAlias(cls, item)`: what `__class_getitem__` returns for our generic classes.
pub fn generic_alias(cls: &Bound<'_, PyAny>, item: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    static GENERIC_ALIAS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let ga = GENERIC_ALIAS.import(cls.py(), "types", "GenericAlias")?;
    Ok(ga.call1((cls, item))?.unbind())
}
