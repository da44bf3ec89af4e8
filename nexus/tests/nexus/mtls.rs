//! Mutual TLS on Nexus's internal API: only callers with a certificate from the deployment's
//! CA get in, and a sled agent speaks only for its own sled.

use crate::context::{Role, TestContext, operator_http, tls_files};
use halyard_common::InstanceState;
use halyard_common::internal_api::SledAgentInfo;
use serde_json::Value;

/// A client that presents `cert`'s certificate and key, trusting the test CA for the server.
fn client_with_certificate_of(files: &halyard_tls::TlsFiles) -> reqwest::Client {
    halyard_tls::TlsFiles {
        ca_cert: tls_files(Role::Operator).ca_cert,
        ..files.clone()
    }
    .load()
    .unwrap()
    .http_client(halyard_tls::NEXUS_NAME)
    .unwrap()
}

/// A sled certificate from another CA (a CA made for this test, not the deployment's).
fn foreign_sled_files(sled_id: halyard_common::ids::SledUuid) -> halyard_tls::TlsFiles {
    let dir = std::env::temp_dir().join(format!(
        "halyard-foreign-pki-{}",
        uuid::Uuid::new_v4().simple()
    ));
    halyard_tls::pki::DevPki::create("another deployment", &dir)
        .unwrap()
        .files(Role::Sled(sled_id))
        .unwrap()
}

async fn get_sagas(http: &reqwest::Client, ctx: &TestContext) -> Result<u16, reqwest::Error> {
    let response = http
        .get(format!("https://{}/sagas", ctx.server().internal_address()))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

#[tokio::test]
async fn the_internal_api_refuses_callers_without_a_certificate_from_the_ca() {
    let ctx = TestContext::with_sleds(1).await;
    // The operator's certificate gets in (so a refusal below is the certificate's doing).
    assert_eq!(
        get_sagas(&operator_http(halyard_tls::NEXUS_NAME), &ctx)
            .await
            .unwrap(),
        200
    );

    // No certificate at all (the client accepts any server, so only the server can refuse).
    let anonymous = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let refused = get_sagas(&anonymous, &ctx).await;
    assert!(
        refused.is_err(),
        "a caller without a certificate got an answer: {refused:?}"
    );

    // A sled's certificate from another CA, for a sled that is registered here.
    let sled_id = ctx.sleds[0].agent().id();
    let foreign = client_with_certificate_of(&foreign_sled_files(sled_id));
    let refused = get_sagas(&foreign, &ctx).await;
    assert!(
        refused.is_err(),
        "a certificate from another CA got an answer: {refused:?}"
    );

    // Plain HTTP on the TLS port gets no HTTP answer either.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/sagas", ctx.server().internal_address()))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP got an answer: {:?}",
        plain.map(|r| r.status())
    );
}

#[tokio::test]
async fn a_sled_agent_cannot_register_or_report_as_another_sled() {
    let ctx = TestContext::with_sleds(2).await;
    let (sled_a, sled_b) = (&ctx.sleds[0], &ctx.sleds[1]);
    let as_sled_a = client_with_certificate_of(&tls_files(Role::Sled(sled_a.agent().id())));
    let internal = format!("https://{}", ctx.server().internal_address());
    let address_of_b = || {
        ctx.sql(&format!(
            "SELECT host(ip) || ':' || port FROM sled WHERE id = '{}'",
            sled_b.agent().id()
        ))
    };
    let b_before = address_of_b();

    // Sled A registering as sled B, pointing B's address at itself: 403, nothing changed.
    let forged = SledAgentInfo {
        address: sled_a.local_addr(),
        backend: halyard_common::SledBackend::Sim,
        hardware_threads: crate::context::SLED_THREADS,
        physical_ram: halyard_common::ByteCount::from_gibibytes_u32(crate::context::SLED_RAM_GIB),
        usable_storage: halyard_common::ByteCount::from_mebibytes_u32(0),
        underlay_address: None,
    };
    let response = as_sled_a
        .put(format!("{internal}/sled-agents/{}", sled_b.agent().id()))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_code"], "Forbidden", "{body}");
    assert_eq!(address_of_b(), b_before, "sled B's address changed");
    // An operator may not register a sled either.
    let response = operator_http(halyard_tls::NEXUS_NAME)
        .put(format!("{internal}/sled-agents/{}", sled_b.agent().id()))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);

    // Sled A registering as itself is fine (the refusal above is about whose sled it is).
    let own = SledAgentInfo {
        address: sled_a.local_addr(),
        ..forged
    };
    let response = as_sled_a
        .put(format!("{internal}/sled-agents/{}", sled_a.agent().id()))
        .json(&own)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);

    // A VMM running on sled B: sled A reporting it destroyed is refused, and it runs on.
    let project = ctx.project("mtls").await;
    let mut on_b = None;
    for i in 0..8 {
        let id = ctx.instance(&project, &format!("vm-{i}"), 1).await;
        ctx.nexus().instance_start(id).await.unwrap();
        ctx.wait_for(id, InstanceState::Running).await;
        let vmm = ctx.view(id).await.active_vmm.unwrap();
        if vmm.sled_id() == sled_b.agent().id() {
            on_b = Some((id, vmm));
            break;
        }
    }
    let (instance, vmm) = on_b.expect("some instance placed on sled B");
    let mut report = sled_b.agent().vmm_state(vmm.id()).unwrap();
    report.vmm_state.state = halyard_common::VmmState::Destroyed;
    report.vmm_state.generation = report.vmm_state.generation.next();
    let response = as_sled_a
        .put(format!("{internal}/vmms/{}", vmm.id()))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(ctx.view(instance).await.run_state(), InstanceState::Running);
    // The same report with sled B's certificate is taken (what was refused was sled A).
    let as_sled_b = client_with_certificate_of(&tls_files(Role::Sled(sled_b.agent().id())));
    let response = as_sled_b
        .put(format!("{internal}/vmms/{}", vmm.id()))
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
}
