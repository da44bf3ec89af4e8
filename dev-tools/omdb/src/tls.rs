//! The operator's certificate: omdb presents it to Nexus's internal API and to sled agents,
//! which accept only callers with a certificate from the deployment's CA.

use anyhow::Context;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where the development environment (`dev-tools/run-all`) writes its certificates.
pub const DEFAULT_TLS_DIR: &str = ".halyard-dev/pki";

static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();

/// The `--tls-dir` flag, if given (set once, at start).
pub fn set_dir(dir: Option<PathBuf>) {
    let _ = DIR.set(dir);
}

fn dir() -> PathBuf {
    DIR.get()
        .cloned()
        .flatten()
        .or_else(|| std::env::var_os("HALYARD_TLS_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_TLS_DIR))
}

/// An HTTP client builder presenting the operator's certificate to a server with
/// `server_name`'s (`halyard_tls::NEXUS_NAME`, `halyard_tls::SLED_AGENT_NAME`).
pub fn http_client_builder(server_name: &str) -> anyhow::Result<reqwest::ClientBuilder> {
    let dir = dir();
    let files = halyard_tls::TlsFiles {
        ca_cert: dir.join("ca.pem"),
        cert: dir.join("operator.pem"),
        key: dir.join("operator-key.pem"),
    };
    let material = files.load().with_context(|| {
        format!(
            "the operator's certificate (--tls-dir {}; run-all prints where its are)",
            dir.display()
        )
    })?;
    Ok(material.http_client_builder(server_name)?)
}
