//! The lifecycle load through HAProxy and two Nexus while the replicated database's primary
//! is killed: nothing is lost or done twice, every saga finishes, and the only errors clients
//! see are 503s, all inside the failover window.
//!
//! The system: a [`PatroniCluster`] (three PostgreSQL, synchronous replication) holding the
//! schema; two Nexus in this process, each with the cluster's multi-host URL (it connects to
//! whichever member is the primary); HAProxy in front of both external APIs (HTTP) and both
//! internal APIs (TCP: the sled agents' mutual TLS passes through); three simulated sled
//! agents reaching Nexus through HAProxy.
//!
//! [`CLIENTS`] clients each do full lifecycles through HAProxy (create stopped, start, wait
//! until running, stop, wait until stopped, delete), recording every request's outcome. A
//! 503 is retried after a short sleep, as a real client would (it is what Nexus answers when
//! it cannot reach the database); any other error ends the client and fails the test. After
//! [`LOAD_BEFORE_KILL`] the primary is killed (its Patroni and PostgreSQL, SIGKILL); the load
//! goes on [`LOAD_AFTER_FAILOVER`] after a new primary is up; then the clients finish the
//! lifecycle they are in and stop.
//!
//! While no primary takes connections, a request waits for one up to the pool's
//! `connection_timeout` (5 s) and is then answered 503; a saga's log writes are retried until
//! the new primary takes them, so a request that waits for its saga (create, start, stop,
//! delete) is answered once the failover is over, with its outcome.
//!
//! The failover window runs from the kill to the first 2xx answer to a request sent after it
//! (every request needs the database: authentication reads the token). 503s may still come
//! a little after that: each Nexus's pool holds connections to the dead primary, and each one
//! fails once when next used (then is dropped); and a request that was sent before the first
//! success may be answered after it. So 503s must fall between the kill and the window's end
//! plus [`SLACK`]. Durations are printed, never asserted.

use crate::authn_support::{http_client, test_user_token_in};
use halyard_common::ids::{NexusUuid, SledUuid};
use halyard_common::{ByteCount, SledBackend};
use halyard_test_db::{
    Frontend, Haproxy, HealthCheck, PatroniCluster, ProxyMode, RunSql, reserve_port,
};
use halyard_tls::Role;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Concurrent clients, each doing lifecycles back to back.
const CLIENTS: usize = 4;
/// Load before the primary is killed.
const LOAD_BEFORE_KILL: Duration = Duration::from_secs(5);
/// Load after a new primary is up.
const LOAD_AFTER_FAILOVER: Duration = Duration::from_secs(15);
/// How long after the failover window's end a 503 may still be answered: a request sent
/// before the first success, or a dead pooled connection met for the first time (each Nexus
/// pool's connections to the dead primary fail once each, on use).
const SLACK: Duration = Duration::from_secs(5);
/// How long to wait before a request answered 503 is sent again.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// How often a client waiting for a state looks at the instance.
const POLL: Duration = Duration::from_millis(50);
/// The longest any one request may take (a request still waiting for the database when the
/// failover ends returns soon after; this only stops a hang from hanging the test).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a client waits for an instance to reach a state.
const STATE_TIMEOUT: Duration = Duration::from_secs(60);
const PROJECT: &str = "load";
const DATABASE: &str = "halyard";

/// One request's outcome, as its client saw it.
#[derive(Debug)]
struct Exchange {
    sent: Instant,
    answered: Instant,
    what: String,
    /// The HTTP status, or `None` if no HTTP answer came (the error is in `error`).
    status: Option<u16>,
    error: Option<String>,
}

/// What one client did.
#[derive(Default)]
struct ClientRecord {
    exchanges: Vec<Exchange>,
    /// Lifecycles finished, each with when.
    lifecycles: Vec<Instant>,
    /// Instances created (answered 201): id -> name.
    created: BTreeMap<String, String>,
    /// Instances whose delete was answered 2xx.
    deleted: BTreeSet<String>,
    /// What ended this client early, if anything did.
    failure: Option<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    record: ClientRecord,
}

impl Client {
    /// Sends `method path` (with `body`) until it is answered other than 503; returns the
    /// status and the body. Every attempt is recorded. A request with no HTTP answer is an
    /// error (HAProxy answers 503 itself while no Nexus is up), and so is any status outside
    /// `expected`.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expected: &[u16],
    ) -> Result<Value, String> {
        let what = format!("{method} {path}");
        loop {
            let sent = Instant::now();
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .timeout(REQUEST_TIMEOUT);
            if let Some(body) = body {
                request = request.json(body);
            }
            let answer = match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    Ok((status, text))
                }
                Err(e) => Err(format!("{e:#}")),
            };
            let answered = Instant::now();
            let (status, error) = match &answer {
                Ok((status, _)) => (Some(*status), None),
                Err(e) => (None, Some(e.clone())),
            };
            self.record.exchanges.push(Exchange {
                sent,
                answered,
                what: what.clone(),
                status,
                error,
            });
            match answer {
                Ok((503, _)) => tokio::time::sleep(RETRY_AFTER).await,
                Ok((status, text)) if expected.contains(&status) => {
                    return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
                }
                Ok((status, text)) => return Err(format!("{what}: {status} {text}")),
                Err(e) => return Err(format!("{what}: no answer: {e}")),
            }
        }
    }

    async fn wait_for(&mut self, id: &str, wanted: &str) -> Result<(), String> {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let view = self
                .call(Method::GET, &format!("/v1/instances/{id}"), None, &[200])
                .await?;
            let state = view["run_state"].as_str().unwrap_or_default().to_string();
            if state == wanted {
                return Ok(());
            }
            if state == "failed" || Instant::now() > deadline {
                return Err(format!("instance {id} is {state:?}, waiting for {wanted}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn lifecycle(&mut self, name: &str) -> Result<(), String> {
        let body = json!({
            "name": name,
            "description": "",
            "hostname": name,
            "ncpus": 1,
            "memory": 256u64 << 20,
            "start": false,
        });
        let created = self
            .call(
                Method::POST,
                &format!("/v1/instances?project={PROJECT}"),
                Some(&body),
                &[201],
            )
            .await?;
        let id = created["id"]
            .as_str()
            .ok_or_else(|| format!("create {name} answered {created}"))?
            .to_string();
        self.record.created.insert(id.clone(), name.to_string());
        let path = format!("/v1/instances/{id}");
        self.call(Method::POST, &format!("{path}/start"), None, &[202])
            .await?;
        self.wait_for(&id, "running").await?;
        self.call(Method::POST, &format!("{path}/stop"), None, &[202])
            .await?;
        self.wait_for(&id, "stopped").await?;
        self.call(Method::DELETE, &path, None, &[204]).await?;
        self.record.deleted.insert(id);
        Ok(())
    }
}

fn sled_config(nexus_address: SocketAddr) -> halyard_sled_agent::Config {
    let sled_id = SledUuid::new_v4();
    halyard_sled_agent::Config {
        sled_id,
        listen_address: "127.0.0.1:0".parse().unwrap(),
        nexus_address,
        backend: SledBackend::Sim,
        hardware_threads: 8,
        physical_ram: ByteCount::from_gibibytes_u32(16),
        registration_interval_ms: 1_000,
        sim: halyard_sled_agent::SimConfig {
            start_delay_ms: 20,
            stop_delay_ms: 20,
            reboot_delay_ms: 20,
            migration_phase_delay_ms: 20,
        },
        qemu: Default::default(),
        storage: Default::default(),
        tls: halyard_tls::pki::test_pki()
            .files(Role::Sled(sled_id))
            .unwrap(),
    }
}

/// `sql` on the cluster's primary, from async code.
fn sql(cluster: &PatroniCluster, query: &str) -> String {
    tokio::task::block_in_place(|| cluster.run_sql(DATABASE, query))
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lifecycle_load_through_haproxy_survives_losing_the_primary() {
    let log = crate::context::log();
    let mut cluster = tokio::task::block_in_place(PatroniCluster::start_private)
        .unwrap_or_else(|e| panic!("{e}"));
    let url = tokio::task::block_in_place(|| {
        let url = cluster.create_database(DATABASE)?;
        cluster.psql_file(DATABASE, &halyard_schema::dbinit_sql_path())?;
        Ok::<_, halyard_test_db::ClusterError>(url)
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let mut nexuses = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let (external, internal) = (reserve_port().unwrap(), reserve_port().unwrap());
        let config = halyard_nexus::Config {
            // Longer than the failover: neither Nexus takes the other for gone meanwhile.
            nexus_gone_after_ms: 60_000,
            sled_unresponsive_after_ms: 60_000,
            ..halyard_nexus::Config::new(
                NexusUuid::new_v4(),
                url.clone(),
                external.address(),
                internal.address(),
                crate::context::tls_files(Role::Nexus),
            )
        };
        ports.push((external, internal));
        nexuses.push(halyard_nexus::Server::start(&config, &log).await.unwrap());
    }
    let (external, internal) = (reserve_port().unwrap(), reserve_port().unwrap());
    let frontends = [
        Frontend {
            name: "nexus-external".into(),
            listen: external.address(),
            mode: ProxyMode::Http,
            check: HealthCheck::Tcp,
            backends: nexuses.iter().map(|n| n.external_address()).collect(),
        },
        Frontend {
            name: "nexus-internal".into(),
            listen: internal.address(),
            mode: ProxyMode::Tcp,
            check: HealthCheck::Tcp,
            backends: nexuses.iter().map(|n| n.internal_address()).collect(),
        },
    ];
    let dir = std::env::temp_dir().join(format!("halyard-replicated-db-{}", std::process::id()));
    let proxy = Haproxy::start(&dir, &frontends).unwrap_or_else(|e| panic!("{e}"));
    let mut sleds = Vec::new();
    for _ in 0..3 {
        sleds.push(
            halyard_sled_agent::Server::start(&sled_config(internal.address()), &log)
                .await
                .unwrap(),
        );
    }
    let registered = Instant::now();
    while sql(&cluster, "SELECT count(*) FROM sled").trim() != "3" {
        assert!(
            registered.elapsed() < Duration::from_secs(30),
            "3 sleds did not register through HAProxy"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = test_user_token_in(&url).await;
    let base = format!("http://{}", external.address());
    let http = http_client(&token);
    let response = http
        .post(format!("{base}/v1/projects"))
        .json(&json!({"name": PROJECT, "description": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "creating the project");

    // The load.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let mut client = Client {
                http: http.clone(),
                base: base.clone(),
                record: ClientRecord::default(),
            };
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    match client.lifecycle(&format!("c{c}-{n}")).await {
                        Ok(()) => client.record.lifecycles.push(Instant::now()),
                        Err(e) => {
                            client.record.failure = Some(e);
                            break;
                        }
                    }
                }
                client.record
            })
        })
        .collect();

    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    let (old, killed_at) = tokio::task::block_in_place(|| {
        let old = cluster.kill_primary()?;
        Ok::<_, halyard_test_db::ClusterError>((old, Instant::now()))
    })
    .unwrap_or_else(|e| panic!("killing the primary: {e}"));
    let (new, patroni_failover) = tokio::task::block_in_place(|| cluster.wait_for_new_primary(old))
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "killed the primary {} at {:.1?} into the load; Patroni promoted {} after {:.1?}",
        cluster.member_name(old),
        killed_at - started,
        cluster.member_name(new),
        patroni_failover
    );
    tokio::time::sleep(LOAD_AFTER_FAILOVER).await;
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    for client in clients {
        records.push(client.await.unwrap());
    }
    let stopped = Instant::now();

    // Every saga finishes (one in flight at the kill retries its log writes until the new
    // primary takes them).
    let quiet = Instant::now();
    loop {
        let unfinished = sql(
            &cluster,
            "SELECT count(*) FROM saga WHERE saga_state != 'done'",
        );
        if unfinished.trim() == "0" {
            break;
        }
        assert!(
            quiet.elapsed() < Duration::from_secs(60),
            "{} saga(s) not done 60 s after the load stopped: {}",
            unfinished.trim(),
            sql(
                &cluster,
                "SELECT id, name, saga_state, current_sec FROM saga WHERE saga_state != 'done'"
            )
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What the clients saw.
    let failures: Vec<&String> = records.iter().filter_map(|r| r.failure.as_ref()).collect();
    let exchanges: Vec<&Exchange> = records.iter().flat_map(|r| &r.exchanges).collect();
    let lifecycles: Vec<Instant> = records.iter().flat_map(|r| r.lifecycles.clone()).collect();
    let first_success = exchanges
        .iter()
        .filter(|e| e.sent >= killed_at && e.status.is_some_and(|s| (200..300).contains(&s)))
        .map(|e| e.answered)
        .min()
        .expect("no request succeeded after the kill");
    let window = first_success - killed_at;
    let unavailable: Vec<&&Exchange> = exchanges.iter().filter(|e| e.status == Some(503)).collect();
    let last_503 = unavailable.iter().map(|e| e.answered).max();
    let before = lifecycles.iter().filter(|t| **t < killed_at).count();
    println!(
        "{CLIENTS} clients: {} lifecycles, {before} before the kill and {} after; {} requests; \
         {} answered 503 (the last {} after the kill)",
        lifecycles.len(),
        lifecycles.len() - before,
        exchanges.len(),
        unavailable.len(),
        last_503.map_or("-".to_string(), |t| format!("{:.1?}", t - killed_at)),
    );
    println!(
        "failover window (kill -> first 2xx to a request sent after it): {window:.1?}; \
         Patroni's new primary after {patroni_failover:.1?}; clients stopped {:.1?} after the \
         kill, sagas all done {:.1?} after that",
        stopped - killed_at,
        quiet.elapsed()
    );
    // The requests the kill caught in flight: sent before it, answered after.
    let caught: Vec<String> = exchanges
        .iter()
        .filter(|e| e.sent < killed_at && e.answered > killed_at)
        .map(|e| {
            format!(
                "{} -> {:?} after {:.1?}",
                e.what,
                e.status,
                e.answered - e.sent
            )
        })
        .collect();
    println!("in flight at the kill: {caught:#?}");
    let answered_503: Vec<String> = unavailable
        .iter()
        .map(|e| {
            format!(
                "{} at {:.1?} after the kill",
                e.what,
                e.answered.saturating_duration_since(killed_at)
            )
        })
        .collect();
    println!("answered 503: {answered_503:#?}");
    assert!(failures.is_empty(), "clients failed: {failures:#?}");
    let out_of_window: Vec<String> = exchanges
        .iter()
        .filter(|e| e.status != Some(503) && !e.status.is_some_and(|s| (200..300).contains(&s)))
        .map(|e| {
            format!(
                "{} answered {:?} {:?}, {:.1?} after the kill",
                e.what,
                e.status,
                e.error,
                e.answered.saturating_duration_since(killed_at)
            )
        })
        .chain(
            unavailable
                .iter()
                .filter(|e| e.answered < killed_at || e.answered > first_success + SLACK)
                .map(|e| {
                    format!(
                        "503 to {} answered {:.1?} after the kill",
                        e.what,
                        e.answered.saturating_duration_since(killed_at)
                    )
                }),
        )
        .collect();
    assert!(
        out_of_window.is_empty(),
        "errors other than 503s inside the failover window (+{SLACK:?}): {out_of_window:#?}"
    );
    assert!(
        lifecycles.len() > before,
        "no lifecycle finished after the failover"
    );

    // Nothing lost, nothing done twice: each instance a client created is there exactly once
    // (deleted: every client finished its last lifecycle), and no other.
    let created: BTreeMap<&String, &String> = records.iter().flat_map(|r| &r.created).collect();
    let deleted: BTreeSet<&String> = records.iter().flat_map(|r| &r.deleted).collect();
    let rows: BTreeMap<String, (String, bool)> = sql(
        &cluster,
        "SELECT id, name, time_deleted IS NOT NULL FROM instance",
    )
    .lines()
    .filter(|l| !l.is_empty())
    .map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (f[0].to_string(), (f[1].to_string(), f[2] == "t"))
    })
    .collect();
    let duplicates = sql(
        &cluster,
        "SELECT name, count(*) FROM instance GROUP BY name HAVING count(*) > 1",
    );
    assert!(
        duplicates.trim().is_empty(),
        "names created twice: {duplicates}"
    );
    for (id, name) in &created {
        match rows.get(*id) {
            None => panic!("instance {name} ({id}) was created (201) but is not in the database"),
            Some((row_name, _)) => assert_eq!(row_name, *name),
        }
    }
    for (id, (name, gone)) in &rows {
        assert!(
            created.contains_key(id),
            "instance {name} ({id}) is in the database but no client saw it created"
        );
        assert_eq!(
            *gone,
            deleted.contains(id),
            "instance {name} ({id}): deleted in the database {gone}, by its client {}",
            deleted.contains(id)
        );
    }
    assert_eq!(
        created.len(),
        deleted.len(),
        "every lifecycle ran to its delete"
    );

    // Every change of where an interface lives has told the sleds.
    for _ in 0..500 {
        if nexuses
            .iter()
            .all(|n| n.nexus().mapping_pushes_pending() == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let violations = tokio::task::block_in_place(|| {
        halyard_nexus_test_utils::invariant_violations_in(&cluster, DATABASE, &sleds)
    });
    assert!(
        violations.is_empty(),
        "invariant violations: {violations:#?}"
    );
    println!(
        "{} instances created and deleted, none twice, none lost; every saga done; invariants hold",
        created.len()
    );

    for sled in sleds {
        sled.close().await.unwrap();
    }
    for nexus in nexuses {
        nexus.close().await.unwrap();
    }
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    drop(ports);
}
