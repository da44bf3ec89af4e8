//! Metrics and log levels for a dropshot server, from the record dropshot logs as each request
//! completes ("request completed", with the request's method, URI, response code and latency).
//!
//! Give the server a logger made by [`server_logger`]: every request then counts in
//! `halyard_http_requests_total{api, endpoint, status}` and
//! `halyard_http_request_duration_seconds{api, endpoint}`, where `endpoint` is the route
//! template (`POST /v1/instances/{instance}/start`), never the raw path, so ids don't explode
//! the label set. Requests refused before a handler ran (a bad path, a malformed body) count
//! too, which wrapping handlers would miss.
//!
//! Routine traffic (successful reads, and the endpoints a server names as routine, such as
//! periodic registrations and state reports) is logged at debug instead of info, so a
//! terminal at the default level shows what changed rather than a scroll of polls.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use slog::{Drain, KV, Key, Level, Logger, OwnedKVList, Record, RecordStatic, Serializer};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// The message dropshot logs once per request, when its response is ready.
const REQUEST_COMPLETED: &str = "request completed";

/// The message dropshot logs for every TCP connection (routine: logged at debug).
const CONNECTION_ACCEPTED: &str = "accepted connection";

/// The label of a request that matched no route (dropshot answers it with 404 or 405).
pub const UNMATCHED: &str = "unmatched";

/// An API's endpoints as route templates, for matching request paths to the endpoint they
/// reached.
#[derive(Debug, Clone)]
pub struct Routes {
    routes: Vec<Route>,
}

#[derive(Debug, Clone)]
struct Route {
    method: String,
    /// `None` for a path variable (`{instance}`), which matches any one segment.
    segments: Vec<Option<String>>,
    label: String,
}

impl Routes {
    /// The routes of a dropshot API.
    pub fn from_api<C: dropshot::ServerContext>(
        api: &dropshot::ApiDescription<C>,
    ) -> Result<Routes, serde_json::Error> {
        let document = api
            .openapi("routes", semver::Version::new(0, 0, 0))
            .json()?;
        Ok(Routes::from_openapi(&document))
    }

    /// The routes of an OpenAPI document (what dropshot's `ApiDescription::openapi` makes).
    pub fn from_openapi(document: &serde_json::Value) -> Routes {
        let mut routes = Vec::new();
        let paths = document.get("paths").and_then(|p| p.as_object());
        for (path, item) in paths.into_iter().flatten() {
            let Some(item) = item.as_object() else {
                continue;
            };
            for method in item.keys() {
                if !matches!(
                    method.as_str(),
                    "get" | "put" | "post" | "delete" | "patch" | "head" | "options"
                ) {
                    continue;
                }
                let method = method.to_ascii_uppercase();
                let segments = split(path)
                    .map(|s| (!(s.starts_with('{') && s.ends_with('}'))).then(|| s.to_string()))
                    .collect();
                routes.push(Route {
                    label: format!("{method} {path}"),
                    method,
                    segments,
                });
            }
        }
        Routes { routes }
    }

    /// The endpoint (`METHOD /template`) that `method` on `uri` (a path, with or without a
    /// query) reaches; [`UNMATCHED`] if none. Where several match, the one with the most
    /// literal segments wins, as in dropshot's router.
    pub fn endpoint(&self, method: &str, uri: &str) -> &str {
        let path = uri.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = split(path).collect();
        self.routes
            .iter()
            .filter(|route| route.method == method && route.segments.len() == segments.len())
            .filter(|route| {
                route
                    .segments
                    .iter()
                    .zip(&segments)
                    .all(|(want, got)| want.as_deref().is_none_or(|literal| literal == *got))
            })
            .max_by_key(|route| route.segments.iter().filter(|s| s.is_some()).count())
            .map_or(UNMATCHED, |route| route.label.as_str())
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

/// The request metrics of one process (each of its servers labels its own as `api`).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> Result<HttpMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "halyard_http_requests_total",
                "HTTP requests completed, by API, endpoint (route template) and status code",
            ),
            &["api", "endpoint", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "halyard_http_request_duration_seconds",
                "Time from a request's arrival to its response, by API and endpoint",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["api", "endpoint"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        Ok(HttpMetrics { requests, latency })
    }
}

/// What a server says about its traffic: its API's name, routes, and which endpoints are
/// routine (logged at debug when they succeed, like every successful `GET`).
pub struct ServerObservation {
    pub api: &'static str,
    pub routes: Routes,
    pub routine: Vec<String>,
    pub metrics: HttpMetrics,
}

/// The logger to hand a dropshot server: it logs through `parent`, counts every completed
/// request, and demotes routine traffic to debug.
pub fn server_logger(parent: &Logger, observation: ServerObservation) -> Logger {
    Logger::root(
        ObservingDrain {
            parent: parent.clone(),
            observation: AssertUnwindSafe(Arc::new(observation)),
        },
        slog::o!(),
    )
}

struct ObservingDrain {
    parent: Logger,
    /// Counters and histograms are atomics: a panic elsewhere cannot leave them half-updated.
    observation: AssertUnwindSafe<Arc<ServerObservation>>,
}

impl Drain for ObservingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if record.msg().as_str() == Some(CONNECTION_ACCEPTED) {
            return log_at_debug(&self.parent, record, values);
        }
        if record.msg().as_str() != Some(REQUEST_COMPLETED) {
            return Drain::log(&self.parent, record, values);
        }
        let mut fields = CompletedRequest::default();
        // Both can only fail if the serializer does; ours never does.
        let _ = values.serialize(record, &mut fields);
        let _ = record.kv().serialize(record, &mut fields);
        let observation = &self.observation;
        let endpoint = observation.routes.endpoint(&fields.method, &fields.uri);
        if let Some(status) = fields.status {
            observation
                .metrics
                .requests
                .with_label_values(&[observation.api, endpoint, &status.to_string()])
                .inc();
        }
        if let Some(latency_us) = fields.latency_us {
            observation
                .metrics
                .latency
                .with_label_values(&[observation.api, endpoint])
                .observe(latency_us as f64 / 1e6);
        }
        let succeeded = fields.status.is_some_and(|s| s < 400);
        let routine = fields.method == "GET" || observation.routine.iter().any(|r| r == endpoint);
        if succeeded && routine {
            return log_at_debug(&self.parent, record, values);
        }
        Drain::log(&self.parent, record, values)
    }
}

/// Logs an info `record` at debug instead (other levels as they are).
fn log_at_debug(
    parent: &Logger,
    record: &Record<'_>,
    values: &OwnedKVList,
) -> Result<(), slog::Never> {
    if record.level() != Level::Info {
        return Drain::log(parent, record, values);
    }
    let demoted = RecordStatic {
        location: record.location(),
        tag: record.tag(),
        level: Level::Debug,
    };
    let record = Record::new(&demoted, record.msg(), record.kv());
    Drain::log(parent, &record, values)
}

/// A logger for a chatty component whose info lines are routine (steno's executor logs every
/// saga's whole DAG as it is created): its info records go to `parent` at debug.
pub fn info_at_debug(parent: &Logger) -> Logger {
    Logger::root(InfoAtDebug(parent.clone()), slog::o!())
}

struct InfoAtDebug(Logger);

impl Drain for InfoAtDebug {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        log_at_debug(&self.0, record, values)
    }
}

/// The parts of dropshot's "request completed" record that the metrics need.
#[derive(Default)]
struct CompletedRequest {
    method: String,
    uri: String,
    status: Option<u16>,
    latency_us: Option<u64>,
}

impl Serializer for CompletedRequest {
    fn emit_arguments(&mut self, key: Key, value: &fmt::Arguments<'_>) -> slog::Result {
        match key.as_ref() {
            "method" => self.method = value.to_string(),
            "uri" => self.uri = value.to_string(),
            "response_code" => self.status = value.to_string().parse().ok(),
            "latency_us" => self.latency_us = value.to_string().parse().ok(),
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        Routes::from_openapi(&serde_json::json!({
            "paths": {
                "/v1/instances": { "get": {}, "post": {} },
                "/v1/instances/{instance}": { "get": {}, "delete": {} },
                "/v1/instances/{instance}/start": { "post": {} },
                "/v1/instances/default": { "get": {} },
            }
        }))
    }

    #[test]
    fn paths_match_their_route_template() {
        let routes = routes();
        assert_eq!(
            routes.endpoint("POST", "/v1/instances/web/start?project=demo"),
            "POST /v1/instances/{instance}/start"
        );
        assert_eq!(
            routes.endpoint("GET", "/v1/instances?project=demo&limit=5"),
            "GET /v1/instances"
        );
        assert_eq!(
            routes.endpoint("DELETE", "/v1/instances/0f6f4e9c"),
            "DELETE /v1/instances/{instance}"
        );
        // A literal segment beats a variable one.
        assert_eq!(
            routes.endpoint("GET", "/v1/instances/default"),
            "GET /v1/instances/default"
        );
    }

    #[test]
    fn unknown_paths_and_methods_are_unmatched() {
        let routes = routes();
        assert_eq!(routes.endpoint("GET", "/v1/nothing"), UNMATCHED);
        assert_eq!(routes.endpoint("PATCH", "/v1/instances"), UNMATCHED);
        assert_eq!(
            routes.endpoint("POST", "/v1/instances/a/start/b"),
            UNMATCHED
        );
    }
}
