//! omdb against the real system: a fresh database, Nexus in-process and simulated sled agents
//! over HTTP, populated by running real sagas; the real `omdb` binary is run against them and
//! its output compared with the expected output in `tests/snapshots/`.

mod check;
mod context;
mod errors;
mod identity;
mod output;
mod sled_expunge;
mod snapshot;
