//! The web console as Nexus serves it: the built page and its assets (from `console/dist`,
//! embedded at compile time, so a Nexus binary carries its console), and the console session
//! cookie.
//!
//! The console is a single page: every route it draws (`/`, `/login`, `/projects/...`,
//! `/system/...`, `/device/verify`) gets the same `index.html`, whose script reads the path
//! and calls the public `/v1` API like any other client. Its only privilege is the session
//! cookie: `POST /v1/login/token` exchanges an API token the user holds for a session (an API
//! token of the same user that expires after [`SESSION_LIFETIME`]), sent back as the
//! `session` cookie (`HttpOnly`: the page's script never sees it; `SameSite=Strict`: a
//! browser sends it only with requests from this site; `Secure` when the server speaks TLS).
//! `authn` accepts the cookie where a request has no `Authorization` header, and refuses it
//! on a request whose `Origin` is another origin (ports included, which `SameSite` does not
//! tell apart).

use dropshot::{Body, HttpError};

/// The console's page, for every route it draws.
const INDEX_HTML: &[u8] = include_bytes!("../../console/dist/index.html");
/// The console's script and style sheet, built with fixed names (see `console/README.md`).
const SCRIPT: &[u8] = include_bytes!("../../console/dist/assets/console.js");
const STYLE: &[u8] = include_bytes!("../../console/dist/assets/console.css");

/// The cookie that carries a console session.
pub const SESSION_COOKIE: &str = "session";

/// How long a console session lasts from sign-in.
pub const SESSION_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(8);

/// What the page may load and connect to: only this origin (its script, its styles — xterm.js
/// sets inline styles —, the API and the console's WebSocket), and no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// The console's page.
pub fn page() -> Result<http::Response<Body>, HttpError> {
    respond(INDEX_HTML, "text/html; charset=utf-8", "no-store")
}

/// One of the console's built assets; 404 for any other path.
pub fn asset(path: &[String]) -> Result<http::Response<Body>, HttpError> {
    let (bytes, content_type) = match path {
        [file] if file == "console.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        [file] if file == "console.css" => (STYLE, "text/css; charset=utf-8"),
        _ => {
            return Err(HttpError::for_not_found(
                None,
                format!("no console asset {:?}", path.join("/")),
            ));
        }
    };
    // Fixed names: the browser asks again each time and gets the current build.
    respond(bytes, content_type, "no-cache")
}

fn respond(
    bytes: &'static [u8],
    content_type: &str,
    cache_control: &str,
) -> Result<http::Response<Body>, HttpError> {
    http::Response::builder()
        .status(http::StatusCode::OK)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CACHE_CONTROL, cache_control)
        .header(
            http::header::CONTENT_SECURITY_POLICY,
            CONTENT_SECURITY_POLICY,
        )
        .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(http::header::X_FRAME_OPTIONS, "DENY")
        .header(http::header::REFERRER_POLICY, "same-origin")
        .body(Body::from(bytes.to_vec()))
        .map_err(|e| HttpError::for_internal_error(format!("building a response: {e}")))
}

/// The `Set-Cookie` value that starts a session (`secret`, lasting `max_age`), or ends one
/// (`None`: an empty value that expires at once).
pub fn session_cookie(secret: Option<&str>, max_age: chrono::TimeDelta, secure: bool) -> String {
    let (value, max_age) = match secret {
        Some(secret) => (secret, max_age.num_seconds()),
        None => ("", 0),
    };
    let secure = if secure { "; Secure" } else { "" };
    format!(
        "{SESSION_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    )
}

/// An empty 204 answer carrying `set_cookie`.
pub fn no_content_setting(set_cookie: &str) -> Result<http::Response<Body>, HttpError> {
    http::Response::builder()
        .status(http::StatusCode::NO_CONTENT)
        .header(http::header::SET_COOKIE, set_cookie)
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Body::empty())
        .map_err(|e| HttpError::for_internal_error(format!("building a response: {e}")))
}

/// Every value of the cookie `name` in a request's `Cookie` headers (RFC 6265 §5.4: pairs
/// separated by `;`). A value that is not visible ASCII is skipped.
pub fn cookie_values<'a>(headers: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .collect()
}

/// Whether a request's `Origin` (if it has one) is the origin it was sent to: `scheme://Host`.
/// A browser sends `Origin` with every WebSocket handshake and every non-`GET` request.
pub fn same_origin(headers: &http::HeaderMap, tls: bool) -> bool {
    let Some(origin) = headers.get(http::header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers
        .get(http::header::HOST)
        .and_then(|host| host.to_str().ok())
    else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    origin.to_str().ok() == Some(format!("{scheme}://{host}").as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(http::HeaderName, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), http::HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn cookies_are_found_among_others_and_in_every_header() {
        let map = headers(&[
            (http::header::COOKIE, "theme=dark; session=abc ;x=1"),
            (http::header::COOKIE, "session=\"def\""),
        ]);
        assert_eq!(cookie_values(&map, "session"), ["abc", "def"]);
        assert!(cookie_values(&map, "sess").is_empty());
        assert!(cookie_values(&headers(&[]), "session").is_empty());
    }

    #[test]
    fn only_this_origin_passes() {
        let host = (http::header::HOST, "127.0.0.1:12220");
        assert!(same_origin(&headers(std::slice::from_ref(&host)), false));
        let same = (http::header::ORIGIN, "http://127.0.0.1:12220");
        assert!(same_origin(&headers(&[host.clone(), same.clone()]), false));
        assert!(!same_origin(&headers(&[host.clone(), same]), true));
        let other_port = (http::header::ORIGIN, "http://127.0.0.1:8080");
        assert!(!same_origin(&headers(&[host, other_port.clone()]), false));
        assert!(!same_origin(&headers(&[other_port]), false));
    }

    #[test]
    fn the_session_cookie_is_http_only_and_strict() {
        let set = session_cookie(Some("s3cret"), SESSION_LIFETIME, false);
        assert_eq!(
            set,
            "session=s3cret; Path=/; Max-Age=28800; HttpOnly; SameSite=Strict"
        );
        assert!(session_cookie(Some("s"), SESSION_LIFETIME, true).ends_with("; Secure"));
        assert!(
            session_cookie(None, SESSION_LIFETIME, false)
                .starts_with("session=; Path=/; Max-Age=0;")
        );
    }
}
