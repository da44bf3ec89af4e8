//! `omdb`: the operator's debugger for Halyard.
//!
//! It reads the three places where Halyard keeps state and shows them side by side:
//!
//! - `omdb db ...`: the database (instances, VMMs, sleds, reservations, migrations, the saga
//!   log with each saga's DAG), read through `DataStore` like Nexus reads it;
//! - `omdb nexus ...`: what the running Nexus holds in memory (its saga executor);
//! - `omdb sled-agent ...`: what a sled agent says it runs;
//!
//! and `omdb db check` compares the database with every sled agent. Every command prints a
//! table for people, or with `--json` the same rows as JSON for scripts.
//!
//! Exit codes: 0 success; 1 an error (one line on stderr, naming what could not be reached
//! or found); 2 `omdb db check` found disagreements.

mod db;
mod nexus;
mod output;
mod sled_agent;
mod tls;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "omdb",
    version,
    about = "Halyard's operator debugger: read the database, Nexus and sled agents",
    long_about = "Halyard's operator debugger: read the database, Nexus and sled agents.\n\n\
        The database is found with --db-url, else $HALYARD_DB_URL, else the development \
        environment's postgresql://postgres@127.0.0.1:32221/halyard.\n\n\
        Exit codes: 0 success, 1 error, 2 `omdb db check` found disagreements."
)]
struct Omdb {
    /// Print JSON (the same rows as the tables) instead of tables.
    #[arg(long, global = true)]
    json: bool,

    /// The database's URL. Default: $HALYARD_DB_URL if set, else the development
    /// environment's postgresql://postgres@127.0.0.1:32221/halyard.
    #[arg(long, global = true, value_name = "URL")]
    db_url: Option<String>,

    /// The directory of the operator's certificate for Nexus's internal API and the sled
    /// agents (mutual TLS): `ca.pem`, `operator.pem`, `operator-key.pem`. Default:
    /// $HALYARD_TLS_DIR if set, else the development environment's .halyard-dev/pki.
    #[arg(long, global = true, value_name = "DIR")]
    tls_dir: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Read the database (and compare it with the sled agents: `omdb db check`).
    Db(db::DbArgs),
    /// Ask the running Nexus, over its internal API.
    Nexus(nexus::NexusArgs),
    /// Ask a sled agent, over its API.
    SledAgent(sled_agent::SledAgentArgs),
}

/// How a command that did its job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report beyond the output.
    Ok,
    /// `omdb db check` found disagreements (exit code 2).
    Disagreements,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match Omdb::try_parse() {
        Ok(args) => args,
        Err(e) => {
            // Help and version go to stdout and succeed; a usage error goes to stderr and
            // exits 1 (2 is reserved for "check found disagreements").
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    tls::set_dir(args.tls_dir.clone());
    let result = match &args.command {
        Command::Db(db_args) => db::run(db_args, args.db_url.as_deref(), args.json).await,
        Command::Nexus(nexus_args) => nexus::run(nexus_args, args.json).await,
        Command::SledAgent(sled_args) => {
            sled_agent::run(sled_args, args.db_url.as_deref(), args.json).await
        }
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Disagreements) => ExitCode::from(2),
        Err(e) => {
            eprintln!("omdb: {}", one_line(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

/// An error message on one line: line breaks (from a server's or the database's message)
/// become spaces.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
