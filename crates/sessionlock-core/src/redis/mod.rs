//! Redis, as far as it needs no connection: where to connect ([`target`]) and how a literal
//! prefix becomes a glob pattern ([`glob`]).

pub mod glob;
pub mod target;
