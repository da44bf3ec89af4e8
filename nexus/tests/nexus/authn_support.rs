//! How test clients authenticate: every client presents a token of a user the harness made.

pub use halyard_nexus_test_utils::context::{TEST_USER, test_user_token};

/// A token of the test user (a fleet admin) made straight in the database at `database_url` (for a Nexus
/// running as a child process).
pub async fn test_user_token_in(database_url: &str) -> String {
    let datastore = halyard_db_queries::DataStore::new(
        &crate::context::log(),
        database_url,
        halyard_db_queries::PoolConfig::default(),
    );
    let (_, secret) = datastore
        .default_silo_admin_token(&TEST_USER.parse().unwrap())
        .await
        .expect("making the test user and its token");
    secret.expose().to_string()
}

/// An HTTP client that presents `token` on every request.
pub fn http_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The Oxide SDK for the Nexus at `base_url` (`http://...`), presenting `token`.
pub fn sdk(base_url: &str, token: &str) -> oxide::Client {
    let config = oxide::ClientConfig::default().with_host_and_token(base_url, token);
    oxide::Client::new_authenticated_config(&config).unwrap()
}
