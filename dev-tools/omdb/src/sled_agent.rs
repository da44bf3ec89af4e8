//! `omdb sled-agent ...`: what a sled agent says it runs.

use crate::Outcome;
use crate::db::store::{Db, parse_address};
use crate::output::print_rows;
use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use halyard_common::ids::{InstanceUuid, VmmUuid};
use halyard_common::{ByteCount, Generation, MigrationState, VmmState};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tabled::Tabled;

/// How long a sled agent may take to answer before it counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct SledAgentArgs {
    #[command(subcommand)]
    command: SledAgentCommand,
}

#[derive(Debug, Subcommand)]
enum SledAgentCommand {
    /// The VMMs a sled agent runs (by its own account; compare `omdb db vmms --sled`).
    Vmms {
        /// The sled agent's address (IP:PORT), or the sled's id (looked up in the database).
        #[arg(long, value_name = "ADDRESS|ID")]
        sled: String,
    },
}

#[derive(Debug, Serialize, Tabled)]
#[tabled(rename_all = "SCREAMING_SNAKE_CASE")]
struct VmmRow {
    id: VmmUuid,
    instance: InstanceUuid,
    hostname: String,
    ncpus: u16,
    memory: ByteCount,
    state: VmmState,
    #[tabled(rename = "GEN")]
    generation: Generation,
    #[tabled(display = "crate::output::opt")]
    migration_in: Option<MigrationState>,
    #[tabled(display = "crate::output::opt")]
    migration_out: Option<MigrationState>,
}

pub async fn run(
    args: &SledAgentArgs,
    db_url: Option<&str>,
    json: bool,
) -> anyhow::Result<Outcome> {
    match &args.command {
        SledAgentCommand::Vmms { sled } => {
            let address = match parse_address(sled) {
                Some(address) => address,
                None if sled.trim().parse::<uuid::Uuid>().is_ok() => {
                    let db = Db::connect(db_url).await?;
                    db.lookup_sled(sled).await?.address()
                }
                None => bail!(
                    "--sled wants a sled agent's address (IP:PORT) or a sled id, not {sled:?}"
                ),
            };
            let client = client(address)?;
            let vmms = client
                .vmm_list()
                .await
                .map_err(|e| anyhow!("{}", client_error("the sled agent", &address, &e)))?
                .into_inner();
            let mut rows: Vec<VmmRow> = vmms
                .into_iter()
                .map(|v| VmmRow {
                    id: v.propolis_id,
                    instance: v.instance_id,
                    hostname: v.hostname,
                    ncpus: v.ncpus,
                    memory: v.memory,
                    state: v.state.vmm_state.state,
                    generation: v.state.vmm_state.generation,
                    migration_in: v.state.migration_in.map(|m| m.state),
                    migration_out: v.state.migration_out.map(|m| m.state),
                })
                .collect();
            rows.sort_by(|a, b| (&a.hostname, a.id).cmp(&(&b.hostname, b.id)));
            print_rows(&rows, json, "no VMMs")?;
        }
    }
    Ok(Outcome::Ok)
}

/// A client for the sled agent at `address`, with short timeouts.
pub fn client(address: SocketAddr) -> anyhow::Result<halyard_sled_agent_client::Client> {
    let http = crate::tls::http_client_builder(halyard_tls::SLED_AGENT_NAME)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(TIMEOUT)
        .build()?;
    Ok(halyard_sled_agent_client::Client::new_with_client(
        &format!("https://{address}"),
        http,
    ))
}

/// A client error on one line: "cannot reach WHAT at WHERE: why" when the request did not
/// get an answer, "WHAT at WHERE answered STATUS: why" when it did.
pub fn client_error<E: std::fmt::Debug>(
    what: &str,
    place: &dyn std::fmt::Display,
    e: &progenitor_client::Error<E>,
) -> String {
    match e.status() {
        Some(status) => format!("{what} at {place} answered {status}: {}", error_chain(e)),
        None => format!("cannot reach {what} at {place}: {}", error_chain(e)),
    }
}

/// An error and its causes on one line, each cause once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
