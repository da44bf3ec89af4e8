//! `halyard-sled-agent --config <file>`: runs a sled agent until SIGINT or SIGTERM.

use anyhow::Context;
use clap::Parser;
use halyard_sled_agent::{Config, Server};
use slog::{Drain, info, o};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Halyard sled agent: runs the VMMs of one sled")]
struct Args {
    /// The TOML configuration file.
    #[arg(long)]
    config: PathBuf,
    /// The least severe log level shown: trace, debug, info, warning, error or critical.
    /// Routine traffic (registrations, state reports, reads) logs at debug.
    #[arg(long, default_value = "info", value_parser = halyard_observability::parse_log_level)]
    log_level: slog::Level,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = Config::from_file(&args.config)?;
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog::LevelFilter::new(drain, args.log_level).fuse();
    let drain = slog_async::Async::new(drain).build().fuse();
    let log = slog::Logger::root(drain, o!("component" => "sled-agent"));

    let server = Server::start(&config, &log).await?;
    info!(log, "sled agent running"; "address" => %server.local_addr(),
        "nexus" => %config.nexus_address, "sled_id" => %config.sled_id);

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    info!(log, "shutting down");
    server.close().await
}
