//! Listening and serving: the routes behind the guard, each connection within the
//! endpoint's [`Limits`], and the shutdown that never waits on a client.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::AdminConfig;
use super::lingering::Lingering;
use super::routes::router;
use crate::shutdown::Shutdown;
use crate::swap::RuleControl;
use crate::telemetry::Metrics;

/// The largest request head read, in bytes (hyper's read buffer, which never holds a body
/// beyond it: a body is read only by the handler that takes it).
const MAX_HEAD_BYTES: usize = 64 << 10;

/// How the endpoint bounds what clients can hold: connections, time and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request head, and how long a kept-alive
    /// connection may stay idle.
    pub header_timeout: Duration,
    /// How long an upload may take, from its head to its last body byte (waiting for its turn
    /// included).
    pub body_timeout: Duration,
    /// How long a connection may live; then it is closed once its request is answered (within
    /// `close_grace`).
    pub max_connection_time: Duration,
    /// At shutdown (and past `max_connection_time`), how long a request in progress has to be
    /// answered before its connection is dropped.
    pub close_grace: Duration,
    /// After an answer, how long what the client still sends is read and discarded before the
    /// connection is closed (a lingering close: closing on unread bytes would reset the
    /// connection, and the client could lose the answer).
    pub linger: Duration,
}

impl Default for Limits {
    /// Room for probes, scrapes and operators; a client that ties up a connection lets go of
    /// it within seconds (a minute for an upload, 16 MiB at ~300 KB/s).
    fn default() -> Self {
        Self {
            max_connections: 32,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_connection_time: Duration::from_secs(300),
            close_grace: Duration::from_secs(1),
            linger: Duration::from_secs(2),
        }
    }
}

/// Binds the admin endpoint's address, so that a taken port fails at start-up.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    Ok(listener)
}

/// Serves the admin endpoint until `shutdown` is requested, within [`Limits::default`].
pub(crate) fn serve_admin(
    listener: TcpListener,
    config: &AdminConfig,
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
    shutdown: Shutdown,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let limits = Limits::default();
    let app = router(config, metrics, control, limits);
    async move {
        serve_connections(listener, app, limits, shutdown).await;
        Ok(())
    }
}

/// Accepts connections while fewer than `limits.max_connections` are open, and serves each
/// with `app` until `shutdown` is requested; then gives the requests in progress
/// `limits.close_grace` (and their lingering close `limits.linger`) and drops what is left.
async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: Shutdown,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closed) = Shutdown::new();
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = shutdown.requested() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = shutdown.requested() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::debug!(%error, "admin endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        connections.spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits,
            permit,
            closed.clone(),
        ));
    }
    drop(listener);
    closing.trigger();
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.close_grace + limits.linger, drained)
        .await
        .is_err()
    {
        tracing::info!(
            connections = connections.len(),
            "admin connections still busy at shutdown are dropped"
        );
    }
    // Dropping the set aborts what is left.
}

/// Serves one connection (holding one of the connection permits) until the client closes it,
/// a timeout closes it, its lifetime ends or the endpoint shuts down.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    _permit: OwnedSemaphorePermit,
    mut closed: Shutdown,
) {
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        hyper::service::Service::call(&app, request)
    });
    let io = TokioIo::new(Lingering::new(stream, limits.linger));
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, service);
    let mut connection = pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "admin connection ended");
            }
            return;
        }
        () = tokio::time::sleep(limits.max_connection_time) => {}
        () = closed.requested() => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.close_grace, connection).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves `app` on a loopback port within `limits` until the sender is dropped or sent;
    /// answers the address and the server's task.
    async fn served(
        app: Router,
        limits: Limits,
    ) -> (
        SocketAddr,
        crate::shutdown::ShutdownTrigger,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let at = listener.local_addr().expect("address");
        let (stop, stopped) = Shutdown::new();
        let server = tokio::spawn(serve_connections(listener, app, limits, stopped));
        (at, stop, server)
    }

    fn quick() -> Limits {
        Limits {
            max_connections: 4,
            header_timeout: Duration::from_millis(300),
            body_timeout: Duration::from_millis(300),
            max_connection_time: Duration::from_secs(60),
            close_grace: Duration::from_millis(100),
            linger: Duration::from_secs(5),
        }
    }

    /// Reads until the server closes the connection (or resets it); answers what was read.
    async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut read = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return read,
                Ok(n) => read.extend_from_slice(&buffer[..n]),
            }
        }
    }

    /// Sends a byte every 20 ms until the server closes the connection (a write fails).
    async fn trickle(stream: &mut TcpStream) {
        while stream.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn wedge_a_client_trickling_its_head_is_cut_off_at_the_header_timeout() {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (at, _stop, _server) = served(app, quick()).await;
        let mut stream = TcpStream::connect(at).await.expect("connected");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .expect("head begun");
        // Ends when the server closes: an endless trickle would otherwise hang the test.
        tokio::time::timeout(Duration::from_secs(60), trickle(&mut stream))
            .await
            .expect("the server must close a connection whose head never ends");
        // An idle kept-alive connection is closed the same way.
        let mut stream = TcpStream::connect(at).await.expect("connected");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        let answer = tokio::time::timeout(Duration::from_secs(60), read_to_close(&mut stream))
            .await
            .expect("the server must close an idle connection");
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    }

    #[tokio::test]
    async fn wedge_shutdown_drops_a_client_still_sending_its_body() {
        // The handler says when it has begun reading the body, which never ends.
        let (begun, reading) = tokio::sync::mpsc::channel::<()>(1);
        let app = Router::new().route(
            "/",
            post(move |body: Body| async move {
                let _ = begun.send(()).await;
                let read = axum::body::to_bytes(body, usize::MAX).await;
                read.map_or(0, |bytes| bytes.len()).to_string()
            }),
        );
        let mut reading = reading;
        let limits = Limits {
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            ..quick()
        };
        let (at, stop, server) = served(app, limits).await;
        let mut stream = TcpStream::connect(at).await.expect("connected");
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\nx")
            .await
            .expect("head sent");
        let trickling = tokio::spawn(async move { trickle(&mut stream).await });
        reading.recv().await.expect("the handler reads the body");
        stop.trigger();
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("a client still sending must not hold the shutdown")
            .expect("the server's task");
        tokio::time::timeout(Duration::from_secs(60), trickling)
            .await
            .expect("the trickling client's connection is closed")
            .expect("the client's task");
    }

    #[tokio::test]
    async fn wedge_connections_past_the_limit_wait_for_one_to_end() {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_secs(60),
            ..quick()
        };
        let (at, _stop, _server) = served(app, limits).await;
        let request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(at).await.expect("connected");
            stream.write_all(request).await.expect("request");
            let mut buffer = [0u8; 1024];
            let n = stream.read(&mut buffer).await.expect("answered");
            assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
            held.push(stream);
        }
        let mut third = TcpStream::connect(at).await.expect("in the backlog");
        third.write_all(request).await.expect("request");
        let mut buffer = [0u8; 1024];
        assert!(
            tokio::time::timeout(Duration::from_millis(500), third.read(&mut buffer))
                .await
                .is_err(),
            "a third connection is served while two are open"
        );
        drop(held.pop());
        let n = tokio::time::timeout(Duration::from_secs(60), third.read(&mut buffer))
            .await
            .expect("served once a connection ended")
            .expect("answered");
        assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
    }
}
