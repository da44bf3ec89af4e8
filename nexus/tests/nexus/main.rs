//! Nexus against a real PostgreSQL and real simulated sled agents over HTTP.

mod authn;
mod authn_support;
mod authz;
mod bad_input;
mod context;
mod crash_replay;
mod disks;
mod external_api;
mod instance_disks;
mod instances;
mod invariant_checker;
mod lost_replies;
mod migration;
mod model_system;
mod model_test;
mod mtls;
mod observability;
mod outages;
mod qemu;
mod races;
mod saga_faults;
mod saga_replay;
mod serial_console;
mod sled_expunge;
mod snapshots;
mod stuck;
