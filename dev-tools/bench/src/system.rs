//! What the control-plane benchmarks share: a whole Halyard in this process (its own
//! PostgreSQL cluster, Nexus, simulated sled agents), the lifecycle one client drives through
//! the external API, latency figures, and reading the database's own counters.

use anyhow::{Context, bail};
use halyard_common::ids::{GenericUuid, InstanceUuid, NexusUuid, SledUuid};
use halyard_common::{ByteCount, InstanceState, SledBackend};
use halyard_nexus_external_client::Client;
use halyard_nexus_external_client::types::{
    DiskBackend, DiskSource, InstanceDiskAttachment, InstanceNetworkInterfaceAttachment,
};
use halyard_test_db::PrivateCluster;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const PROJECT: &str = "bench";
/// The database Halyard uses in the benchmark's cluster.
pub const DATABASE: &str = "halyard";
/// Each benchmark instance: 1 vCPU and this much memory.
pub const INSTANCE_MEMORY_MIB: u32 = 256;
/// How long any one wait may take before the benchmark gives up.
const PATIENCE: Duration = Duration::from_secs(120);

/// A whole Halyard: PostgreSQL, Nexus and simulated sled agents, all in this process but
/// PostgreSQL, talking over loopback HTTP exactly as they do when deployed.
pub struct System {
    pg: PrivateCluster,
    pub nexus: halyard_nexus::Server,
    /// The sled agents in this process.
    pub sleds: Vec<halyard_sled_agent::Server>,
    /// The child processes hosting more sled agents (see [`System::add_sleds_in_child`]).
    pub sled_hosts: Vec<crate::sled_host::SledHost>,
    pub client: Client,
    log: slog::Logger,
}

impl System {
    /// Starts a fresh PostgreSQL cluster (the test clusters' settings: fsync, synchronous
    /// commit and full-page writes off), optionally with `pg_stat_statements` loaded, the
    /// schema in database [`DATABASE`], and Nexus on it; creates project [`PROJECT`] once
    /// sleds exist (see [`System::add_sleds`]).
    pub async fn start(pg_stat_statements: bool) -> anyhow::Result<System> {
        let mut pg = PrivateCluster::start().context("starting PostgreSQL")?;
        if pg_stat_statements {
            pg.cluster()
                .psql(
                    "postgres",
                    "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
                )
                .context("enabling pg_stat_statements")?;
            pg.stop()?;
            pg.restart()?;
        }
        let url = pg.create_database(DATABASE)?;
        if pg_stat_statements {
            pg.cluster()
                .psql(DATABASE, "CREATE EXTENSION pg_stat_statements")?;
        }
        // Nexus and sled agents log every request: a benchmark keeps none of it.
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let nexus = halyard_nexus::Server::start(
            &halyard_nexus::Config {
                // Off (an hour): the benchmark measures the lifecycles it drives, nothing else.
                instance_reincarnation_interval_ms: 3_600_000,
                // Sagas and retirements push mappings themselves; a periodic pass would only add load.
                v2p_reconciliation_interval_ms: 3_600_000,
                ..halyard_nexus::Config::new(
                    NexusUuid::new_v4(),
                    url,
                    "127.0.0.1:0".parse()?,
                    "127.0.0.1:0".parse()?,
                    halyard_tls::pki::test_pki().files(halyard_tls::Role::Nexus)?,
                )
            },
            &log,
        )
        .await?;
        let client = authenticated_client(&nexus).await?;
        Ok(System {
            pg,
            nexus,
            sleds: Vec::new(),
            sled_hosts: Vec::new(),
            client,
            log,
        })
    }

    /// Starts `count` more simulated sled agents (zero-delay VMMs), each with room for
    /// `instances` benchmark instances, and waits until all sleds are registered.
    pub async fn add_sleds(&mut self, count: usize, instances: u32) -> anyhow::Result<()> {
        self.add_sleds_with_storage(count, instances, ByteCount::from_mebibytes_u32(0))
            .await
    }

    /// [`System::add_sleds`] whose sled agents also offer `storage` bytes for disks' regions.
    pub async fn add_sleds_with_storage(
        &mut self,
        count: usize,
        instances: u32,
        storage: ByteCount,
    ) -> anyhow::Result<()> {
        for _ in 0..count {
            let sled_id = SledUuid::new_v4();
            let config = halyard_sled_agent::Config {
                sled_id,
                listen_address: "127.0.0.1:0".parse()?,
                nexus_address: self.nexus.internal_address(),
                backend: SledBackend::Sim,
                hardware_threads: instances,
                physical_ram: ByteCount::from_mebibytes_u32(INSTANCE_MEMORY_MIB)
                    .to_bytes()
                    .checked_mul(u64::from(instances))
                    .map(ByteCount::try_from)
                    .context("too much memory")??,
                // The sled agent's default.
                registration_interval_ms: 10_000,
                sim: halyard_sled_agent::SimConfig::default(),
                qemu: Default::default(),
                storage: halyard_sled_agent::StorageConfig {
                    capacity: storage,
                    ..Default::default()
                },
                tls: halyard_tls::pki::test_pki().files(halyard_tls::Role::Sled(sled_id))?,
            };
            self.sleds
                .push(halyard_sled_agent::Server::start(&config, &self.log).await?);
        }
        self.registered().await
    }

    /// Starts `count` more simulated sled agents (zero-delay VMMs, no storage), each with room
    /// for `instances` benchmark instances, in a new child process (this program run as
    /// `sled-host`), so that this process's memory is Nexus's alone; waits until all sleds are
    /// registered. Many sled agents are spread over several children.
    pub async fn add_sleds_in_child(&mut self, count: usize, instances: u32) -> anyhow::Result<()> {
        let mut left = count;
        while left > 0 {
            // A process may not open more than its limit of files (here 20,000, which the
            // container does not let root raise): each sled agent holds a few sockets.
            let these = left.min(crate::sled_host::MAX_SLEDS_A_HOST);
            let host = crate::sled_host::SledHost::spawn(
                self.nexus.internal_address(),
                these,
                self.sled_count(),
                instances,
            )
            .await?;
            self.sled_hosts.push(host);
            left -= these;
        }
        self.registered().await
    }

    /// Sled agents started so far, in this process and in children.
    pub fn sled_count(&self) -> usize {
        self.sleds.len() + self.sled_hosts.iter().map(|h| h.sleds).sum::<usize>()
    }

    /// Waits until every sled agent started is registered; creates project [`PROJECT`] the
    /// first time.
    async fn registered(&self) -> anyhow::Result<()> {
        let want = self.sled_count();
        // A sled agent registers as soon as it has started: many take a while.
        let patience = PATIENCE + Duration::from_millis(20) * want as u32;
        wait_until_within(&format!("{want} sleds to register"), patience, || async {
            Ok(self.sql_u64("SELECT count(*) FROM sled")? as usize >= want)
        })
        .await?;
        if self.sql("SELECT 1 FROM project")?.trim().is_empty() {
            self.client
                .project_create()
                .body_map(|body| {
                    body.name(PROJECT.parse::<halyard_common::Name>().expect("valid"))
                        .description(String::new())
                })
                .send()
                .await?;
        }
        Ok(())
    }

    /// Runs `query` in Halyard's database with psql (unaligned, tuples only).
    pub fn sql(&self, query: &str) -> anyhow::Result<String> {
        self.sql_in(DATABASE, query)
    }

    pub fn sql_in(&self, database: &str, query: &str) -> anyhow::Result<String> {
        let cluster = self.pg.cluster();
        Ok(tokio::task::block_in_place(|| {
            cluster.psql(database, query)
        })?)
    }

    pub fn sql_u64(&self, query: &str) -> anyhow::Result<u64> {
        let out = self.sql(query)?;
        out.trim()
            .parse()
            .with_context(|| format!("{query:?} returned {out:?}"))
    }

    pub fn cluster(&self) -> &halyard_test_db::PostgresCluster {
        self.pg.cluster()
    }

    /// The cluster's settings that decide its commit rate, for the record.
    pub fn settings(&self) -> anyhow::Result<Vec<(String, String)>> {
        let names = [
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_level",
            "shared_buffers",
            "max_connections",
        ];
        let mut settings = Vec::new();
        for name in names {
            let value = self.sql_in("postgres", &format!("SHOW {name}"))?;
            settings.push((name.to_string(), value.trim().to_string()));
        }
        Ok(settings)
    }

    /// Every invariant violation (docs/design.md) the test suites' checker finds, plus instances
    /// and VMMs that ended failed. Sled agents in child processes are not compared with the
    /// database (the database's own rules are all checked).
    pub fn violations(&self) -> anyhow::Result<Vec<String>> {
        let mut violations = tokio::task::block_in_place(|| {
            halyard_nexus_test_utils::invariant_violations_in(
                self.pg.cluster(),
                DATABASE,
                &self.sleds,
            )
        });
        let failed_instances = self.sql_u64(
            "SELECT count(*) FROM instance WHERE nexus_state = 'failed' AND time_deleted IS NULL",
        )?;
        if failed_instances > 0 {
            violations.push(format!("{failed_instances} instance(s) ended failed"));
        }
        let failed_vmms = self.sql_u64("SELECT count(*) FROM vmm WHERE state = 'failed'")?;
        if failed_vmms > 0 {
            violations.push(format!("{failed_vmms} VMM(s) ended failed"));
        }
        Ok(violations)
    }

    /// CPU time used by this process and by the PostgreSQL server so far.
    pub fn cpu(&self) -> anyhow::Result<CpuTimes> {
        let pid_file = self.pg.cluster().data_dir().join("postmaster.pid");
        let postmaster: u32 = std::fs::read_to_string(&pid_file)?
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("reading {}", pid_file.display()))?;
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let (halyard, children) = proc_stat("self")
            .map(|s| (s.own as f64 / ticks, s.children as f64 / ticks))
            .unwrap_or_default();
        let mut postgres = 0;
        if let Some(s) = proc_stat(&postmaster.to_string()) {
            // Ended backends were reaped by the postmaster: their time is its children's.
            postgres += s.own + s.children;
        }
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if let Some(s) = proc_stat(pid).filter(|s| s.parent == postmaster) {
                postgres += s.own;
            }
        }
        let sled_hosts = self
            .sled_hosts
            .iter()
            .filter_map(|h| proc_stat(&h.pid().to_string()))
            .map(|s| s.own as f64 / ticks)
            .sum();
        Ok(CpuTimes {
            halyard,
            children,
            sled_hosts,
            postgres: postgres as f64 / ticks,
        })
    }

    /// The database's counters now.
    pub fn counters(&self) -> anyhow::Result<DbCounters> {
        let row = self.sql_in(
            "postgres",
            &format!(
                "SELECT xact_commit, xact_rollback, \
                 pg_snapshot_xmax(pg_current_snapshot())::text::bigint, now() \
                 FROM pg_stat_database WHERE datname = '{DATABASE}'"
            ),
        )?;
        let (numbers, time) = row
            .trim()
            .rsplit_once('|')
            .with_context(|| format!("unexpected counters row {row:?}"))?;
        let fields: Vec<u64> = numbers
            .split('|')
            .map(|f| f.parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading counters from {row:?}"))?;
        let [commits, rollbacks, next_xid] = fields[..] else {
            bail!("unexpected counters row {row:?}");
        };
        Ok(DbCounters {
            commits,
            rollbacks,
            next_xid,
            time: time.to_string(),
            pool: self.nexus.nexus().datastore().pool_statistics(),
            cpu: self.cpu()?,
        })
    }

    pub async fn close(self) -> anyhow::Result<()> {
        for sled in self.sleds {
            sled.close().await?;
        }
        for host in self.sled_hosts {
            host.close().await?;
        }
        self.nexus.close().await?;
        drop(self.pg);
        Ok(())
    }
}

/// What `pg_stat_database` and the transaction-id counter say, and Nexus's connection pool.
#[derive(Debug, Clone)]
pub struct DbCounters {
    /// Committed transactions in Halyard's database, read-only ones included (each
    /// autocommit `SELECT` is one). PostgreSQL publishes these from each backend at most
    /// once a second, so a window's delta is exact only to about a second's worth.
    pub commits: u64,
    pub rollbacks: u64,
    /// The next transaction id of the cluster: transactions that wrote (only they take an
    /// id), exactly and at once.
    pub next_xid: u64,
    /// The database's clock, as SQL text.
    pub time: String,
    pub pool: halyard_db_queries::PoolStatistics,
    pub cpu: CpuTimes,
}

/// CPU time used so far, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct CpuTimes {
    /// This process: Nexus, the sled agents in it and the clients.
    pub halyard: f64,
    /// The processes this one started and waited for (psql, pgbench).
    pub children: f64,
    /// The child processes hosting sled agents, live.
    pub sled_hosts: f64,
    /// The PostgreSQL server: its postmaster and every backend, live or ended.
    pub postgres: f64,
}

/// C clients doing lifecycles back to back until told to stop.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<ClientRecord>>,
}

/// What one client did.
#[derive(Default)]
struct ClientRecord {
    /// Each finished lifecycle, with when it finished.
    lifecycles: Vec<(Instant, Lifecycle)>,
    errors: Vec<String>,
}

/// What a [`Load`] did.
pub struct Driven {
    /// The lifecycles that finished inside the measured window.
    pub measured: Vec<Lifecycle>,
    /// Every failed lifecycle's error, window or not.
    pub errors: Vec<String>,
    /// Every lifecycle that finished, window or not.
    pub total_lifecycles: usize,
}

impl Load {
    /// Starts `clients` clients; client `c` names its instances `<prefix><c>-<n>`. Each
    /// instance has the default network interface (what a user's instance gets).
    pub fn start(client: &Client, clients: u32, prefix: &str, poll: Duration) -> Load {
        Load::start_with(client, clients, prefix, poll, Extras::default())
    }

    /// [`Load::start`] whose instances are created with `extras`.
    pub fn start_with(
        client: &Client,
        clients: u32,
        prefix: &str,
        poll: Duration,
        extras: Extras,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let client = client.clone();
                let stop = Arc::clone(&stop);
                let prefix = format!("{prefix}{c}-");
                tokio::spawn(async move {
                    let mut record = ClientRecord::default();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let name = format!("{prefix}{n}");
                        match lifecycle(&client, &name, poll, extras).await {
                            Ok(lifecycle) => record.lifecycles.push((Instant::now(), lifecycle)),
                            Err(e) => {
                                record.errors.push(format!("{e:#}"));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                        }
                    }
                    record
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Lets every client finish the lifecycle it is in, then stops them; keeps the
    /// lifecycles that finished between `from` and `to`.
    pub async fn finish(self, from: Instant, to: Instant) -> anyhow::Result<Driven> {
        self.stop.store(true, Ordering::Relaxed);
        let mut driven = Driven {
            measured: Vec::new(),
            errors: Vec::new(),
            total_lifecycles: 0,
        };
        for task in self.tasks {
            let record = task.await?;
            driven.total_lifecycles += record.lifecycles.len();
            driven.measured.extend(
                record
                    .lifecycles
                    .iter()
                    .filter(|(at, _)| *at >= from && *at <= to)
                    .map(|(_, l)| *l),
            );
            driven.errors.extend(record.errors);
        }
        Ok(driven)
    }
}

/// Resident memory of process `pid` ("self": this one), in bytes (`VmRSS`).
pub fn resident_bytes(pid: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Raises this process's open-file limit to `want` (root may raise the hard limit too), or as
/// far as it may: thousands of sled agents hold several sockets each. Children inherit it.
pub fn raise_open_files(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

struct ProcStat {
    parent: u32,
    /// utime + stime, in clock ticks.
    own: u64,
    /// cutime + cstime: of the children it has reaped.
    children: u64,
}

/// `/proc/<pid>/stat`, or `None` if the process is gone.
fn proc_stat(pid: &str) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: fields follow the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    Some(ProcStat {
        parent: u32::try_from(field(4)?).ok()?,
        own: field(14)? + field(15)?,
        children: field(16)? + field(17)?,
    })
}

/// The timings of one full lifecycle.
#[derive(Debug, Clone, Copy)]
pub struct Lifecycle {
    pub create: Duration,
    pub start: Duration,
    pub start_to_running: Duration,
    pub stop: Duration,
    pub stop_to_stopped: Duration,
    pub delete: Duration,
    pub total: Duration,
    /// Instance views the client asked for while waiting.
    pub polls: u32,
}

/// What each benchmark instance is created with besides its size.
#[derive(Debug, Clone, Copy)]
pub struct Extras {
    /// A new blank disk of this many bytes (deleted with the instance).
    pub disk: Option<ByteCount>,
    /// The default network interface (in the project's default VPC and subnet); `false`:
    /// none.
    pub nic: bool,
}

impl Default for Extras {
    /// What a user's instance gets when it asks for nothing: one interface, no disk.
    fn default() -> Extras {
        Extras {
            disk: None,
            nic: true,
        }
    }
}

/// One lifecycle window's result.
pub struct LifecycleRate {
    pub rate: f64,
    pub whole: Figures,
    pub errors: Vec<String>,
}

impl LifecycleRate {
    pub fn line(&self, what: &str) -> String {
        format!(
            "  {what:20} {:.1} lifecycles/s, {} error(s); {}",
            self.rate,
            self.errors.len(),
            self.whole.line("whole lifecycle").trim()
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "lifecycles_per_s": round(self.rate),
            "whole_lifecycle": self.whole.json(),
            "errors": self.errors.len(),
            "first_errors": self.errors.iter().take(5).collect::<Vec<_>>(),
        })
    }
}

/// Runs `clients` lifecycle clients (instances named `<prefix><c>-<n>`, created with
/// `extras`) for a 2 s warm-up and then `window`, and measures the lifecycles that finished
/// inside the window.
pub async fn lifecycle_window(
    system: &System,
    clients: u32,
    prefix: &str,
    poll: Duration,
    window: Duration,
    extras: Extras,
) -> anyhow::Result<LifecycleRate> {
    let load = Load::start_with(&system.client, clients, prefix, poll, extras);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let from = Instant::now();
    tokio::time::sleep(window).await;
    let to = Instant::now();
    let Driven {
        measured, errors, ..
    } = load.finish(from, to).await?;
    Ok(LifecycleRate {
        rate: measured.len() as f64 / (to - from).as_secs_f64(),
        whole: Figures::of(measured.iter().map(|l| l.total)),
        errors,
    })
}

/// A client of `nexus`'s external API that acts as the benchmark's own user (with a token
/// made for it now), as every caller must.
pub async fn authenticated_client(nexus: &halyard_nexus::Server) -> anyhow::Result<Client> {
    authenticated_client_at(nexus, &format!("http://{}", nexus.external_address())).await
}

/// [`authenticated_client`] that sends its requests to `base_url` (HAProxy in front of
/// `nexus` and others on the same database) instead of `nexus` itself.
pub async fn authenticated_client_at(
    nexus: &halyard_nexus::Server,
    base_url: &str,
) -> anyhow::Result<Client> {
    let (_, token) = nexus
        .nexus()
        .default_silo_user_token(&"bench".parse()?)
        .await
        .context("making the benchmark user's token")?;
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))?;
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()?;
    Ok(Client::new_with_client(base_url, http))
}

/// Creates a benchmark instance `name` in the bench project: 1 vCPU and
/// [`INSTANCE_MEMORY_MIB`], with `disks` and `network_interfaces`, started at once if `start`.
pub async fn create_instance(
    client: &Client,
    name: &str,
    disks: Vec<InstanceDiskAttachment>,
    network_interfaces: InstanceNetworkInterfaceAttachment,
    start: bool,
) -> anyhow::Result<halyard_nexus_external_client::types::Instance> {
    Ok(client
        .instance_create()
        .project(PROJECT)
        .body_map(|body| {
            body.name(name.parse::<halyard_common::Name>().expect("a valid name"))
                .description(String::new())
                .hostname(name.to_string())
                .ncpus(1u16)
                .memory(ByteCount::from_mebibytes_u32(INSTANCE_MEMORY_MIB))
                .disks(disks)
                .network_interfaces(network_interfaces)
                .start(start)
        })
        .send()
        .await
        .with_context(|| format!("creating {name}"))?
        .into_inner())
}

/// One client's full lifecycle of a new instance `name`: create (stopped), start, wait until
/// running, stop, wait until stopped, delete. Waiting is polling the instance's view every
/// `poll` (what a user's script does).
///
/// The instance is created with `extras`: a new blank disk (which its delete deletes), and
/// the default network interface or none.
pub async fn lifecycle(
    client: &Client,
    name: &str,
    poll: Duration,
    extras: Extras,
) -> anyhow::Result<Lifecycle> {
    let network_interfaces = if extras.nic {
        InstanceNetworkInterfaceAttachment::DefaultDualStack
    } else {
        InstanceNetworkInterfaceAttachment::None
    };
    let disks: Vec<InstanceDiskAttachment> = extras
        .disk
        .into_iter()
        .map(|size| InstanceDiskAttachment::Create {
            name: format!("{name}-disk").parse().expect("a valid name"),
            description: String::new(),
            disk_backend: DiskBackend::Distributed(DiskSource::Blank {
                block_size: halyard_common::BlockSize::try_from(4096u32).expect("a block size"),
            }),
            size,
        })
        .collect();
    let began = Instant::now();
    let created = create_instance(client, name, disks, network_interfaces, false).await?;
    let create = began.elapsed();
    let id = created.id;
    let mut polls = 0;

    let start_sent = Instant::now();
    let view = client
        .instance_start()
        .instance(by_id(id))
        .send()
        .await
        .with_context(|| format!("starting {name}"))?
        .into_inner();
    let start = start_sent.elapsed();
    wait_for_state(
        client,
        id,
        view.run_state,
        InstanceState::Running,
        poll,
        &mut polls,
    )
    .await?;
    let start_to_running = start_sent.elapsed();

    let stop_sent = Instant::now();
    let view = client
        .instance_stop()
        .instance(by_id(id))
        .send()
        .await
        .with_context(|| format!("stopping {name}"))?
        .into_inner();
    let stop = stop_sent.elapsed();
    wait_for_state(
        client,
        id,
        view.run_state,
        InstanceState::Stopped,
        poll,
        &mut polls,
    )
    .await?;
    let stop_to_stopped = stop_sent.elapsed();

    let delete_sent = Instant::now();
    client
        .instance_delete()
        .instance(by_id(id))
        .send()
        .await
        .with_context(|| format!("deleting {name}"))?;
    let delete = delete_sent.elapsed();
    Ok(Lifecycle {
        create,
        start,
        start_to_running,
        stop,
        stop_to_stopped,
        delete,
        total: began.elapsed(),
        polls,
    })
}

pub fn by_id(id: InstanceUuid) -> halyard_common::NameOrId {
    halyard_common::NameOrId::from(id.into_untyped_uuid())
}

pub async fn wait_for_state(
    client: &Client,
    id: InstanceUuid,
    mut state: InstanceState,
    wanted: InstanceState,
    poll: Duration,
    polls: &mut u32,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while state != wanted {
        if matches!(state, InstanceState::Failed | InstanceState::Destroyed) {
            bail!("instance {id} is {state}, waiting for {wanted}");
        }
        if Instant::now() > deadline {
            bail!("instance {id} still {state} after {PATIENCE:?}, waiting for {wanted}");
        }
        tokio::time::sleep(poll).await;
        *polls += 1;
        state = client
            .instance_view()
            .instance(by_id(id))
            .send()
            .await
            .with_context(|| format!("viewing instance {id}"))?
            .into_inner()
            .run_state;
    }
    Ok(())
}

pub async fn wait_until<F, Fut>(what: &str, check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    wait_until_within(what, PATIENCE, check).await
}

pub async fn wait_until_within<F, Fut>(
    what: &str,
    patience: Duration,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + patience;
    while !check().await? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Latency figures of one operation, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Figures {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub max: f64,
}

impl Figures {
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Figures {
        let mut ms: Vec<f64> = samples
            .into_iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        if ms.is_empty() {
            return Figures::default();
        }
        ms.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample at or above the given fraction of them.
        let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Figures {
            n: ms.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            max: ms[ms.len() - 1],
        }
    }

    pub fn line(&self, what: &str) -> String {
        format!(
            "  {what:<20} p50 {:>7.1} ms   p99 {:>7.1} ms   mean {:>7.1} ms   max {:>7.1} ms   (n={})",
            self.p50, self.p99, self.mean, self.max, self.n
        )
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "n": self.n,
            "p50_ms": round(self.p50),
            "p99_ms": round(self.p99),
            "mean_ms": round(self.mean),
            "max_ms": round(self.max),
        })
    }
}

pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
