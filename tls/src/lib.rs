//! Mutual TLS inside the control plane: Nexus's internal API and every sled agent's API
//! accept only callers with a certificate from the deployment's CA, and a handler learns
//! which certificate its caller presented.
//!
//! - [`pki`]: the throwaway CA the dev environment and the tests make at start, and the
//!   certificates it issues (one per sled, one for Nexus, one for operators).
//! - [`TlsFiles`] / [`TlsMaterial`]: a service's CA, certificate and key, read from PEM files
//!   named in its configuration; the rustls server and client configurations made from them.
//! - [`front`]: the TLS listener in front of a dropshot server (dropshot 0.18 hands its
//!   handlers no connection data, only the remote address): it terminates TLS, requires a
//!   client certificate from the CA, and forwards each request to the dropshot server on
//!   loopback with the caller's verified certificate in a header, next to a per-process secret.
//! - [`TlsFiles::write_qemu_credentials`]: the same files laid out as QEMU's
//!   `tls-creds-x509` reads them, for the QEMU-to-QEMU migration stream.
//! - [`peer`]: what a handler does with that header: [`peer::Peer::from_request`] refuses a
//!   request that did not come through the front, and [`peer::Peer::is`] tells whether the
//!   caller is a given sled, Nexus or an operator.

pub mod front;
pub mod peer;
pub mod pki;

use halyard_common::ids::SledUuid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The name in Nexus's certificate (its server name and its identity as a client).
pub const NEXUS_NAME: &str = "nexus.halyard.internal";
/// The name in every sled agent's certificate that a client checks when it connects.
pub const SLED_AGENT_NAME: &str = "sled-agent.halyard.internal";
/// The name in an operator's certificate (omdb).
pub const OPERATOR_NAME: &str = "operator.halyard.internal";

/// The name in one sled's certificate that says which sled it is.
pub fn sled_name(sled_id: SledUuid) -> String {
    format!("{sled_id}.sled.halyard.internal")
}

/// The distinguished name of one sled's certificate, in the form QEMU's `tls-authz` compares
/// a migration stream's client certificate against (GnuTLS's RFC 4514 rendering of the
/// subject; [`pki`] issues every certificate with the one common name).
pub fn sled_distinguished_name(sled_id: SledUuid) -> String {
    format!("CN={}", sled_name(sled_id))
}

/// Who a certificate speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Nexus,
    Operator,
    Sled(SledUuid),
}

impl Role {
    /// The DNS names in a certificate issued for this role. A sled's certificate also carries
    /// the name every sled agent shares as a server ([`SLED_AGENT_NAME`]); only the first name
    /// identifies it as a client.
    pub fn names(&self) -> Vec<String> {
        match self {
            Role::Nexus => vec![NEXUS_NAME.to_string()],
            Role::Operator => vec![OPERATOR_NAME.to_string()],
            Role::Sled(id) => vec![sled_name(*id), SLED_AGENT_NAME.to_string()],
        }
    }

    /// The name that identifies a caller in this role.
    pub fn identifying_name(&self) -> String {
        self.names().remove(0)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Role::Nexus => write!(f, "Nexus"),
            Role::Operator => write!(f, "an operator"),
            Role::Sled(id) => write!(f, "sled {id}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM {what}: {message}")]
    Pem {
        path: String,
        what: &'static str,
        message: String,
    },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("building the TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("building the client certificate verifier: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("building the HTTP client: {0}")]
    HttpClient(#[from] reqwest::Error),
    #[error("binding the TLS listener on {address}: {source}")]
    Bind {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Where a service's TLS files are: in its TOML configuration as
/// ```toml
/// [tls]
/// ca_cert = ".halyard-dev/pki/ca.pem"      # the deployment's CA: the only one trusted
/// cert = ".halyard-dev/pki/nexus.pem"      # this service's certificate
/// key = ".halyard-dev/pki/nexus-key.pem"   # and its private key
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    pub fn load(&self) -> Result<TlsMaterial, TlsError> {
        let ca = read_certs(&self.ca_cert, "CA certificate")?;
        let chain = read_certs(&self.cert, "certificate")?;
        let key_path = self.key.display().to_string();
        let key_pem = std::fs::read(&self.key).map_err(|source| TlsError::Read {
            path: key_path.clone(),
            source,
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: key_path,
            what: "private key",
            message: e.to_string(),
        })?;
        Ok(TlsMaterial {
            ca: Arc::new(ca),
            chain,
            key: Arc::new(key),
        })
    }
}

fn read_certs(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let display = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: display.clone(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: display.clone(),
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: display,
            what,
            message: "no certificate in the file".to_string(),
        });
    }
    Ok(certs)
}

/// A service's TLS material, loaded: the CA it trusts, its certificate chain and key.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    ca: Arc<Vec<CertificateDer<'static>>>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TlsMaterial {
    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in self.ca.iter() {
            roots.add(cert.clone())?;
        }
        Ok(Arc::new(roots))
    }

    /// A server configuration that presents this certificate and requires every client to
    /// present one issued by the CA (the handshake fails otherwise).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .build()?;
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?)
    }

    /// A client configuration that presents this certificate and accepts only a server whose
    /// certificate the CA issued for `server_name`, whatever address the URL names (sled
    /// agents and Nexus are reached by IP address; what matters is who answers).
    pub fn client_config(&self, server_name: &str) -> Result<rustls::ClientConfig, TlsError> {
        let webpki =
            rustls::client::WebPkiServerVerifier::builder_with_provider(self.roots()?, provider())
                .build()
                .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let expected = ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let verifier = Arc::new(ExpectedServerName {
            webpki,
            name: expected,
        });
        Ok(rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?)
    }

    /// An HTTP client (for the progenitor clients) that presents this certificate and trusts
    /// only `server_name`'s certificate from the CA, with the timeouts progenitor's own
    /// `Client::new` sets.
    pub fn http_client(&self, server_name: &str) -> Result<reqwest::Client, TlsError> {
        let timeout = Duration::from_secs(15);
        Ok(self
            .http_client_builder(server_name)?
            .connect_timeout(timeout)
            .timeout(timeout)
            .build()?)
    }

    /// A builder for such a client, for callers that set their own timeouts.
    pub fn http_client_builder(
        &self,
        server_name: &str,
    ) -> Result<reqwest::ClientBuilder, TlsError> {
        Ok(reqwest::ClientBuilder::new()
            .tls_backend_preconfigured(self.client_config(server_name)?))
    }
}

/// Checks the server's certificate chain against the CA and its name against the one
/// expected, instead of against the host in the URL.
#[derive(Debug)]
struct ExpectedServerName {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for ExpectedServerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _url_host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.webpki
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

impl TlsFiles {
    /// The `[tls]` table of a service's TOML configuration naming these files.
    pub fn toml_table(&self) -> String {
        format!(
            "[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n",
            self.ca_cert.display().to_string(),
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }

    /// Writes these files into `dir` under the names QEMU's `tls-creds-x509` object reads
    /// (`ca-cert.pem`; this certificate as both `server-cert.pem` and `client-cert.pem`, its
    /// key as `server-key.pem` and `client-key.pem`, readable by the owner only), so a QEMU
    /// presents this certificate whichever end of a migration stream it is.
    pub fn write_qemu_credentials(&self, dir: &std::path::Path) -> Result<(), TlsError> {
        let read = |path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        let (ca, cert, key) = (read(&self.ca_cert)?, read(&self.cert)?, read(&self.key)?);
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        pki::write(&dir.join(QEMU_CA_CERT), &ca, 0o644)?;
        for (name, contents, mode) in [
            (QEMU_SERVER_CERT, &cert, 0o644),
            (QEMU_CLIENT_CERT, &cert, 0o644),
            (QEMU_SERVER_KEY, &key, 0o600),
            (QEMU_CLIENT_KEY, &key, 0o600),
        ] {
            pki::write(&dir.join(name), contents, mode)?;
        }
        Ok(())
    }
}

/// The file names in a QEMU `tls-creds-x509` directory (QEMU's own, fixed).
pub const QEMU_CA_CERT: &str = "ca-cert.pem";
pub const QEMU_SERVER_CERT: &str = "server-cert.pem";
pub const QEMU_SERVER_KEY: &str = "server-key.pem";
pub const QEMU_CLIENT_CERT: &str = "client-cert.pem";
pub const QEMU_CLIENT_KEY: &str = "client-key.pem";
