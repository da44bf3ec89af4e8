//! Nexus against a real PostgreSQL and real simulated sled agents over HTTP.

mod context;
mod instances;
mod saga_faults;
mod saga_replay;
