//! The system under test, in this process: the test context shared with the Nexus suite
//! (`halyard_nexus_test_utils::context`: a fresh database, Nexus, and simulated sled agents over
//! real HTTP); and the real `omdb` binary, run against them.

pub use halyard_nexus_test_utils::context::TestContext;
use std::time::Duration;

/// What one run of omdb did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts that omdb succeeded, and returns what it printed.
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "omdb failed:\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        );
        self.stdout
    }
}

/// omdb run against a test context's system.
pub trait RunOmdb {
    /// Runs omdb against this system's database, with `args` after `--db-url`.
    async fn omdb(&self, args: &[&str]) -> Run;
}

impl RunOmdb for TestContext {
    async fn omdb(&self, args: &[&str]) -> Run {
        let mut all = vec!["--db-url", self.db.url()];
        all.extend_from_slice(args);
        omdb(&all, &[]).await
    }
}

/// Runs the real omdb binary with `args` and environment `env` (and no `HALYARD_DB_URL` from
/// the caller's environment unless `env` sets it).
pub async fn omdb(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_omdb"));
    command.args(args).env_remove("HALYARD_DB_URL");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("omdb {args:?} did not finish within 60 s"))
        .expect("running omdb");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8(output.stdout).expect("omdb prints UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("omdb prints UTF-8"),
    }
}
