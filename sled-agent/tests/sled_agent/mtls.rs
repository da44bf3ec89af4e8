//! Mutual TLS on the sled agent's API: only callers with a certificate from the deployment's
//! CA get in; only Nexus changes VMMs.

use crate::{Role, TestEnv, http_as, register_body, sled_client, tls_files, visible_delays};
use halyard_common::ids::{SledUuid, VmmUuid};

async fn list_vmms(http: &reqwest::Client, env: &TestEnv) -> Result<u16, reqwest::Error> {
    let response = http
        .get(format!("https://{}/vmms", env.sled.local_addr()))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn a_client_without_a_certificate_from_the_ca_is_refused() {
    let env = TestEnv::new(visible_delays()).await;
    // The operator's certificate gets in (so a refusal below is the certificate's doing).
    let operator = http_as(Role::Operator, halyard_tls::SLED_AGENT_NAME);
    assert_eq!(list_vmms(&operator, &env).await.unwrap(), 200);

    // No certificate (the client accepts any server: only the server can refuse).
    let anonymous = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let refused = list_vmms(&anonymous, &env).await;
    assert!(
        refused.is_err(),
        "no certificate got an answer: {refused:?}"
    );

    // Nexus's certificate from another CA.
    let dir = std::env::temp_dir().join(format!("halyard-foreign-pki-{}", uuid_like_suffix()));
    let foreign = halyard_tls::pki::DevPki::create("another deployment", &dir)
        .unwrap()
        .files(Role::Nexus)
        .unwrap();
    let foreign = halyard_tls::TlsFiles {
        ca_cert: tls_files(Role::Operator).ca_cert,
        ..foreign
    }
    .load()
    .unwrap()
    .http_client(halyard_tls::SLED_AGENT_NAME)
    .unwrap();
    let refused = list_vmms(&foreign, &env).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA got an answer: {refused:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn only_nexus_registers_vmms() {
    let env = TestEnv::new(visible_delays()).await;
    let id = VmmUuid::new_v4();
    for role in [Role::Operator, Role::Sled(env.sled.agent().id())] {
        let error = sled_client(env.sled.local_addr(), role)
            .vmm_register(&id, &register_body())
            .await
            .unwrap_err();
        assert_eq!(error.status().map(|s| s.as_u16()), Some(403), "{role}");
    }
    assert!(env.client.vmm_list().await.unwrap().is_empty());
    // Nexus's certificate (the environment's client) may.
    env.client
        .vmm_register(&id, &register_body())
        .await
        .unwrap();
}

/// A suffix no other test process picks.
fn uuid_like_suffix() -> String {
    format!("{}-{}", std::process::id(), SledUuid::new_v4())
}
