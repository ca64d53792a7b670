//! The glue between the core's per-process tokio runtime (`sessionlock_core::redis::process`,
//! fork-aware) and Python: pyo3-async-runtimes awaitables run on it, and an `atexit` hook
//! stops it before the interpreter finalizes.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3_async_runtimes::generic::{ContextExt, Runtime as GenericRuntime};
use pyo3_async_runtimes::TaskLocals;
use sessionlock_core::redis::{process, process::take_runtime};

/// Stops this process's runtime; registered with `atexit`. CPython ends any thread that
/// tries to take the GIL once finalization has begun, and a runtime thread completing an
/// asyncio future then (pyo3-async-runtimes' `set_result`) dies inside Rust frames, which
/// aborts the whole process. atexit runs before finalization, so after this no runtime
/// thread is left to try. Tasks still in flight are dropped: leases they held run out.
#[pyfunction]
pub fn _shutdown_runtime(py: Python<'_>) {
    if let Some(rt) = take_runtime() {
        // Runtime threads may need the GIL to finish what they are doing: let them have it.
        py.detach(move || rt.shutdown_timeout(Duration::from_secs(1)));
    }
}

/// pyo3-async-runtimes glue: awaitables run on this process's runtime (fork-aware), not on
/// the crate's global one, which cannot be rebuilt in a forked child.
pub struct ForkSafeRuntime;

tokio::task_local! {
    static TASK_LOCALS: std::cell::OnceCell<TaskLocals>;
}

impl GenericRuntime for ForkSafeRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle = tokio::task::JoinHandle<()>;

    fn spawn<F>(fut: F) -> Self::JoinHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        process().handle.spawn(fut)
    }

    fn spawn_blocking<F>(f: F) -> Self::JoinHandle
    where
        F: FnOnce() + Send + 'static,
    {
        process().handle.spawn_blocking(f)
    }
}

impl ContextExt for ForkSafeRuntime {
    fn scope<F, R>(locals: TaskLocals, fut: F) -> Pin<Box<dyn Future<Output = R> + Send>>
    where
        F: Future<Output = R> + Send + 'static,
    {
        let cell = std::cell::OnceCell::new();
        let _ = cell.set(locals);
        Box::pin(TASK_LOCALS.scope(cell, fut))
    }

    fn get_task_locals() -> Option<TaskLocals> {
        TASK_LOCALS
            .try_with(|c| c.get().cloned())
            .unwrap_or_default()
    }
}
