//! The TLS front of a service's API.
//!
//! dropshot 0.18 terminates TLS itself but hands a handler only the remote address, never the
//! connection's peer certificate, and offers no hook on accepted connections. So the service's
//! dropshot server listens on loopback in plain HTTP, and this front listens on the service's
//! address: it completes the TLS handshake (a client without a certificate from the CA fails
//! it), then forwards each HTTP request on that connection to the dropshot server with the
//! client's verified certificate in [`PEER_CERTIFICATE_HEADER`] and the process's
//! [`FrontSecret`] (headers of those names the client sent are removed first). The identity
//! travels inside the request it belongs to, so no table keyed by address or port can hand
//! one connection's identity to another. Upgrades (the serial console's WebSocket) are
//! forwarded too: once both sides switched protocols, bytes are copied both ways.

use crate::TlsError;
use crate::peer::{FRONT_SECRET_HEADER, FrontSecret, PEER_CERTIFICATE_HEADER};
use base64::Engine;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use slog::{Logger, debug, warn};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};

type FrontBody = BoxBody<Bytes, hyper::Error>;

/// A running front. Closing it (or dropping it) stops accepting and ends every connection it
/// accepted, upgraded ones included, as a closed server's would end.
pub struct Front {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Front {
    /// Listens on `bind` and forwards to `backend` (the service's dropshot server, on loopback).
    pub async fn start(
        bind: SocketAddr,
        backend: SocketAddr,
        tls: rustls::ServerConfig,
        secret: FrontSecret,
        log: &Logger,
    ) -> Result<Front, TlsError> {
        let listener = TcpListener::bind(bind)
            .await
            .map_err(|source| TlsError::Bind {
                address: bind,
                source,
            })?;
        let address = listener.local_addr().map_err(|source| TlsError::Bind {
            address: bind,
            source,
        })?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let log = log.new(slog::o!("tls_front" => address.to_string()));
        let (shutdown, closed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener, acceptor, backend, secret, closed, log,
        ));
        Ok(Front {
            address,
            task,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    pub fn close(&self) {
        self.task.abort();
        self.shutdown.send_replace(true);
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs `work` until it ends or the front closes.
async fn until_closed(
    mut closed: tokio::sync::watch::Receiver<bool>,
    work: impl Future<Output = ()>,
) {
    tokio::select! {
        () = work => {}
        _ = closed.wait_for(|closed| *closed) => {}
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    backend: SocketAddr,
    secret: FrontSecret,
    closed: tokio::sync::watch::Receiver<bool>,
    log: Logger,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Transient (a connection reset before accept, out of descriptors): go on.
                warn!(log, "accepting a connection"; "error" => %error);
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let secret = secret.clone();
        let log = log.new(slog::o!("remote_addr" => remote.to_string()));
        let closed = closed.clone();
        tokio::spawn(until_closed(closed.clone(), async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(error) => {
                    // Most often a client without a certificate from the CA.
                    warn!(log, "TLS handshake refused"; "error" => %error);
                    return;
                }
            };
            let Some(certificate) = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .cloned()
            else {
                warn!(log, "TLS client without a certificate after the handshake");
                return;
            };
            serve_connection(tls, certificate, backend, secret, closed, log).await;
        }));
    }
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    certificate: CertificateDer<'static>,
    backend: SocketAddr,
    secret: FrontSecret,
    closed: tokio::sync::watch::Receiver<bool>,
    log: Logger,
) {
    let encoded = base64::engine::general_purpose::STANDARD.encode(certificate.as_ref());
    let certificate = http::HeaderValue::from_str(&encoded).expect("base64 is a valid header");
    let secret = http::HeaderValue::from_str(secret.value()).expect("base64 is a valid header");
    let service_log = log.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let certificate = certificate.clone();
        let secret = secret.clone();
        let log = service_log.clone();
        let closed = closed.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                match forward(request, backend, certificate, secret, closed, &log).await {
                    Ok(response) => response,
                    Err(message) => {
                        warn!(log, "forwarding a request to the service"; "error" => %message);
                        bad_gateway()
                    }
                },
            )
        }
    });
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades()
        .await
    {
        debug!(log, "TLS connection ended"; "error" => %error);
    }
}

async fn forward(
    mut request: Request<Incoming>,
    backend: SocketAddr,
    certificate: http::HeaderValue,
    secret: http::HeaderValue,
    closed: tokio::sync::watch::Receiver<bool>,
    log: &Logger,
) -> Result<Response<FrontBody>, String> {
    let headers = request.headers_mut();
    headers.remove(PEER_CERTIFICATE_HEADER);
    headers.remove(FRONT_SECRET_HEADER);
    headers.insert(PEER_CERTIFICATE_HEADER, certificate);
    headers.insert(FRONT_SECRET_HEADER, secret);
    let client_upgrade = hyper::upgrade::on(&mut request);

    let stream = TcpStream::connect(backend)
        .await
        .map_err(|e| format!("connecting to {backend}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {backend}: {e}"))?;
    let connection_log = log.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            debug!(connection_log, "connection to the service ended"; "error" => %error);
        }
    });
    let mut response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("sending the request to {backend}: {e}"))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let service_upgrade = hyper::upgrade::on(&mut response);
        let log = log.clone();
        tokio::spawn(until_closed(closed, async move {
            match futures_join(client_upgrade, service_upgrade).await {
                Ok((client, service)) => {
                    let mut client = TokioIo::new(client);
                    let mut service = TokioIo::new(service);
                    if let Err(error) =
                        tokio::io::copy_bidirectional(&mut client, &mut service).await
                    {
                        debug!(log, "upgraded connection ended"; "error" => %error);
                    }
                }
                Err(error) => warn!(log, "upgrading the connection"; "error" => %error),
            }
        }));
    }
    Ok(response.map(|body| body.boxed()))
}

async fn futures_join(
    client: hyper::upgrade::OnUpgrade,
    service: hyper::upgrade::OnUpgrade,
) -> Result<(hyper::upgrade::Upgraded, hyper::upgrade::Upgraded), hyper::Error> {
    let (client, service) = tokio::join!(client, service);
    Ok((client?, service?))
}

fn bad_gateway() -> Response<FrontBody> {
    let mut response = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
