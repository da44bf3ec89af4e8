//! `halyard-bench ha`: instance lifecycles per second with one Nexus and with two behind
//! HAProxy, on one PostgreSQL and on a replicated one (Patroni, synchronous replication), all
//! in one run (see the crate docs).

use crate::system::{Load, authenticated_client_at, wait_until};
use anyhow::{Context, bail};
use halyard_common::ids::{NexusUuid, SledUuid};
use halyard_common::{ByteCount, SledBackend};
use halyard_db_queries::{DataPageParams, PaginationOrder};
use halyard_nexus_external_client::Client;
use halyard_test_db::{
    Frontend, Haproxy, HealthCheck, PatroniCluster, PrivateCluster, ProxyMode, ReservedPort,
    RunSql, reserve_port,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
pub struct HaArgs {
    /// Concurrent clients (C), each doing lifecycles back to back, in every window.
    #[arg(long, default_value_t = 16)]
    pub clients: u32,
    /// Simulated sled agents (K) of each database's system, zero-delay VMMs.
    #[arg(long, default_value_t = 4)]
    pub sleds: usize,
    /// Measured time of each window, after its warm-up.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Lifecycles run before each window's measuring starts.
    #[arg(long, default_value_t = 3)]
    pub warmup_secs: u64,
    /// How often a client waiting for running or stopped looks at the instance.
    #[arg(long, default_value_t = 10)]
    pub poll_ms: u64,
    /// Skip window (d), two Nexus on the replicated database.
    #[arg(long)]
    pub skip_two_on_patroni: bool,
}

const DATABASE: &str = "halyard";
const PROJECT: &str = crate::system::PROJECT;

/// Two Nexus' worth of addresses behind one HAProxy, the first Nexus running, sled agents
/// reaching Nexus through HAProxy's internal frontend; clients go through its external one.
struct Stack {
    url: String,
    nexuses: Vec<halyard_nexus::Server>,
    /// The second Nexus's external and internal ports, until it starts.
    second: Option<(ReservedPort, ReservedPort)>,
    proxy: Option<Haproxy>,
    dir: PathBuf,
    sleds: Vec<halyard_sled_agent::Server>,
    client: Client,
    log: slog::Logger,
}

fn nexus_config(
    url: &str,
    external: &ReservedPort,
    internal: &ReservedPort,
) -> anyhow::Result<halyard_nexus::Config> {
    Ok(halyard_nexus::Config {
        // Off (an hour): the benchmark measures the lifecycles it drives, nothing else.
        instance_reincarnation_interval_ms: 3_600_000,
        // Sagas and retirements push mappings themselves; a periodic pass would only add load.
        v2p_reconciliation_interval_ms: 3_600_000,
        ..halyard_nexus::Config::new(
            NexusUuid::new_v4(),
            url.to_string(),
            external.address(),
            internal.address(),
            halyard_tls::pki::test_pki().files(halyard_tls::Role::Nexus)?,
        )
    })
}

impl Stack {
    /// HAProxy over two Nexus addresses, the first Nexus on `url` (which holds the schema),
    /// `sleds` sled agents each with room for `instances` instances, and the project.
    async fn start(url: &str, name: &str, sleds: usize, instances: u32) -> anyhow::Result<Stack> {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let ports = [
            reserve_port()?,
            reserve_port()?,
            reserve_port()?,
            reserve_port()?,
        ];
        let [e0, i0, e1, i1] = ports;
        let (external, internal) = (reserve_port()?, reserve_port()?);
        let frontends = [
            Frontend {
                name: "nexus-external".into(),
                listen: external.address(),
                mode: ProxyMode::Http,
                check: HealthCheck::Tcp,
                backends: vec![e0.address(), e1.address()],
            },
            Frontend {
                name: "nexus-internal".into(),
                listen: internal.address(),
                mode: ProxyMode::Tcp,
                check: HealthCheck::Tcp,
                backends: vec![i0.address(), i1.address()],
            },
        ];
        let nexus = halyard_nexus::Server::start(&nexus_config(url, &e0, &i0)?, &log).await?;
        let dir =
            std::env::temp_dir().join(format!("halyard-bench-ha-{name}-{}", std::process::id()));
        let proxy = Haproxy::start(&dir, &frontends).context("starting HAProxy")?;
        let client =
            authenticated_client_at(&nexus, &format!("http://{}", external.address())).await?;
        let mut stack = Stack {
            url: url.to_string(),
            nexuses: vec![nexus],
            second: Some((e1, i1)),
            proxy: Some(proxy),
            dir,
            sleds: Vec::new(),
            client,
            log,
        };
        for _ in 0..sleds {
            let sled_id = SledUuid::new_v4();
            let config = halyard_sled_agent::Config {
                sled_id,
                listen_address: "127.0.0.1:0".parse()?,
                nexus_address: internal.address(),
                backend: SledBackend::Sim,
                hardware_threads: instances,
                physical_ram: ByteCount::from_mebibytes_u32(crate::system::INSTANCE_MEMORY_MIB)
                    .to_bytes()
                    .checked_mul(u64::from(instances))
                    .map(ByteCount::try_from)
                    .context("too much memory")??,
                registration_interval_ms: 10_000,
                sim: halyard_sled_agent::SimConfig::default(),
                qemu: Default::default(),
                storage: Default::default(),
                tls: halyard_tls::pki::test_pki().files(halyard_tls::Role::Sled(sled_id))?,
            };
            stack
                .sleds
                .push(halyard_sled_agent::Server::start(&config, &stack.log).await?);
        }
        let datastore = stack.nexuses[0].nexus().datastore().clone();
        wait_until(&format!("{sleds} sleds to register"), || {
            let datastore = datastore.clone();
            async move {
                let page = DataPageParams {
                    marker: None,
                    direction: PaginationOrder::Ascending,
                    limit: std::num::NonZeroU32::new(10_000).expect("not zero"),
                };
                Ok(datastore.sled_list(&page).await?.len() >= sleds)
            }
        })
        .await?;
        stack
            .client
            .project_create()
            .body_map(|body| {
                body.name(PROJECT.parse::<halyard_common::Name>().expect("valid"))
                    .description(String::new())
            })
            .send()
            .await?;
        drop((external, internal));
        Ok(stack)
    }

    /// Starts the second Nexus and waits until HAProxy sends requests to it.
    async fn add_second_nexus(&mut self) -> anyhow::Result<()> {
        let (external, internal) = self.second.take().context("two Nexus already")?;
        let nexus = halyard_nexus::Server::start(
            &nexus_config(&self.url, &external, &internal)?,
            &self.log,
        )
        .await?;
        self.nexuses.push(nexus);
        // HAProxy's checks run every 500 ms and one success brings a backend up.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }

    /// C clients for a warm-up and then the measured window; lifecycles per second.
    async fn measure(&self, args: &HaArgs, prefix: &str) -> anyhow::Result<f64> {
        let load = Load::start(
            &self.client,
            args.clients,
            prefix,
            Duration::from_millis(args.poll_ms),
        );
        tokio::time::sleep(Duration::from_secs(args.warmup_secs)).await;
        let from = Instant::now();
        tokio::time::sleep(Duration::from_secs(args.duration_secs)).await;
        let to = Instant::now();
        let driven = load.finish(from, to).await?;
        if !driven.errors.is_empty() {
            bail!(
                "{} lifecycle(s) failed, e.g. {}",
                driven.errors.len(),
                driven.errors[0]
            );
        }
        Ok(driven.measured.len() as f64 / (to - from).as_secs_f64())
    }

    async fn close(mut self) -> anyhow::Result<()> {
        for sled in self.sleds.drain(..) {
            sled.close().await?;
        }
        for nexus in self.nexuses.drain(..) {
            nexus.close().await?;
        }
        drop(self.proxy.take());
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

fn check(cluster: &impl RunSql, stack: &Stack) -> anyhow::Result<()> {
    let violations = tokio::task::block_in_place(|| {
        halyard_nexus_test_utils::invariant_violations_in(cluster, DATABASE, &stack.sleds)
    });
    if !violations.is_empty() {
        bail!("invariant violations: {violations:#?}");
    }
    Ok(())
}

fn settings(cluster: &impl RunSql) -> anyhow::Result<String> {
    let mut out = Vec::new();
    for name in ["fsync", "synchronous_commit", "synchronous_standby_names"] {
        let value =
            tokio::task::block_in_place(|| cluster.run_sql(DATABASE, &format!("SHOW {name}")))?;
        out.push(format!("{name}={:?}", value.trim()));
    }
    Ok(out.join(" "))
}

pub async fn run(args: HaArgs) -> anyhow::Result<()> {
    if args.clients == 0 || args.sleds == 0 || args.duration_secs == 0 {
        bail!("--clients, --sleds and --duration-secs must be at least 1");
    }
    println!(
        "ha: C={} clients, K={} simulated sleds (zero-delay VMMs) per database, {} s measured \
         after {} s warm-up per window, clients poll every {} ms, {} host CPU(s); every window's \
         clients go through HAProxy (one Nexus: the other backend is down)",
        args.clients,
        args.sleds,
        args.duration_secs,
        args.warmup_secs,
        args.poll_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // One PostgreSQL: the test clusters' settings (fsync off), but synchronous_commit on for
    // Halyard's database, as on the replicated cluster, so that the only difference left is
    // the wait for the synchronous standby.
    let pg = PrivateCluster::start().context("starting PostgreSQL")?;
    let url = pg.create_database(DATABASE)?;
    pg.cluster().psql(
        "postgres",
        &format!("ALTER DATABASE {DATABASE} SET synchronous_commit = on"),
    )?;
    let mut stack = Stack::start(&url, "single", args.sleds, args.clients).await?;
    println!("(a, b) one PostgreSQL: {}", settings(pg.cluster())?);
    let one_single = stack.measure(&args, "a").await?;
    println!("(a) one Nexus, one PostgreSQL:              {one_single:>8.1} lifecycles/s");
    stack.add_second_nexus().await?;
    let two_single = stack.measure(&args, "b").await?;
    println!("(b) two Nexus (HAProxy), one PostgreSQL:    {two_single:>8.1} lifecycles/s");
    check(pg.cluster(), &stack)?;
    stack.close().await?;
    drop(pg);

    let patroni = tokio::task::block_in_place(PatroniCluster::start_private)
        .context("starting the Patroni cluster")?;
    let url = tokio::task::block_in_place(|| {
        let url = patroni.create_database(DATABASE)?;
        patroni.psql_file(DATABASE, &halyard_schema::dbinit_sql_path())?;
        Ok::<_, halyard_test_db::ClusterError>(url)
    })?;
    let mut stack = Stack::start(&url, "patroni", args.sleds, args.clients).await?;
    println!("(c, d) Patroni, three members: {}", settings(&patroni)?);
    let one_patroni = stack.measure(&args, "c").await?;
    println!("(c) one Nexus, Patroni (sync replication):  {one_patroni:>8.1} lifecycles/s");
    let two_patroni = if args.skip_two_on_patroni {
        None
    } else {
        stack.add_second_nexus().await?;
        let rate = stack.measure(&args, "d").await?;
        println!("(d) two Nexus (HAProxy), Patroni:           {rate:>8.1} lifecycles/s");
        Some(rate)
    };
    check(&patroni, &stack)?;
    stack.close().await?;
    drop(patroni);

    println!(
        "two Nexus / one, one PostgreSQL (b/a):      {:>8.2}",
        two_single / one_single
    );
    println!(
        "sync replication / single (c/a):            {:>8.2}",
        one_patroni / one_single
    );
    if let Some(d) = two_patroni {
        println!(
            "two Nexus / one, Patroni (d/c):             {:>8.2}",
            d / one_patroni
        );
    }
    println!("invariant checker: no violations in either database");
    Ok(())
}
