//! Sessions stored in Redis: the stored bytes and their signature ([`value`]), the Lua
//! scripts that read and write them ([`scripts`]), and the store that runs them and keeps
//! this process's holds of session locks ([`store`]: `RedisSessions`).

pub mod scripts;
pub mod store;
pub mod value;

pub use store::{RedisSessions, SessionOptions};
