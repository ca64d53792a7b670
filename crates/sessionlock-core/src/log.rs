//! The logging hook: the core says what happened and at which level; the host decides where
//! it goes. The binding installs a [`Sink`] that writes to Python's `logging` (logger
//! `sessionlock`); with no sink installed nothing is logged and no message is formatted.
//!
//! Levels are `logging`'s numbers, so a sink can pass them on unchanged.

use std::sync::OnceLock;

/// `logging.DEBUG`.
pub const DEBUG: u8 = 10;
/// `logging.INFO`.
pub const INFO: u8 = 20;
/// `logging.WARNING`.
pub const WARNING: u8 = 30;

/// Where the core's log records go.
pub trait Sink: Send + Sync + 'static {
    /// Whether a record at `level` would be emitted now (checked before formatting it).
    fn enabled(&self, level: u8) -> bool;
    /// Emits one record. Must not panic and must not call back into the core's locks.
    fn emit(&self, level: u8, msg: String);
}

static SINK: OnceLock<Box<dyn Sink>> = OnceLock::new();

/// Installs the process's sink; the first one wins. Returns whether this one was installed.
pub fn install(sink: Box<dyn Sink>) -> bool {
    SINK.set(sink).is_ok()
}

/// Whether a record at `level` would be emitted now (false without a sink).
pub fn enabled(level: u8) -> bool {
    SINK.get().is_some_and(|s| s.enabled(level))
}

/// Logs at `level`; `msg` is built only when the sink wants the record.
pub fn log(level: u8, msg: impl FnOnce() -> String) {
    if let Some(s) = SINK.get() {
        if s.enabled(level) {
            s.emit(level, msg());
        }
    }
}
