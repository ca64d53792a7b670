//! Redis, as far as it needs no connection: where to connect ([`target`]), how a literal
//! prefix becomes a glob pattern ([`glob`]) and what a `CLUSTER NODES` reply says ([`cluster`]).

pub mod cluster;
pub mod glob;
pub mod target;
