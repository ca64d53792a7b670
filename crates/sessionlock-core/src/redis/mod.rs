//! Redis, as far as it needs no connection: where to connect ([`target`]).

pub mod target;
