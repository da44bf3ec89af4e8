//! Bad input and unreachable services: one line on stderr naming what omdb tried to reach or
//! find, a non-zero exit, no panic. And where the database URL comes from.

use crate::context::{Run, omdb};
use halyard_test_db::TestDatabase;

/// Asserts omdb failed with exit 1 and one stderr line that starts with `prefix`; returns it.
fn one_line_error(run: &Run, prefix: &str) -> String {
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "{run:?}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {run:?}");
    assert!(
        lines[0].starts_with(prefix),
        "expected {prefix:?}, got {:?}",
        lines[0]
    );
    assert!(!run.stderr.contains("panicked"), "{run:?}");
    lines[0].to_string()
}

#[tokio::test]
async fn an_unreachable_database_is_one_line_naming_it() {
    let url = "postgresql://postgres@127.0.0.1:1/x";
    for args in [
        &["--db-url", url, "db", "instances"][..],
        &["db", "--db-url", url, "sagas"],
        &["db", "check", "--db-url", url],
    ] {
        let line = one_line_error(
            &omdb(args, &[]).await,
            &format!("omdb: cannot reach the database at {url}: "),
        );
        assert!(line.contains("refused"), "{line}");
    }
    // A password in the URL is not printed.
    let line = one_line_error(
        &omdb(
            &[
                "db",
                "instances",
                "--db-url",
                "postgresql://me:s3cret@127.0.0.1:1/x",
            ],
            &[],
        )
        .await,
        "omdb: cannot reach the database at postgresql://me:****@127.0.0.1:1/x: ",
    );
    assert!(!line.contains("s3cret"));
}

#[tokio::test]
async fn a_missing_database_or_one_without_the_schema_says_so() {
    let db = TestDatabase::new();
    let missing = format!("{}_nope", db.url());
    let line = one_line_error(
        &omdb(&["--db-url", &missing, "db", "sleds"], &[]).await,
        &format!("omdb: cannot reach the database at {missing}: "),
    );
    assert!(line.contains("does not exist"), "{line}");

    let empty = TestDatabase::new_empty();
    one_line_error(
        &omdb(&["--db-url", empty.url(), "db", "sleds"], &[]).await,
        &format!(
            "omdb: the database at {} has no Halyard schema",
            empty.url()
        ),
    );
}

#[tokio::test]
async fn the_database_url_comes_from_the_flag_then_the_environment_then_the_default() {
    let db = TestDatabase::new();
    let bad = "postgresql://postgres@127.0.0.1:1/from_env";

    // The environment variable, when there is no flag.
    let run = omdb(&["db", "sleds"], &[("HALYARD_DB_URL", db.url())]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout, "no sleds (no sled agent has registered)\n");
    one_line_error(
        &omdb(&["db", "sleds"], &[("HALYARD_DB_URL", bad)]).await,
        &format!("omdb: cannot reach the database at {bad}: "),
    );

    // The flag beats the environment.
    let run = omdb(
        &["db", "sleds", "--db-url", db.url()],
        &[("HALYARD_DB_URL", bad)],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");

    // Neither: the development environment's database.
    match DefaultDatabaseStandIn::start().await {
        Some(stand_in) => {
            // Nothing else listens there: the test does, and drops every connection. omdb
            // dialled exactly that address, and names the default URL in its error.
            let run = omdb(&["db", "sleds"], &[]).await;
            one_line_error(
                &run,
                &format!("omdb: cannot reach the database at {DEFAULT_DB_URL}: "),
            );
            assert!(
                stand_in.connections() > 0,
                "omdb never connected to {DEFAULT_DB_ADDRESS}: {run:?}"
            );
        }
        None => {
            // The development environment's database is running here: with no flag and no
            // environment variable omdb must do exactly what it does when given its URL.
            let run = omdb(&["db", "sleds"], &[]).await;
            let explicit = omdb(&["db", "sleds", "--db-url", DEFAULT_DB_URL], &[]).await;
            assert_eq!(
                (run.code, &run.stderr),
                (explicit.code, &explicit.stderr),
                "the default is not {DEFAULT_DB_URL}: {run:?} vs {explicit:?}"
            );
        }
    }
}

/// Where omdb looks when neither `--db-url` nor `HALYARD_DB_URL` says (run-all's database).
const DEFAULT_DB_URL: &str = "postgresql://postgres@127.0.0.1:32221/halyard";
const DEFAULT_DB_ADDRESS: &str = "127.0.0.1:32221";

/// A listener on the default database's address that counts and drops connections.
struct DefaultDatabaseStandIn {
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepting: tokio::task::JoinHandle<()>,
}

impl DefaultDatabaseStandIn {
    /// `None` if something already listens there (the development environment's
    /// PostgreSQL); panics on any other error.
    async fn start() -> Option<DefaultDatabaseStandIn> {
        let listener = match tokio::net::TcpListener::bind(DEFAULT_DB_ADDRESS).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return None,
            Err(e) => panic!("binding {DEFAULT_DB_ADDRESS}: {e}"),
        };
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = std::sync::Arc::clone(&connections);
        let accepting = tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(connection);
            }
        });
        Some(DefaultDatabaseStandIn {
            connections,
            accepting,
        })
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for DefaultDatabaseStandIn {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

#[tokio::test]
async fn unreachable_nexus_and_sled_agents_are_one_line_naming_them() {
    let line = one_line_error(
        &omdb(
            &["nexus", "sagas", "--nexus-url", "http://127.0.0.1:1"],
            &[],
        )
        .await,
        "omdb: cannot reach Nexus at http://127.0.0.1:1: ",
    );
    assert!(line.contains("refused"), "{line}");
    one_line_error(
        &omdb(
            &[
                "nexus",
                "--nexus-url",
                "http://127.0.0.1:1/",
                "sagas",
                "--json",
            ],
            &[],
        )
        .await,
        "omdb: cannot reach Nexus at http://127.0.0.1:1: ",
    );
    let line = one_line_error(
        &omdb(&["sled-agent", "vmms", "--sled", "127.0.0.1:1"], &[]).await,
        "omdb: cannot reach the sled agent at 127.0.0.1:1: ",
    );
    assert!(line.contains("refused"), "{line}");
    one_line_error(
        &omdb(&["sled-agent", "vmms", "--sled", "not-an-address"], &[]).await,
        "omdb: --sled wants a sled agent's address (IP:PORT) or a sled id, not \"not-an-address\"",
    );
}

#[tokio::test]
async fn unknown_ids_and_names_are_reported_as_such() {
    let db = TestDatabase::new();
    let url = db.url();
    let id = uuid::Uuid::new_v4().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["db", "instance", &id],
            format!("omdb: no instance with id {id}"),
        ),
        (
            vec!["db", "instance", "nobody"],
            "omdb: no instance named \"nobody\"".to_string(),
        ),
        (
            vec!["db", "instance", "nobody", "--project", "nowhere"],
            "omdb: no project \"nowhere\"".to_string(),
        ),
        (
            vec!["db", "instance", "Not A Name!"],
            "omdb: \"Not A Name!\" is neither an instance id nor a valid instance name: "
                .to_string(),
        ),
        (
            vec!["db", "vmms", "--instance", &id],
            format!("omdb: no instance with id {id}"),
        ),
        (
            vec!["db", "vmms", "--sled", &id],
            format!("omdb: no sled with id {id}"),
        ),
        (
            vec!["db", "vmms", "--sled", "127.0.0.1:9"],
            "omdb: no sled registered at 127.0.0.1:9".to_string(),
        ),
        (
            vec!["db", "saga", &id],
            format!("omdb: no saga with id {id}"),
        ),
        (
            vec!["db", "saga", "12345"],
            "omdb: \"12345\" is not a saga id (a UUID)".to_string(),
        ),
        (
            vec!["sled-agent", "vmms", "--sled", &id],
            format!("omdb: no sled with id {id}"),
        ),
    ];
    for (args, prefix) in cases {
        let mut all = vec!["--db-url", url];
        all.extend(args.iter().copied());
        one_line_error(&omdb(&all, &[]).await, &prefix);
    }
}

#[tokio::test]
async fn every_command_has_help_and_usage_errors_exit_1() {
    for args in [
        &["--help"][..],
        &["db", "--help"],
        &["db", "instances", "--help"],
        &["db", "instance", "--help"],
        &["db", "vmms", "--help"],
        &["db", "sleds", "--help"],
        &["db", "reservations", "--help"],
        &["db", "disks", "--help"],
        &["db", "regions", "--help"],
        &["db", "migrations", "--help"],
        &["db", "sagas", "--help"],
        &["db", "saga", "--help"],
        &["db", "check", "--help"],
        &["nexus", "--help"],
        &["nexus", "sagas", "--help"],
        &["sled-agent", "--help"],
        &["sled-agent", "vmms", "--help"],
    ] {
        let run = omdb(args, &[]).await;
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(run.stdout.contains("Usage: omdb"), "{args:?}: {run:?}");
    }
    for args in [
        &["bogus"][..],
        &["db"],
        &["db", "instance"],
        &["db", "saga"],
        &["sled-agent", "vmms"],
        &["db", "sagas", "--nope"],
    ] {
        let run = omdb(args, &[]).await;
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(run.stderr.contains("Usage: omdb"), "{args:?}: {run:?}");
    }
}
