//! What an operator sees of a Halyard service, shared by Nexus and the sled agents:
//!
//! - [`http`]: per-endpoint request counts and latency histograms for a dropshot server,
//!   taken from the "request completed" record dropshot logs for every request (so requests
//!   refused before any handler ran count too), and routine traffic logged at debug rather
//!   than info.
//! - [`request_id`]: the header that carries the id of the external request an internal call
//!   was made for, so one `grep` follows a request through every process.
//! - [`metrics_response`]: a Prometheus registry as the text exposition format, for a
//!   `GET /metrics` endpoint.

pub mod http;
pub mod request_id;

pub use prometheus;

/// A Prometheus registry rendered as the text exposition format (`text/plain; version=0.0.4`),
/// as a dropshot response.
pub fn metrics_response(
    registry: &prometheus::Registry,
) -> Result<::http::Response<dropshot::Body>, dropshot::HttpError> {
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut text = Vec::new();
    encoder
        .encode(&registry.gather(), &mut text)
        .map_err(|e| dropshot::HttpError::for_internal_error(format!("encoding metrics: {e}")))?;
    ::http::Response::builder()
        .status(::http::StatusCode::OK)
        .header(::http::header::CONTENT_TYPE, encoder.format_type())
        .body(text.into())
        .map_err(|e| dropshot::HttpError::for_internal_error(format!("metrics response: {e}")))
}

/// A log level as `--log-level` takes it: trace, debug, info, warning (or warn), error,
/// critical (or crit).
pub fn parse_log_level(text: &str) -> Result<slog::Level, String> {
    let level = match text {
        "warn" => "warning",
        "crit" => "critical",
        other => other,
    };
    level.parse::<slog::Level>().map_err(|()| {
        format!("unknown log level {text:?} (trace, debug, info, warning, error or critical)")
    })
}
