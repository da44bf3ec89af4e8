//! What operators see: both services' `/metrics` after a full instance lifecycle, and one
//! external request's id followed from Nexus's log into the sled agent's.

use crate::context::{SLED_RAM_GIB, SLED_THREADS, TestContext};
use halyard_common::ids::{NexusUuid, SledUuid};
use halyard_common::{ByteCount, InstanceState, SledBackend};
use halyard_test_db::TestDatabase;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A scrape: each sample's series (`name{labels}`, labels as the exposition prints them) and
/// its value.
type Samples = BTreeMap<String, f64>;

/// `GET /metrics` as the operator from the server at `address` with `server_name`'s
/// certificate.
async fn scrape(address: std::net::SocketAddr, server_name: &str) -> Samples {
    let response = crate::context::operator_http(server_name)
        .get(format!("https://{address}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// How much `series` grew from `before` to `after` (a series not yet present counts as 0).
fn grew(before: &Samples, after: &Samples, series: &str) -> f64 {
    after.get(series).copied().unwrap_or_default() - before.get(series).copied().unwrap_or_default()
}

/// Every series whose value changed, with its change (for failure messages).
fn changes(before: &Samples, after: &Samples) -> String {
    after
        .iter()
        .filter_map(|(series, value)| {
            let delta = value - before.get(series).copied().unwrap_or_default();
            (delta != 0.0).then(|| format!("  {series} {delta:+}"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn call(
    http: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut request = http.request(method, format!("{base}{path}"));
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap()
}

async fn run_state(http: &reqwest::Client, base: &str) -> String {
    let view: Value = call(http, base, Method::GET, "/v1/instances/vm?project=p", None)
        .await
        .json()
        .await
        .unwrap();
    view["run_state"].as_str().unwrap().to_string()
}

async fn wait_for_run_state(http: &reqwest::Client, base: &str, state: &str) {
    for _ in 0..1000 {
        if run_state(http, base).await == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the instance never became {state}");
}

#[tokio::test]
async fn metrics_count_exactly_what_one_lifecycle_did() {
    let ctx = TestContext::with_sleds(1).await;
    let nexus = ctx.server().internal_address();
    let sled = ctx.sleds[0].local_addr();
    let base = format!("http://{}", ctx.server().external_address());
    let http = crate::authn_support::http_client(&ctx.token);
    let sled_id = ctx.sleds[0].agent().id();

    let nexus_before = scrape(nexus, halyard_tls::NEXUS_NAME).await;
    let sled_before = scrape(sled, halyard_tls::SLED_AGENT_NAME).await;

    // One lifecycle through the external API: project, instance, start, stop, delete.
    let status = call(
        &http,
        &base,
        Method::POST,
        "/v1/projects",
        Some(json!({"name": "p", "description": ""})),
    )
    .await
    .status();
    assert_eq!(status, 201);
    let body = json!({"name": "vm", "description": "", "hostname": "vm", "ncpus": 2, "memory": 1u64 << 30, "start": false});
    let status = call(
        &http,
        &base,
        Method::POST,
        "/v1/instances?project=p",
        Some(body),
    )
    .await
    .status();
    assert_eq!(status, 201);
    let status = call(
        &http,
        &base,
        Method::POST,
        "/v1/instances/vm/start?project=p",
        None,
    )
    .await
    .status();
    assert_eq!(status, 202);
    wait_for_run_state(&http, &base, "running").await;

    // While it runs: one running sim VMM, and its reservation on the sled.
    let running = scrape(nexus, halyard_tls::NEXUS_NAME).await;
    assert_eq!(
        running[r#"halyard_vmms{backend="sim",state="running"}"#],
        1.0
    );
    let sled_label = format!(r#"backend="sim",kind="reserved",sled_id="{sled_id}""#);
    assert_eq!(
        running[&format!("halyard_sled_hardware_threads{{{sled_label}}}")],
        2.0
    );
    assert_eq!(
        running[&format!("halyard_sled_physical_ram_bytes{{{sled_label}}}")],
        f64::from(1u32 << 30)
    );
    assert_eq!(
        running[&format!(
            r#"halyard_sled_hardware_threads{{backend="sim",kind="usable",sled_id="{sled_id}"}}"#
        )],
        f64::from(SLED_THREADS)
    );
    let sled_running = scrape(sled, halyard_tls::SLED_AGENT_NAME).await;
    assert_eq!(
        sled_running[r#"halyard_sled_vmms{backend="sim",state="running"}"#],
        1.0
    );

    let status = call(
        &http,
        &base,
        Method::POST,
        "/v1/instances/vm/stop?project=p",
        None,
    )
    .await
    .status();
    assert_eq!(status, 202);
    wait_for_run_state(&http, &base, "stopped").await;
    let status = call(
        &http,
        &base,
        Method::DELETE,
        "/v1/instances/vm?project=p",
        None,
    )
    .await
    .status();
    assert_eq!(status, 204);
    // The stopped VMM's retirement (unregistering it from the sled agent) may trail the
    // stopped state; wait until nothing is in flight.
    ctx.assert_quiet_and_consistent().await;

    let nexus_after = scrape(nexus, halyard_tls::NEXUS_NAME).await;
    let sled_after = scrape(sled, halyard_tls::SLED_AGENT_NAME).await;
    let nexus_changes = changes(&nexus_before, &nexus_after);
    let sled_changes = changes(&sled_before, &sled_after);
    let external = |endpoint: &str, status: u16| {
        format!(
            r#"halyard_http_requests_total{{api="external",endpoint="{endpoint}",status="{status}"}}"#
        )
    };
    for (series, expected) in [
        (external("POST /v1/projects", 201), 1.0),
        (external("POST /v1/instances", 201), 1.0),
        (external("POST /v1/instances/{instance}/start", 202), 1.0),
        (external("POST /v1/instances/{instance}/stop", 202), 1.0),
        (external("DELETE /v1/instances/{instance}", 204), 1.0),
        (r#"halyard_http_request_duration_seconds_count{api="external",endpoint="POST /v1/instances/{instance}/start"}"#.to_string(), 1.0),
        // create, start and delete each ran one saga, and each succeeded; none was resumed or
        // undone.
        (r#"halyard_sagas_started_total{saga="instance-create"}"#.to_string(), 1.0),
        (r#"halyard_sagas_started_total{saga="instance-start"}"#.to_string(), 1.0),
        (r#"halyard_sagas_started_total{saga="instance-delete"}"#.to_string(), 1.0),
        (r#"halyard_sagas_finished_total{outcome="succeeded",saga="instance-create"}"#.to_string(), 1.0),
        (r#"halyard_sagas_finished_total{outcome="succeeded",saga="instance-start"}"#.to_string(), 1.0),
        (r#"halyard_sagas_finished_total{outcome="succeeded",saga="instance-delete"}"#.to_string(), 1.0),
        (r#"halyard_saga_duration_seconds_count{outcome="succeeded",saga="instance-start"}"#.to_string(), 1.0),
    ] {
        assert_eq!(
            grew(&nexus_before, &nexus_after, &series),
            expected,
            "{series}; what changed in Nexus's metrics:\n{nexus_changes}"
        );
    }
    // Every node of the start saga ran its action exactly once, and nothing was undone.
    let dag = halyard_nexus::app::sagas::create_saga_dag::<
        halyard_nexus::app::sagas::instance_start::SagaInstanceStart,
    >(halyard_nexus::app::sagas::instance_start::Params {
        instance_id: halyard_common::ids::InstanceUuid::new_v4(),
    })
    .unwrap();
    for node in dag.get_nodes() {
        let series = format!(
            r#"halyard_saga_node_duration_seconds_count{{kind="action",node="{}",saga="instance-start"}}"#,
            node.name().as_ref()
        );
        assert_eq!(
            grew(&nexus_before, &nexus_after, &series),
            1.0,
            "{series}\n{nexus_changes}"
        );
    }
    assert!(
        !nexus_changes.contains("halyard_saga_undos_total")
            && !nexus_changes.contains("outcome=\"unwound\"")
            && !nexus_changes.contains("halyard_transient_errors_total"),
        "nothing failed, so nothing was undone or retried:\n{nexus_changes}"
    );
    for stuck_or_live in [
        "halyard_sagas_stuck".to_string(),
        r#"halyard_vmms{backend="sim",state="running"}"#.to_string(),
        format!("halyard_sled_hardware_threads{{{sled_label}}}"),
    ] {
        assert_eq!(
            nexus_after.get(&stuck_or_live).copied().unwrap_or_default(),
            0.0,
            "{stuck_or_live}"
        );
    }

    // The sled agent: registered the VMM once, was asked to run it once (by the start saga)
    // and to stop it once, unregistered it once.
    let sled_api = |endpoint: &str, status: u16| {
        format!(
            r#"halyard_http_requests_total{{api="sled-agent",endpoint="{endpoint}",status="{status}"}}"#
        )
    };
    for (series, expected) in [
        (sled_api("PUT /vmms/{propolis_id}", 200), 1.0),
        (sled_api("PUT /vmms/{propolis_id}/state", 200), 2.0),
        (sled_api("DELETE /vmms/{propolis_id}", 204), 1.0),
    ] {
        assert_eq!(
            grew(&sled_before, &sled_after, &series),
            expected,
            "{series}; what changed in the sled agent's metrics:\n{sled_changes}"
        );
    }
    // Every report the sled agent counts as accepted is a report Nexus counts as answered, and
    // none was refused or retried.
    let accepted = grew(
        &sled_before,
        &sled_after,
        r#"halyard_sled_vmm_reports_total{outcome="accepted"}"#,
    );
    let answered = grew(
        &nexus_before,
        &nexus_after,
        r#"halyard_http_requests_total{api="internal",endpoint="PUT /vmms/{propolis_id}",status="204"}"#,
    );
    assert!(
        accepted >= 2.0,
        "at least running and destroyed were reported\n{sled_changes}"
    );
    assert_eq!(
        accepted, answered,
        "sled agent:\n{sled_changes}\nNexus:\n{nexus_changes}"
    );
    assert!(
        !sled_changes.contains(r#"outcome="refused""#)
            && !sled_changes.contains(r#"outcome="retried""#),
        "{sled_changes}"
    );
    assert_eq!(
        sled_after
            .get(r#"halyard_sled_vmms{backend="sim",state="running"}"#)
            .copied()
            .unwrap_or_default(),
        0.0
    );
    assert!(sled_after[r#"halyard_sled_registrations_total{outcome="accepted"}"#] >= 1.0);
}

/// A logger that writes what the binaries print (slog-term's full format) to `path`, at
/// info and above as they do by default, synchronously so the test can read it right away.
fn file_logger(path: &Path, component: &'static str) -> slog::Logger {
    use slog::Drain;
    let file = std::fs::File::create(path).unwrap();
    let decorator = slog_term::PlainSyncDecorator::new(file);
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let drain = slog::LevelFilter::new(drain, slog::Level::Info).fuse();
    slog::Logger::root(drain, slog::o!("component" => component))
}

#[tokio::test]
async fn a_start_requests_id_is_in_the_nexus_and_sled_agent_logs() {
    let db = TestDatabase::new();
    let dir = std::env::temp_dir().join(format!(
        "halyard-request-id-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let nexus_log_path = dir.join("nexus.log");
    let sled_log_path = dir.join("sled-agent.log");
    let nexus = halyard_nexus::Server::start(
        &halyard_nexus::Config {
            retirement_interval_ms: 200,
            heartbeat_interval_ms: 200,
            ..halyard_nexus::Config::new(
                NexusUuid::new_v4(),
                db.url().to_string(),
                "127.0.0.1:0".parse().unwrap(),
                "127.0.0.1:0".parse().unwrap(),
                crate::context::tls_files(crate::context::Role::Nexus),
            )
        },
        &file_logger(&nexus_log_path, "nexus"),
    )
    .await
    .unwrap();
    let sled_id = SledUuid::new_v4();
    let sled = halyard_sled_agent::Server::start(
        &halyard_sled_agent::Config {
            sled_id,
            listen_address: "127.0.0.1:0".parse().unwrap(),
            nexus_address: nexus.internal_address(),
            backend: SledBackend::Sim,
            hardware_threads: SLED_THREADS,
            physical_ram: ByteCount::from_gibibytes_u32(SLED_RAM_GIB),
            registration_interval_ms: 1000,
            sim: Default::default(),
            qemu: Default::default(),
            storage: Default::default(),
            tls: crate::context::tls_files(crate::context::Role::Sled(sled_id)),
        },
        &file_logger(&sled_log_path, "sled-agent"),
    )
    .await
    .unwrap();
    let base = format!("http://{}", nexus.external_address());
    let token = crate::authn_support::test_user_token(nexus.nexus()).await;
    let http = crate::authn_support::http_client(&token);
    for _ in 0..500 {
        if !nexus
            .nexus()
            .datastore()
            .sled_list_all()
            .await
            .unwrap()
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    call(
        &http,
        &base,
        Method::POST,
        "/v1/projects",
        Some(json!({"name": "p", "description": ""})),
    )
    .await;
    let body = json!({"name": "vm", "description": "", "hostname": "vm", "ncpus": 1, "memory": 1u64 << 30, "start": false});
    assert_eq!(
        call(
            &http,
            &base,
            Method::POST,
            "/v1/instances?project=p",
            Some(body)
        )
        .await
        .status(),
        201
    );

    let response = call(
        &http,
        &base,
        Method::POST,
        "/v1/instances/vm/start?project=p",
        None,
    )
    .await;
    assert_eq!(response.status(), 202);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    wait_for_run_state(&http, &base, &InstanceState::Running.to_string()).await;

    let nexus_log = std::fs::read_to_string(&nexus_log_path).unwrap();
    let sled_log = std::fs::read_to_string(&sled_log_path).unwrap();
    let lines_with_id = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(&request_id))
            .map(str::to_string)
            .collect()
    };
    let in_nexus = lines_with_id(&nexus_log);
    let in_sled = lines_with_id(&sled_log);
    // Nexus: the request itself, and the start saga it created.
    assert!(
        in_nexus
            .iter()
            .any(|l| l.contains("request completed") && l.contains("/start")),
        "Nexus's log has no completed start request {request_id}:\n{nexus_log}"
    );
    assert!(
        in_nexus
            .iter()
            .any(|l| l.contains("saga created") && l.contains("instance-start")),
        "Nexus's log does not tie {request_id} to its saga:\n{nexus_log}"
    );
    // The sled agent: the VMM registration that the saga made for that request.
    assert!(
        in_sled
            .iter()
            .any(|l| l.contains("request completed") && l.contains("PUT") && l.contains("/vmms/")),
        "the sled agent's log has no line naming {request_id}:\n{sled_log}"
    );
    // The id names that request only: another request's lines do not carry it.
    assert!(
        !sled_log
            .lines()
            .any(|l| l.contains("GET") && l.contains(&request_id)),
        "{sled_log}"
    );
    // Routine traffic stays out of the info log: sled registrations and state reports.
    assert!(
        !nexus_log
            .lines()
            .any(|l| l.contains("request completed") && l.contains("/sled-agents/")),
        "registrations should log at debug:\n{nexus_log}"
    );
    for log in [&nexus_log, &sled_log] {
        assert!(
            !log.contains("accepted connection") && !log.contains("saga create, dag"),
            "connections and steno's saga DAGs should log at debug:\n{log}"
        );
    }

    // omdb's view of the saga names the same request.
    let saga_id = nexus
        .nexus()
        .datastore()
        .saga_list(true)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.name == "instance-start")
        .unwrap()
        .id();
    let started_by = halyard_observability::request_id::from_saga_dag(
        &nexus
            .nexus()
            .datastore()
            .saga_fetch(saga_id)
            .await
            .unwrap()
            .dag,
    );
    assert_eq!(started_by.as_deref(), Some(request_id.as_str()));

    sled.close().await.unwrap();
    nexus.close().await.unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
