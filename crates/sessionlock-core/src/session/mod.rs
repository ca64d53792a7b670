//! Sessions stored in Redis: the stored bytes and their signature ([`value`]) and the Lua
//! scripts that read and write them ([`scripts`]).

pub mod scripts;
pub mod value;
