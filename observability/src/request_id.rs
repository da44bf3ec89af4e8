//! The id of the external request an internal call serves.
//!
//! Dropshot gives every request an id (the `x-request-id` response header and the `req_id`
//! of its log lines). When Nexus calls a sled agent on behalf of an external request (directly,
//! or from a saga that request started), it sends that request's id in [`HEADER`]; the sled
//! agent's server logs the header on every line of that call (dropshot's `log_headers`, as
//! `hdr_x_halyard_request_id`). So `grep <id>` over every process's log shows the request in
//! Nexus and everything it caused on the sleds.

tokio::task_local! {
    /// The external request the current task works for, if any.
    static CURRENT: Option<String>;
}

/// Runs `work` as work for request `id`: [`current`] returns it inside, and every sled agent
/// call made inside sends it in [`HEADER`].
pub async fn scope<F: std::future::Future>(id: Option<String>, work: F) -> F::Output {
    CURRENT.scope(id, work).await
}

/// The external request the current task works for (see [`scope`]).
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// The field of a saga's parameters (in the saga log) that names the external request that
/// started the saga; Nexus writes it, omdb reads it.
pub const SAGA_PARAM: &str = "request_id";

/// The request header that names the external request an internal call was made for.
pub const HEADER: &str = "x-halyard-request-id";

/// The key under which a dropshot server configured with [`log_headers`] logs [`HEADER`].
pub const LOG_KEY: &str = "hdr_x_halyard_request_id";

/// The `log_headers` setting for a server whose log lines should carry [`HEADER`].
pub fn log_headers() -> Vec<String> {
    vec![HEADER.to_string()]
}

/// [`HEADER`]'s value in a request, if it is present and printable ASCII.
pub fn from_headers(headers: &::http::HeaderMap) -> Option<String> {
    headers
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// The request that started a saga, from the saga's DAG as the saga log stores it (steno's
/// JSON: the start node holds the saga's parameters). `None` for a saga Nexus started by
/// itself.
pub fn from_saga_dag(dag: &serde_json::Value) -> Option<String> {
    let start = usize::try_from(dag["start_node"].as_u64()?).ok()?;
    dag["graph"]["nodes"]
        .get(start)?
        .get("Start")?
        .get("params")?
        .get(SAGA_PARAM)?
        .as_str()
        .map(str::to_string)
}
