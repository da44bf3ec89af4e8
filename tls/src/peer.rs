//! What a handler knows of its caller: the certificate the TLS front verified.

use crate::Role;
use base64::Engine;
use dropshot::{HttpError, RequestInfo};
use rustls::pki_types::{CertificateDer, DnsName, ServerName};

/// The header in which the front hands the caller's verified certificate (DER, base64) to
/// the dropshot server behind it.
pub const PEER_CERTIFICATE_HEADER: &str = "x-halyard-peer-certificate";
/// The header that proves a request came through this process's front.
pub const FRONT_SECRET_HEADER: &str = "x-halyard-front-secret";

/// A random secret, made at start, shared by a front and the dropshot server behind it. That
/// server listens on loopback, where any local process could reach it and write its own
/// certificate header: without this secret its request is refused.
#[derive(Clone)]
pub struct FrontSecret(String);

impl FrontSecret {
    pub fn generate() -> FrontSecret {
        let bytes: [u8; 32] = rand::random();
        FrontSecret(base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes))
    }

    pub(crate) fn value(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &[u8]) -> bool {
        // Compared in constant time: the secret guards the certificate header.
        let expected = self.0.as_bytes();
        expected.len() == presented.len()
            && expected
                .iter()
                .zip(presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for FrontSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrontSecret(..)")
    }
}

/// The caller of a request: the certificate it presented, verified by the front against the
/// deployment's CA.
#[derive(Debug, Clone)]
pub struct Peer {
    certificate: CertificateDer<'static>,
}

impl Peer {
    /// The caller of this request, or 403 if it did not come through the front (every
    /// request to the services' APIs does; the front refuses a caller without a certificate
    /// from the CA during the handshake).
    pub fn from_request(request: &RequestInfo, secret: &FrontSecret) -> Result<Peer, HttpError> {
        let headers = request.headers();
        let through_front = headers
            .get(FRONT_SECRET_HEADER)
            .is_some_and(|value| secret.matches(value.as_bytes()));
        if !through_front {
            return Err(forbidden(
                "this API accepts only callers with a certificate from the deployment's CA",
            ));
        }
        let certificate = headers
            .get(PEER_CERTIFICATE_HEADER)
            .and_then(|value| {
                base64::engine::general_purpose::STANDARD
                    .decode(value.as_bytes())
                    .ok()
            })
            .ok_or_else(|| {
                HttpError::for_internal_error(
                    "the TLS front passed no caller certificate".to_string(),
                )
            })?;
        Ok(Peer {
            certificate: CertificateDer::from(certificate),
        })
    }

    /// Whether the caller's certificate was issued for `role`.
    pub fn is(&self, role: Role) -> bool {
        let Ok(certificate) = webpki::EndEntityCert::try_from(&self.certificate) else {
            return false;
        };
        let Ok(name) = DnsName::try_from(role.identifying_name()) else {
            return false;
        };
        certificate
            .verify_is_valid_for_subject_name(&ServerName::DnsName(name))
            .is_ok()
    }

    /// Ok if the caller is one of `roles`, else 403 naming what the call needs.
    pub fn require(&self, roles: &[Role], action: &str) -> Result<(), HttpError> {
        if roles.iter().any(|role| self.is(*role)) {
            return Ok(());
        }
        let allowed: Vec<String> = roles.iter().map(|role| role.to_string()).collect();
        Err(forbidden(&format!(
            "only {} may {action}; the caller's certificate was issued to someone else",
            allowed.join(" or ")
        )))
    }
}

fn forbidden(message: &str) -> HttpError {
    HttpError::for_client_error(
        Some("Forbidden".to_string()),
        dropshot::ClientErrorStatusCode::FORBIDDEN,
        message.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;
    use halyard_common::ids::SledUuid;
    use rustls::pki_types::pem::PemObject;

    fn request(headers: &[(&str, &str)]) -> RequestInfo {
        let mut builder = http::Request::builder().uri("/sled-agents/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        RequestInfo::new(&builder.body(()).unwrap(), "127.0.0.1:1".parse().unwrap())
    }

    fn der_base64(ca: &Ca, role: Role) -> String {
        let pem = ca.issue(role).unwrap().cert_pem;
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(der.as_ref())
    }

    #[test]
    fn a_request_that_did_not_come_through_the_front_is_refused() {
        let ca = Ca::generate("unit test").unwrap();
        let secret = FrontSecret::generate();
        let certificate = der_base64(&ca, Role::Nexus);
        for headers in [
            vec![(PEER_CERTIFICATE_HEADER, certificate.as_str())],
            vec![
                (PEER_CERTIFICATE_HEADER, certificate.as_str()),
                (FRONT_SECRET_HEADER, "a guess"),
            ],
            vec![
                (PEER_CERTIFICATE_HEADER, certificate.as_str()),
                (FRONT_SECRET_HEADER, &FrontSecret::generate().0),
            ],
        ] {
            let error = Peer::from_request(&request(&headers), &secret).unwrap_err();
            assert_eq!(error.status_code.as_u16(), 403, "{headers:?}");
        }
        let peer = Peer::from_request(
            &request(&[
                (PEER_CERTIFICATE_HEADER, certificate.as_str()),
                (FRONT_SECRET_HEADER, secret.value()),
            ]),
            &secret,
        )
        .unwrap();
        assert!(peer.is(Role::Nexus));
    }

    #[test]
    fn a_certificate_is_for_its_own_role_only() {
        let ca = Ca::generate("unit test").unwrap();
        let secret = FrontSecret::generate();
        let (a, b) = (SledUuid::new_v4(), SledUuid::new_v4());
        let peer_of = |role| {
            let certificate = der_base64(&ca, role);
            Peer::from_request(
                &request(&[
                    (PEER_CERTIFICATE_HEADER, certificate.as_str()),
                    (FRONT_SECRET_HEADER, secret.value()),
                ]),
                &secret,
            )
            .unwrap()
        };
        let sled_a = peer_of(Role::Sled(a));
        assert!(sled_a.is(Role::Sled(a)));
        assert!(!sled_a.is(Role::Sled(b)));
        assert!(!sled_a.is(Role::Nexus));
        assert!(!sled_a.is(Role::Operator));
        let error = sled_a.require(&[Role::Sled(b)], "register").unwrap_err();
        assert_eq!(error.status_code.as_u16(), 403);
        let operator = peer_of(Role::Operator);
        assert!(operator.is(Role::Operator));
        assert!(!operator.is(Role::Nexus));
        assert!(!operator.is(Role::Sled(a)));
        operator
            .require(&[Role::Nexus, Role::Operator], "list sagas")
            .unwrap();
    }
}
