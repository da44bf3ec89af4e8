//! The [`DataStore`]: a connection pool plus every query, grouped by the object they touch.

mod audit;
mod disk;
mod disk_attach;
mod identity;
mod instance;
mod instance_transition;
mod instance_view;
mod leftover;
mod migration;
mod network;
mod nexus;
mod project;
mod region;
mod region_replacement;
mod role;
mod saga;
mod sled;
mod snapshot;
mod vmm;

pub use disk::{DiskTransition, MAX_DISK_SIZE, validate_new_disk};
pub use disk_attach::{AttachedDisk, InstanceForDisks};
pub use identity::{DEVICE_AUTH_REQUEST_LIFETIME, DeviceTokenPoll, TokenOwner};
pub use instance::{validate_instance_shape, validate_new_instance};
pub use instance_transition::{ConflictReason, Release, TransitionConflict, TransitionOutcome};
pub use instance_view::InstanceAndVmm;
pub use leftover::{LeftoverClaim, Leftovers};
pub use network::{
    HostedInterface, InstanceForNics, NewNetworkInterface, SUBNET_PREFIX_RANGE, SledAgentAt,
    VpcMappingsRead, validate_ipv4_block, validate_vpc_ipv6_prefix,
};
pub use region_replacement::LostRegion;
pub use saga::EventsWritten;
pub use sled::SledChoice;
pub use snapshot::SnapshotTransition;
pub use vmm::{MigrationReport, ReportApplied, RetireOutcome, VmmStateReport};

use crate::error::TxnError;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolableConnection, RecyclingMethod,
};
use halyard_common::Error;
use slog::{Logger, o, warn};
use std::future::Future;
use std::time::Duration;

/// How many times a transaction that lost a serialization conflict is run again.
const MAX_CONFLICT_RETRIES: u32 = 10;

/// Settings of the connection pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long a query waits for a free (or new) connection before the database counts as
    /// unavailable.
    pub connection_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: 16,
            connection_timeout: Duration::from_secs(5),
        }
    }
}

/// A snapshot of the connection pool's counters (see [`DataStore::pool_statistics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatistics {
    /// Connections open now.
    pub connections: u32,
    /// Of those, idle now.
    pub idle_connections: u32,
    /// Connections handed out (or refused) since the pool was made.
    pub gets: u64,
    /// Of those, how many waited for a connection to be free (or opened).
    pub gets_waited: u64,
    /// Of those, how many waited in vain (`ServiceUnavailable`).
    pub gets_timed_out: u64,
    /// The time all of them spent waiting.
    pub wait_time: Duration,
}

/// The database, as Halyard uses it.
#[derive(Clone)]
pub struct DataStore {
    log: Logger,
    pool: Pool<AsyncPgConnection>,
}

impl std::fmt::Debug for DataStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataStore").finish_non_exhaustive()
    }
}

impl DataStore {
    /// A datastore for the database at `url` (libpq style, e.g.
    /// `postgresql://user@host:port/db`; several hosts may be listed for a replicated setup).
    ///
    /// No connection is made yet, so this succeeds while the database is down; the first
    /// query then fails with `ServiceUnavailable`. Check the schema version before use.
    pub fn new(log: &Logger, url: &str, config: PoolConfig) -> DataStore {
        // A connection that broke (the database restarted, a transaction went wrong) is
        // dropped, not handed out again: checked locally at every check-out (its socket closed,
        // or its transaction state broken), which costs no round trip. diesel-async's default
        // check, a `SELECT 1` per check-out, doubled the round trips of every query (and made
        // one commit of its own each time) to catch only what the next query's error catches
        // anyway: a connection that dies after the check fails the same way.
        let mut manager_config = ManagerConfig::default();
        manager_config.recycling_method =
            RecyclingMethod::CustomFunction(Box::new(|conn: &mut AsyncPgConnection| {
                let broken = conn.is_broken();
                Box::pin(async move {
                    if broken {
                        Err(diesel::result::Error::BrokenTransactionManager)
                    } else {
                        Ok(())
                    }
                })
            }));
        let manager =
            AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
        let pool = Pool::builder()
            .max_size(config.max_connections)
            .connection_timeout(config.connection_timeout)
            .test_on_check_out(true)
            .build_unchecked(manager);
        DataStore {
            log: log.new(o!("component" => "DataStore")),
            pool,
        }
    }

    /// Opens one connection to `url` outside any pool, within `timeout`, and closes it.
    ///
    /// For tools (omdb) that want to say why a database cannot be reached: a pool only
    /// reports that it timed out, this returns the network's or the database's own reason
    /// ("connection refused", "database ... does not exist") as `ServiceUnavailable`.
    pub async fn probe_connection(url: &str, timeout: Duration) -> Result<(), Error> {
        let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok((client, connection))) => {
                // Dropping the client ends the connection cleanly.
                drop(client);
                let _ = tokio::time::timeout(timeout, connection).await;
                Ok(())
            }
            Ok(Err(e)) => Err(Error::unavailable(error_chain(&e))),
            Err(_) => Err(Error::unavailable(format!(
                "no connection within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    pub fn log(&self) -> &Logger {
        &self.log
    }

    /// What the connection pool has done so far (for benchmarks and operators): how many
    /// connections were asked for, how many of those had to wait, and for how long in all.
    pub fn pool_statistics(&self) -> PoolStatistics {
        let state = self.pool.state();
        let s = state.statistics;
        PoolStatistics {
            connections: state.connections,
            idle_connections: state.idle_connections,
            gets: s.get_direct + s.get_waited + s.get_timed_out,
            gets_waited: s.get_waited,
            gets_timed_out: s.get_timed_out,
            wait_time: s.get_wait_time,
        }
    }

    /// A connection from the pool.
    pub(crate) async fn connection(
        &self,
    ) -> Result<PooledConnection<'_, AsyncPgConnection>, Error> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::unavailable(format!("cannot get a database connection: {e}")))
    }

    /// Runs `attempt` (which should open one transaction) until it does not lose a
    /// serialization conflict. CockroachDB aborts one of two conflicting SERIALIZABLE
    /// transactions with SQLSTATE 40001 and expects the client to run it again.
    pub(crate) async fn retry_conflicts<R, F, Fut>(&self, mut attempt: F) -> Result<R, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<R, TxnError>>,
    {
        let mut retries = 0;
        loop {
            match attempt().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_retryable_conflict() && retries < MAX_CONFLICT_RETRIES => {
                    retries += 1;
                    warn!(self.log, "transaction conflict; running it again";
                        "retries" => retries, "error" => ?e);
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(retries))).await;
                }
                Err(e) => return Err(e.into_public()),
            }
        }
    }
}

/// An error and its sources on one line ("error connecting to server: Connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message.replace('\n', " ")
}
