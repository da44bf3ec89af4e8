//! The least HTTP client that asks Patroni's REST API (and, in tests, HAProxy) a question:
//! one `GET` over HTTP/1.0 on a fresh connection, answered by the status code and the body.
//! Patroni answers its health endpoints by status alone (`/primary`: 200 on the running
//! leader, 503 elsewhere), so nothing here parses JSON.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET <path>` on `address`; the status code and the body (lossy UTF-8). Connecting, writing
/// and each read give up after `timeout`.
pub fn get(address: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    // "HTTP/1.1 200 OK"
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP response from {address}: {head:?}"),
            )
        })?;
    Ok((status, body.to_owned()))
}
