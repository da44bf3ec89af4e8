//! The throwaway certificate authority of a dev environment or a test process, and the
//! certificates it issues. Nothing here is kept: each start makes a new CA, so a certificate
//! from an earlier run (or another test process) is from another CA and is refused.

use crate::{Role, TlsError, TlsFiles, TlsMaterial};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::Path;

/// A CA: its certificate, and the key it signs with (kept in memory only).
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// A new CA with a fresh key. `label` names it in its subject (e.g. the dev environment).
    pub fn generate(label: &str) -> Result<Ca, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("Halyard CA ({label})"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `role` (usable as a client and as a server), with a fresh key.
    pub fn issue(&self, role: Role) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(role.names())?;
        params
            .distinguished_name
            .push(DnType::CommonName, role.identifying_name());
        // keyEncipherment as well: the key usage extension is critical, and GnuTLS (QEMU's
        // `tls-creds-x509`, which carries the migration stream) refuses an end-entity
        // certificate whose critical key usage lacks it ("usage does not permit key
        // encipherment"), whatever the key type. rustls ignores it.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA's certificate (`ca.pem`) and a new certificate for `role`
    /// (`<stem>.pem`, key in `<stem>-key.pem`, readable by its owner only) into `dir`.
    pub fn write_files(&self, dir: &Path, stem: &str, role: Role) -> Result<TlsFiles, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        let issued = self.issue(role)?;
        let files = TlsFiles {
            ca_cert: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}-key.pem")),
        };
        write(&files.ca_cert, &self.cert_pem, 0o644)?;
        write(&files.cert, &issued.cert_pem, 0o644)?;
        write(&files.key, &issued.key_pem, 0o600)?;
        Ok(files)
    }
}

pub(crate) fn write(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let error = |source| TlsError::Write {
        path: path.display().to_string(),
        source,
    };
    // Written to a new file and renamed, so a reader never sees half of one and a key never
    // exists, even briefly, with wider permissions.
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(error)?;
    file.write_all(contents.as_bytes()).map_err(error)?;
    drop(file);
    std::fs::rename(&temporary, path).map_err(error)
}

/// A CA and the files of the certificates it issued, in one directory: the dev environment's
/// (`.halyard-dev/pki`, made anew at each start) or a test process's ([`test_pki`]).
pub struct DevPki {
    ca: Ca,
    dir: std::path::PathBuf,
    issued: std::sync::Mutex<std::collections::HashMap<String, TlsFiles>>,
}

impl DevPki {
    /// A new CA whose files go into `dir` (created if missing; files of an earlier CA there
    /// are replaced as certificates are issued).
    pub fn create(label: &str, dir: &Path) -> Result<DevPki, TlsError> {
        Ok(DevPki {
            ca: Ca::generate(label)?,
            dir: dir.to_path_buf(),
            issued: Default::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The files of `role`'s certificate, issued on first use. A sled's files are named by its
    /// id (`sled-<id>.pem`), Nexus's `nexus.pem`, the operator's `operator.pem`.
    pub fn files(&self, role: Role) -> Result<TlsFiles, TlsError> {
        let stem = match role {
            Role::Nexus => "nexus".to_string(),
            Role::Operator => "operator".to_string(),
            Role::Sled(id) => format!("sled-{id}"),
        };
        let mut issued = self
            .issued
            .lock()
            .expect("the PKI's lock is never poisoned");
        if let Some(files) = issued.get(&stem) {
            return Ok(files.clone());
        }
        let files = self.ca.write_files(&self.dir, &stem, role)?;
        issued.insert(stem, files.clone());
        Ok(files)
    }

    /// `role`'s certificate and key, loaded.
    pub fn material(&self, role: Role) -> Result<TlsMaterial, TlsError> {
        self.files(role)?.load()
    }

    /// An HTTP client presenting `role`'s certificate to a server with `server_name`'s.
    pub fn http_client(&self, role: Role, server_name: &str) -> Result<reqwest::Client, TlsError> {
        self.material(role)?.http_client(server_name)
    }
}

/// The test process's PKI: one CA per process, its files in a directory of the system's
/// temporary directory named by the process id (removed, with everything in it, the next
/// time a test process with that id starts).
pub fn test_pki() -> &'static DevPki {
    static PKI: std::sync::OnceLock<DevPki> = std::sync::OnceLock::new();
    PKI.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("halyard-test-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DevPki::create("tests", &dir).expect("making the test process's CA")
    })
}
