//! `halyard-run-all`: the whole system on one machine, for development.
//!
//! Starts PostgreSQL (data under `.halyard-dev/` in the current directory, kept across runs;
//! `--fresh` wipes it), creates or upgrades the schema, starts Nexus, several simulated sled
//! agents and QEMU sled agents (real VMs, booting the guest image `dev-tools/guest-image.sh`
//! builds) in this process, waits until every sled has registered, prints where everything
//! is, and on Ctrl-C (or SIGTERM) stops it all, PostgreSQL and QEMU included.
//!
//! The QEMU sled agents' virtual switches are joined by an underlay (`halyard_test_db::Underlay`:
//! a bridge in the root network namespace, removed at exit, or by its watchdog if this process
//! is killed), each sled with its own address on it (`[qemu.underlay]`), so guests of one VPC
//! reach each other across the QEMU sleds.
//!
//! Identities (Nexus's, each sled's) are kept under `.halyard-dev/` too, so a restarted
//! environment resumes its unfinished sagas and its sleds keep their ids.
//!
//! `--replicated-db` runs the database as three PostgreSQL members under Patroni (with one
//! etcd; `halyard_test_db::PatroniCluster`, synchronous replication) instead of one server,
//! and Nexus connects to it with a multi-host URL that finds the primary.
//! `--nexus-count N` (N > 1) runs N Nexus (each its own id and ports from `--nexus-first-port`)
//! behind HAProxy, which listens at the usual external and internal addresses: the external
//! API as HTTP, the internal API passed through as TCP (mutual TLS stays between the sled agent
//! and the Nexus it reaches), both health-checked every 500 ms, with a failed connection
//! retried on another Nexus.
//! Each of those Nexus is a `halyard-nexus` process of its own (see `nexus_process`), so one
//! can be killed while the other serves and adopts its sagas.

use anyhow::{Context, bail};
use clap::Parser;
use halyard_common::ids::{NexusUuid, SledUuid};
use halyard_common::{ByteCount, SledBackend};
use halyard_db_queries::{DataStore, PoolConfig};
use halyard_test_db::{
    ClusterOptions, Frontend, Haproxy, HealthCheck, PatroniCluster, PatroniPorts, PostgresCluster,
    ProxyMode, Underlay,
};
use slog::{Drain, Logger, info, o, warn};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod nexus_process;
use nexus_process::RunningNexus;

#[derive(Parser)]
#[command(
    about = "Run Halyard (PostgreSQL, Nexus, simulated and QEMU sled agents) for development"
)]
struct Args {
    /// Where the database and identities live.
    #[arg(long, default_value = ".halyard-dev")]
    dir: PathBuf,
    /// Wipe the database and identities first.
    #[arg(long)]
    fresh: bool,
    /// How many simulated sled agents to run.
    #[arg(long, default_value_t = 3)]
    sleds: u16,
    /// How many QEMU sled agents to run (real VMs; placement prefers them while they have
    /// room). Their ports follow the simulated sleds'. Three, because a disk is three replicas
    /// on three sleds and a QEMU guest's disk must be served by QEMU sleds.
    #[arg(long, default_value_t = 3)]
    qemu_sleds: u16,
    /// PostgreSQL's port. With --replicated-db, the first of eight: the three members'
    /// PostgreSQL, their Patroni REST APIs, then etcd's client and peer ports.
    #[arg(long, default_value_t = 32221)]
    db_port: u16,
    /// Run the database as three PostgreSQL members under Patroni (with etcd; data in
    /// <dir>/patroni, kept across runs) instead of one server; Nexus connects with a
    /// multi-host URL that finds the primary.
    #[arg(long)]
    replicated_db: bool,
    /// Nexus's external (/v1) API.
    #[arg(long, default_value = "127.0.0.1:12220")]
    external_address: SocketAddr,
    /// Nexus's internal API (for sled agents).
    #[arg(long, default_value = "127.0.0.1:12221")]
    internal_address: SocketAddr,
    /// How many Nexus to run. More than one: each gets its own id and ports (external, then
    /// internal, from --nexus-first-port on), and HAProxy listens at --external-address and
    /// --internal-address in front of them all.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    nexus_count: u16,
    /// With --nexus-count above 1: the first Nexus's external port; its internal port is the
    /// next, and each further Nexus takes the next two.
    #[arg(long, default_value_t = 12230)]
    nexus_first_port: u16,
    /// The first sled agent's port; the others follow.
    #[arg(long, default_value_t = 12400)]
    first_sled_port: u16,
    /// The least severe log level shown: trace, debug, info, warning, error or critical.
    /// Routine traffic (periodic registrations, state reports, polls) logs at debug.
    #[arg(long, default_value = "info", value_parser = halyard_observability::parse_log_level)]
    log_level: slog::Level,
    /// Why QEMU is missing, when `run-all.sh` could not install it (printed with the banner).
    #[arg(long, hide = true)]
    no_qemu_reason: Option<String>,
}

const DATABASE: &str = "halyard";
/// The user the development environment makes (and prints a token for) at every start.
const DEFAULT_USER: &str = "dev";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let decorator = slog_term::TermDecorator::new().stderr().build();
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog::LevelFilter::new(drain, args.log_level).fuse();
    let drain = slog_async::Async::new(drain).build().fuse();
    let log = Logger::root(drain, o!());

    if args.fresh && args.dir.exists() {
        std::fs::remove_dir_all(&args.dir)
            .with_context(|| format!("wiping {}", args.dir.display()))?;
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;

    if args.replicated_db {
        info!(
            log,
            "starting PostgreSQL under Patroni (three members, etcd)"
        );
        let cluster = PatroniCluster::start(
            &args.dir.join("patroni"),
            PatroniPorts::consecutive(args.db_port),
        )
        .context("starting the replicated database (Patroni, etcd, PostgreSQL)")?;
        let database_url = cluster
            .create_database(DATABASE)
            .context("creating the database")?;
        let result = run(&args, &database_url, Some(&cluster), &log).await;
        info!(log, "stopping Patroni, PostgreSQL and etcd");
        drop(cluster);
        return result;
    }
    let cluster = PostgresCluster::start(ClusterOptions {
        port: Some(args.db_port),
        ..ClusterOptions::new(args.dir.join("postgres"))
    })
    .context("starting PostgreSQL")?;
    let result = create_database(&cluster);
    let result = match result {
        Ok(database_url) => run(&args, &database_url, None, &log).await,
        Err(e) => Err(e),
    };
    info!(log, "stopping PostgreSQL");
    cluster.stop().context("stopping PostgreSQL")?;
    result
}

/// Creates the database unless it exists; returns its URL.
fn create_database(cluster: &PostgresCluster) -> anyhow::Result<String> {
    let exists = cluster.psql(
        "postgres",
        &format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"),
    )?;
    if exists.trim().is_empty() {
        cluster.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
    }
    Ok(cluster.url_for(DATABASE))
}

async fn run(
    args: &Args,
    database_url: &str,
    patroni: Option<&PatroniCluster>,
    log: &Logger,
) -> anyhow::Result<()> {
    let database_url = database_url.to_string();
    let datastore = DataStore::new(log, &database_url, PoolConfig::default());
    let version = datastore
        .apply_schema_migrations()
        .await
        .context("applying the schema")?;
    info!(log, "database ready"; "url" => &database_url, "schema_version" => %version);

    // A throwaway CA for this run's mutual TLS (Nexus's internal API, the sled agents, omdb):
    // certificates from an earlier run are from another CA, and refused.
    let pki_dir = args.dir.join("pki");
    let pki = halyard_tls::pki::DevPki::create("run-all", &pki_dir)
        .context("making the development CA")?;
    // One Nexus listens at the given addresses; several get ports of their own, with HAProxy
    // at the given addresses in front of them.
    let mut nexuses = Vec::new();
    for i in 0..args.nexus_count {
        let (external_address, internal_address) = if args.nexus_count == 1 {
            (args.external_address, args.internal_address)
        } else {
            let port = args.nexus_first_port + 2 * i;
            (
                SocketAddr::new(args.external_address.ip(), port),
                SocketAddr::new(args.internal_address.ip(), port + 1),
            )
        };
        // The first keeps the single Nexus's identity file, so its unfinished sagas resume.
        let id_file = match i {
            0 => args.dir.join("nexus-id"),
            i => args.dir.join(format!("nexus-{i}-id")),
        };
        let nexus_config = halyard_nexus::Config::new(
            NexusUuid::from_str(&identity(&id_file)?)?,
            database_url.clone(),
            external_address,
            internal_address,
            pki.files(halyard_tls::Role::Nexus)?,
        );
        // Several: each a process of its own, so one can die alone.
        nexuses.push(if args.nexus_count == 1 {
            RunningNexus::in_process(&nexus_config, log).await?
        } else {
            RunningNexus::process(&nexus_config, &args.dir, args.log_level).await?
        });
    }
    let haproxy = if nexuses.len() > 1 {
        // The external API is checked with Oxide's `GET /v1/ping` (no token needed); the
        // internal one, mutual TLS passed through, with a TCP connection.
        let frontends = [
            Frontend {
                name: "nexus-external".into(),
                listen: args.external_address,
                mode: ProxyMode::Http,
                check: HealthCheck::Http {
                    path: "/v1/ping".into(),
                },
                backends: nexuses.iter().map(|n| n.external_address()).collect(),
            },
            Frontend {
                name: "nexus-internal".into(),
                listen: args.internal_address,
                mode: ProxyMode::Tcp,
                check: HealthCheck::Tcp,
                backends: nexuses.iter().map(|n| n.internal_address()).collect(),
            },
        ];
        Some(
            Haproxy::start(&args.dir.join("haproxy"), &frontends)
                .context("starting HAProxy in front of the Nexus")?,
        )
    } else {
        None
    };
    // Where clients and sled agents reach Nexus: HAProxy's addresses when there is one.
    let (external_address, internal_address) = (args.external_address, args.internal_address);

    let mut sleds = Vec::new();
    for i in 0..args.sleds {
        let sled_id = SledUuid::from_str(&identity(&args.dir.join(format!("sled-{i}-id")))?)?;
        let config = halyard_sled_agent::Config {
            sled_id,
            listen_address: SocketAddr::new(args.internal_address.ip(), args.first_sled_port + i),
            nexus_address: internal_address,
            backend: SledBackend::Sim,
            hardware_threads: 32,
            physical_ram: ByteCount::from_gibibytes_u32(64),
            registration_interval_ms: 10_000,
            sim: halyard_sled_agent::SimConfig {
                start_delay_ms: 500,
                stop_delay_ms: 300,
                reboot_delay_ms: 300,
                migration_phase_delay_ms: 200,
            },
            qemu: Default::default(),
            // Simulated regions hold no data: room for many disks.
            storage: halyard_sled_agent::StorageConfig {
                capacity: ByteCount::from_gibibytes_u32(1024),
                ..Default::default()
            },
            tls: pki.files(halyard_tls::Role::Sled(sled_id))?,
        };
        sleds.push(halyard_sled_agent::Server::start(&config, log).await?);
    }
    // The network joining the QEMU sleds' virtual switches (VXLAN between them). Without it
    // (making a bridge needs root) QEMU guests reach no other sled's guests.
    let underlay = match args.qemu_sleds {
        0 => Err("no QEMU sled".to_string()),
        _ => Underlay::create().map_err(|e| e.to_string()),
    };
    match &underlay {
        Ok(underlay) => info!(log, "underlay made"; "bridge" => underlay.bridge()),
        Err(error) if args.qemu_sleds > 0 => {
            warn!(log, "no underlay: QEMU guests reach no other sled's guests"; "error" => error)
        }
        Err(_) => {}
    }
    for i in 0..args.qemu_sleds {
        let qemu = halyard_sled_agent::QemuConfig {
            underlay: underlay
                .as_ref()
                .ok()
                .map(|underlay| halyard_sled_agent::UnderlayConfig {
                    bridge: underlay.bridge().to_string(),
                    address: underlay.next_address(),
                }),
            ..Default::default()
        };
        let sled_id = SledUuid::from_str(&identity(&args.dir.join(format!("qemu-sled-{i}-id")))?)?;
        let config = halyard_sled_agent::Config {
            sled_id,
            listen_address: SocketAddr::new(
                args.internal_address.ip(),
                args.first_sled_port + args.sleds + i,
            ),
            nexus_address: internal_address,
            backend: SledBackend::Qemu,
            // Room for a few small guests (under TCG each vCPU is a busy host thread).
            hardware_threads: 4,
            physical_ram: ByteCount::from_gibibytes_u32(4),
            registration_interval_ms: 10_000,
            sim: Default::default(),
            qemu,
            // Region files (sparse qcow2) next to the database, so disks outlive a restart
            // the way the database's records of them do.
            storage: halyard_sled_agent::StorageConfig {
                capacity: ByteCount::from_gibibytes_u32(32),
                directory: Some(args.dir.join(format!("qemu-sled-{i}-regions"))),
                ..Default::default()
            },
            tls: pki.files(halyard_tls::Role::Sled(sled_id))?,
        };
        sleds.push(
            halyard_sled_agent::Server::start(&config, log)
                .await
                .context("starting a QEMU sled agent (--qemu-sleds 0 runs without)")?,
        );
    }
    wait_for_sleds(&datastore, usize::from(args.sleds + args.qemu_sleds)).await?;
    // Every external request needs a token: the default user gets a new one each start
    // (tokens are kept only as hashes, so an old one cannot be shown again).
    let (user, token) = datastore
        .default_silo_admin_token(&DEFAULT_USER.parse()?)
        .await
        .context("making the default user's token")?;

    // The banner comes last: let the start-up's log lines (written by a background thread) out
    // first, so nothing scrolls it away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!();
    let external = format!("http://{external_address}");
    println!("Halyard is running.");
    println!("  Nexus external API:  {external}");
    println!("  web console:         {external}/  (sign in with the token below)");
    println!(
        "    user \"{}\" (id {}) has a new token; for curl, the oxide CLI and the SDK:",
        user.name(),
        user.id()
    );
    println!("    export OXIDE_HOST={external}");
    println!("    export OXIDE_TOKEN={}", token.expose());
    println!("    alias hcurl='curl -H \"authorization: Bearer $OXIDE_TOKEN\"'");
    println!("    hcurl -s $OXIDE_HOST/v1/me");
    println!("    hcurl -s -X POST {external}/v1/projects -H 'content-type: application/json' \\");
    println!("      -d '{{\"name\": \"demo\", \"description\": \"\"}}'");
    println!(
        "    hcurl -s -X POST '{external}/v1/instances?project=demo' -H 'content-type: application/json' \\"
    );
    println!(
        "      -d '{{\"name\": \"web\", \"description\": \"\", \"hostname\": \"web\", \"ncpus\": 1, \"memory\": 268435456}}'"
    );
    println!("    hcurl -s '{external}/v1/instances?project=demo'");
    if args.qemu_sleds > 0 {
        println!(
            "    # on a QEMU sled (placement prefers them), the guest boots in a few seconds; its console:"
        );
        println!(
            "    hcurl -s '{external}/v1/instances/web/serial-console?project=demo&most_recent=2000' | jq -r '.data | implode'"
        );
        println!(
            "    websocat -H \"authorization: Bearer $OXIDE_TOKEN\" '{}/v1/instances/web/serial-console/stream?project=demo'   # live, and type into its shell",
            external.replacen("http", "ws", 1)
        );
        println!(
            "    # each instance gets a NIC in its project's default VPC (172.30.0.0/22); in a guest's \
             shell, ip -4 addr shows its address,"
        );
        println!(
            "    # and with another instance's: ping -c 3 ADDRESS, echo hi | nc ADDRESS 7 (echo), \
             nc ADDRESS 79 (its hostname)"
        );
    }
    // The internal APIs take only callers with a certificate from this run's CA: the
    // operator's is in the pki directory (curl checks the certificate's name, not the address).
    let operator = pki.files(halyard_tls::Role::Operator)?;
    let curl_as_operator = format!(
        "curl -s --cacert {} --cert {} --key {}",
        operator.ca_cert.display(),
        operator.cert.display(),
        operator.key.display()
    );
    let internal = internal_address;
    println!(
        "  Nexus internal API:  https://{internal} (mutual TLS; certificates in {})",
        pki_dir.display()
    );
    println!(
        "    metrics (Prometheus text): {curl_as_operator} --resolve {}:{}:{} https://{}:{}/metrics",
        halyard_tls::NEXUS_NAME,
        internal.port(),
        internal.ip(),
        halyard_tls::NEXUS_NAME,
        internal.port()
    );
    if let Some(haproxy) = &haproxy {
        println!(
            "  {} Nexus behind HAProxy (configuration {}, log {}):",
            nexuses.len(),
            haproxy.config_path().display(),
            haproxy.log_path().display()
        );
        for nexus in &nexuses {
            println!(
                "    Nexus {}: external http://{}, internal https://{}",
                nexus.id(),
                nexus.external_address(),
                nexus.internal_address()
            );
            if let Some((pid, log_path)) = nexus.process_details() {
                println!("      pid {pid}, log {}", log_path.display());
            }
        }
        println!(
            "    kill -9 one of them: HAProxy sends everything to the other, which adopts its \
             unfinished sagas once its heartbeat is 10 s old"
        );
    }
    for sled in &sleds {
        let inventory = sled.agent().inventory().await;
        let backend = match inventory.accelerator {
            Some(accelerator) => format!("qemu, {accelerator}"),
            None => inventory.backend.to_string(),
        };
        let address = sled.local_addr();
        let underlay_address = match sled.agent().registration().underlay_address {
            Some(ip) => format!(", underlay {ip}"),
            None => String::new(),
        };
        println!(
            "  sled agent {} ({backend}{underlay_address}):  https://{address}",
            sled.agent().id(),
        );
    }
    match &underlay {
        Ok(underlay) => println!(
            "  underlay:            bridge {} (ip -br link show master {}), joining the QEMU \
             sleds' network namespaces (ip netns list: hl-<sled id's first 8 hex>)",
            underlay.bridge(),
            underlay.bridge()
        ),
        Err(error) if args.qemu_sleds > 0 => {
            println!("  No underlay ({error}): QEMU guests reach no other sled's guests")
        }
        Err(_) => {}
    }
    println!("  database:            {database_url}");
    println!("    psql \"{database_url}\"");
    if let Some(patroni) = patroni {
        let config = patroni.dir().join("member-0").join("patroni.yml");
        println!(
            "    three members under Patroni (primary now: {}); their state:",
            patroni
                .primary()
                .map(|i| patroni.member_name(i).to_string())
                .unwrap_or_else(|e| e.to_string())
        );
        println!("    patronictl -c {} list", config.display());
    }
    // omdb's defaults are this environment's default addresses; say so when they differ.
    let mut omdb = "cargo run -q -p halyard-omdb --".to_string();
    if database_url != "postgresql://postgres@127.0.0.1:32221/halyard" {
        // Quoted: a multi-host URL has a `?`, which the shell would take for a pattern.
        omdb.push_str(&format!(" --db-url '{database_url}'"));
    }
    if pki_dir != std::path::Path::new(".halyard-dev/pki") {
        omdb.push_str(&format!(" --tls-dir {}", pki_dir.display()));
    }
    let nexus_flag = if internal_address.to_string() == "127.0.0.1:12221" {
        String::new()
    } else {
        format!(" --nexus-url https://{internal_address}")
    };
    println!("  omdb, to inspect it (the database, Nexus, the sled agents):");
    println!("    {omdb} db instances");
    println!("    {omdb} db check");
    println!("    {omdb} nexus sagas{nexus_flag}");
    println!("    {omdb} nexus background-tasks{nexus_flag}");
    println!("    {omdb} --help");
    if let Some(reason) = &args.no_qemu_reason {
        println!("  No QEMU sled: {reason}");
    }
    println!("Press Ctrl-C to stop everything.");

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    info!(log, "shutting down");
    for sled in sleds {
        sled.close().await?;
    }
    // After the sled agents: their namespaces' links to it are gone by now.
    drop(underlay);
    drop(haproxy);
    for nexus in nexuses {
        nexus.close().await?;
    }
    Ok(())
}

/// A UUID kept in `path`: read if present, else made and written.
fn identity(path: &Path) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        return Ok(existing.trim().to_string());
    }
    let id = uuid::Uuid::new_v4().to_string();
    std::fs::write(path, &id).with_context(|| format!("writing {}", path.display()))?;
    Ok(id)
}

async fn wait_for_sleds(datastore: &DataStore, count: usize) -> anyhow::Result<()> {
    let page = halyard_db_queries::DataPageParams {
        marker: None,
        direction: halyard_db_queries::PaginationOrder::Ascending,
        limit: std::num::NonZeroU32::new(1000).unwrap(),
    };
    for _ in 0..100 {
        if datastore.sled_list(&page).await?.len() >= count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the sled agents did not register within 10 s")
}
