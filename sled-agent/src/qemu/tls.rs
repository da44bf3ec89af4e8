//! QEMU's migration stream over mutual TLS with the deployment's CA.
//!
//! At start the sled agent writes its own certificate, key and the CA's certificate into
//! `<state_dir>/<sled_id>-tls/` under QEMU's file names ([`credentials_dir`]). Every QEMU of
//! the sled reads them through `tls-creds-x509` objects on its command line
//! ([`object_args`]), both with `verify-peer=on`:
//!
//! - **source** (`endpoint=client`, every VMM: any running VMM may migrate out): before
//!   `migrate`, `migrate-set-parameters` names these credentials and sets `tls-hostname` to
//!   the target sled's certificate name ([`outgoing_parameters`]), so QEMU sends the guest
//!   only to a QEMU presenting the certificate the CA issued to the sled Nexus named.
//! - **target** (`endpoint=server`, a VMM registered as a migration target): QEMU requires
//!   a client certificate from the CA, and an `authz-simple` object admits only the
//!   distinguished name of the source sled Nexus named ([`halyard_tls::sled_distinguished_name`]);
//!   `migrate-set-parameters` names both before `migrate-incoming`
//!   ([`incoming_parameters`]). A stream with any other certificate (another sled's, or one
//!   from another CA) fails its handshake: QEMU logs why ("TLS x509 authz check for … is
//!   denied", or the certificate's verification error), receives nothing, and goes on
//!   listening, so the named source can still connect.

use halyard_common::ids::SledUuid;
use halyard_sled_agent_api::MigrationTarget;
use qapi::qmp;
use std::path::{Path, PathBuf};

/// The client credentials every QEMU of this sled has (for migrating out).
const OUTGOING_CREDENTIALS: &str = "migration-out-tls";
/// The server credentials of a migration target's QEMU.
const INCOMING_CREDENTIALS: &str = "migration-in-tls";
/// A migration target's authorization: only the source sled's certificate.
const INCOMING_AUTHZ: &str = "migration-in-authz";

/// Where this sled's QEMU credentials are: beside the VMM directories, not among them (the
/// cleanup at start removes every directory in `<state_dir>/<sled_id>`).
pub(crate) fn credentials_dir(state_dir: &Path, sled_id: SledUuid) -> PathBuf {
    state_dir.join(format!("{sled_id}-tls"))
}

/// The `-object` arguments of a VMM's QEMU: the client credentials, and for a migration
/// target the server credentials and the authorization of its source sled.
pub(crate) fn object_args(
    credentials: &Path,
    migration_target: Option<&MigrationTarget>,
) -> Vec<String> {
    // QEMU's option syntax: a comma in a value is written twice.
    let dir = credentials.display().to_string().replace(',', ",,");
    let creds = |id: &str, endpoint: &str| {
        format!("tls-creds-x509,id={id},endpoint={endpoint},verify-peer=on,dir={dir}")
    };
    let mut args = vec!["-object".to_string(), creds(OUTGOING_CREDENTIALS, "client")];
    if let Some(target) = migration_target {
        args.push("-object".to_string());
        args.push(creds(INCOMING_CREDENTIALS, "server"));
        args.push("-object".to_string());
        args.push(format!(
            "authz-simple,id={INCOMING_AUTHZ},identity={}",
            halyard_tls::sled_distinguished_name(target.source_sled_id).replace(',', ",,")
        ));
    }
    args
}

/// The migration parameters of a target's QEMU, set before it listens: TLS with the server
/// credentials, and only the source sled's certificate admitted.
pub(crate) fn incoming_parameters() -> qmp::migrate_set_parameters {
    qmp::migrate_set_parameters(qmp::MigrateSetParameters {
        tls_creds: Some(qmp::StrOrNull::s(INCOMING_CREDENTIALS.to_string())),
        tls_authz: Some(qmp::StrOrNull::s(INCOMING_AUTHZ.to_string())),
        ..Default::default()
    })
}

/// The migration parameters of a source's QEMU, set before it sends: TLS with the client
/// credentials, to a server whose certificate names `target_sled_id`.
pub(crate) fn outgoing_parameters(target_sled_id: SledUuid) -> qmp::migrate_set_parameters {
    qmp::migrate_set_parameters(qmp::MigrateSetParameters {
        tls_creds: Some(qmp::StrOrNull::s(OUTGOING_CREDENTIALS.to_string())),
        tls_hostname: Some(qmp::StrOrNull::s(halyard_tls::sled_name(target_sled_id))),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use halyard_common::ids::{MigrationUuid, VmmUuid};

    #[test]
    fn only_a_migration_target_gets_server_credentials_and_its_source_sleds_name() {
        let dir = Path::new("/var/a,b");
        let source_only = object_args(dir, None);
        assert_eq!(
            source_only,
            [
                "-object",
                "tls-creds-x509,id=migration-out-tls,endpoint=client,verify-peer=on,\
                 dir=/var/a,,b"
            ]
        );
        let source_sled_id = SledUuid::new_v4();
        let target = MigrationTarget {
            migration_id: MigrationUuid::new_v4(),
            source_propolis_id: VmmUuid::new_v4(),
            source_sled_id,
            source_address: "127.0.0.1:1".parse().unwrap(),
        };
        let target_args = object_args(dir, Some(&target));
        assert_eq!(target_args[..2], source_only[..]);
        assert_eq!(
            target_args[2..],
            [
                "-object".to_string(),
                "tls-creds-x509,id=migration-in-tls,endpoint=server,verify-peer=on,\
                 dir=/var/a,,b"
                    .to_string(),
                "-object".to_string(),
                format!(
                    "authz-simple,id=migration-in-authz,identity=CN={source_sled_id}.sled.\
                     halyard.internal"
                ),
            ]
        );
    }
}
