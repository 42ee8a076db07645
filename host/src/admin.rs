//! The admin endpoint: `/healthz` (the process is up), `/readyz` (the rule is loaded and the
//! source, store and dead-letter queue are connected), `/metrics` (Prometheus text format) and
//! `/rule` (the active rule's info as JSON).
//!
//! Rule swaps on this instance only (see [`crate::swap`]): `POST /rule` with a component as the
//! body (`?role=shadow` to run it as a shadow) gates it and swaps it in, answering the new
//! rule or, with 422, the refusal; `GET /rule/status` shows active, previous and shadow rules,
//! the last swap and shadow disagreements; `POST /rule/promote` and `POST /rule/rollback`.
//!
//! Who may do what (`[admin]`, see [`AdminConfig`]):
//! - `/healthz` and `/readyz` are always open: probes call them.
//! - The mutating endpoints need `Authorization: Bearer <admin.token>` (compared in constant
//!   time); without a configured token they are disabled (403). A request carrying an
//!   `Origin` not in `admin.allowed_origins` is refused (403): a browser adds it to the
//!   cross-site or rebound-DNS POSTs a page could aim at a loopback port. `POST /rule` must say
//!   `Content-Type: application/wasm`, promote and rollback must carry no body and no
//!   `Content-Type` (415): a page can send a form's content types without asking the server
//!   first, not these. A bearer token is never sent by a browser on its own, so a page cannot
//!   borrow it either.
//! - `/metrics`, `/rule` and `/rule/status` are open unless `admin.protect_reads`; shadow
//!   samples in `/rule/status` are redacted unless asked for with `?samples=full` and the token.
//!
//! Every refusal is one log line and one count of `converge_admin_refusals_total{reason}`.
//! Metrics are listed in [`crate::telemetry`].
//!
//! Under abuse ([`Limits`]): a refused request is answered from its head alone, its body never
//! read (the connection is closed after the answer; what the client still sends meanwhile is
//! discarded for a moment, unbuffered, so that it reads the answer rather than a reset); an
//! upload over `rule.max_component_bytes` by its `Content-Length` likewise. At most
//! [`Limits::max_connections`] connections are served at once (more wait in the listen
//! backlog), a request head must arrive within [`Limits::header_timeout`] (also how long a
//! kept-alive connection may idle), an upload's body within [`Limits::body_timeout`], one upload
//! is read and gated at a time, and a connection lives at most [`Limits::max_connection_time`].
//! At shutdown the endpoint stops accepting, gives requests in progress
//! [`Limits::close_grace`] to be answered and drops the rest: a client never holds `serve`.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use futures::StreamExt as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

use crate::config::AdminConfig;
use crate::swap::{Refusal, Role, RuleControl, RuleRef};
use crate::telemetry::Metrics;
use crate::telemetry::events::AdminRefused;

/// The only content type `POST /rule` takes.
const WASM: &str = "application/wasm";

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

/// What the admin endpoint serves from: the metrics, the rule control and who may use it.
#[derive(Debug, Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
    policy: Arc<Policy>,
    /// One upload is read and gated at a time.
    uploads: Arc<Semaphore>,
    limits: Limits,
}

/// `[admin]` as the guard applies it.
#[derive(Debug)]
struct Policy {
    /// SHA-256 of the token: presented tokens are hashed and the digests compared, so the
    /// comparison takes the same time whatever the lengths.
    token_digest: Option<[u8; 32]>,
    protect_reads: bool,
    allowed_origins: Vec<String>,
}

impl Policy {
    fn new(config: &AdminConfig) -> Self {
        Self {
            token_digest: config
                .token
                .as_ref()
                .map(|token| Sha256::digest(token.expose().as_bytes()).into()),
            protect_reads: config.protect_reads,
            allowed_origins: config.allowed_origins.clone(),
        }
    }

    /// Whether `headers` carry the token; `Err` says why not.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let Some(expected) = &self.token_digest else {
            return Err(Refused::Disabled);
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(presented) = presented else {
            return Err(Refused::NoToken);
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if bool::from(digest.ct_eq(expected)) {
            Ok(())
        } else {
            Err(Refused::BadToken)
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }
}

/// Why the guard refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// The endpoint needs the token and none is configured.
    Disabled,
    /// A foreign `Origin`.
    Origin,
    /// No bearer token presented.
    NoToken,
    /// A bearer token that is not the admin token.
    BadToken,
    /// The wrong content type, or a body where none is taken.
    ContentType,
}

impl Refused {
    fn reason(self) -> &'static str {
        match self {
            Refused::Disabled => "disabled",
            Refused::Origin => "origin",
            Refused::NoToken => "no_token",
            Refused::BadToken => "bad_token",
            Refused::ContentType => "content_type",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refused::Disabled | Refused::Origin => StatusCode::FORBIDDEN,
            Refused::NoToken | Refused::BadToken => StatusCode::UNAUTHORIZED,
            Refused::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    fn message(self, path: &str) -> String {
        match self {
            Refused::Disabled => format!(
                "{path} needs the admin token and none is configured: set admin.token (or the \
                 CONVERGE_ADMIN_TOKEN environment variable) to enable it"
            ),
            Refused::Origin => "requests from this Origin are refused; add it to \
                                admin.allowed_origins to allow it"
                .to_owned(),
            Refused::NoToken => {
                format!("{path} needs the header `Authorization: Bearer <admin token>`")
            }
            Refused::BadToken => "the bearer token is not the admin token".to_owned(),
            Refused::ContentType if path == "/rule" => {
                format!("POST /rule takes a component with `Content-Type: {WASM}`")
            }
            Refused::ContentType => format!("POST {path} takes no body and no Content-Type"),
        }
    }

    fn response(self, path: &str) -> Response {
        let mut response = json_response(
            self.status(),
            &serde_json::json!({ "error": self.message(path) }),
        );
        let challenge = match self {
            Refused::NoToken => Some("Bearer realm=\"converge admin\""),
            Refused::BadToken => Some("Bearer realm=\"converge admin\", error=\"invalid_token\""),
            _ => None,
        };
        if let Some(challenge) = challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

/// Marks a request that presented the admin token (set by [`guard`]).
#[derive(Debug, Clone, Copy)]
struct Authenticated;

/// What a request needs before its handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Probes: nothing.
    Open,
    /// A read; `samples` when it asks for full shadow samples.
    Read { samples: bool },
    /// A swap; `wasm` when it uploads a component (otherwise it takes no body).
    Mutation { wasm: bool },
}

fn access(method: &Method, path: &str, query: Option<&str>) -> Access {
    match (method, path) {
        (_, "/healthz" | "/readyz") => Access::Open,
        (&Method::POST, path) => Access::Mutation {
            wasm: path == "/rule",
        },
        (_, "/rule/status") => Access::Read {
            samples: query.is_some_and(asks_full_samples),
        },
        _ => Access::Read { samples: false },
    }
}

fn asks_full_samples(query: &str) -> bool {
    query_pairs(query).any(|(name, value)| name == "samples" && value == "full")
}

/// The `name=value` pairs of a query, as they are (the names and values the guard looks for
/// need no decoding).
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Checks a request against the policy before its handler runs (see the module's text).
async fn guard(State(state): State<AdminState>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let access = access(request.method(), &path, request.uri().query());
    let headers = request.headers();
    let authenticated = state.policy.authenticate(headers);
    let verdict = match access {
        Access::Open => Ok(()),
        Access::Read { samples } if samples || state.policy.protect_reads => authenticated,
        Access::Read { .. } => Ok(()),
        Access::Mutation { wasm } => state
            .policy
            .token_digest
            .map_or(Err(Refused::Disabled), |_| Ok(()))
            .and_then(|()| match headers.get(header::ORIGIN) {
                Some(origin)
                    if !origin
                        .to_str()
                        .is_ok_and(|origin| state.policy.origin_allowed(origin)) =>
                {
                    Err(Refused::Origin)
                }
                _ => Ok(()),
            })
            .and(authenticated)
            .and_then(|()| body_allowed(headers, wasm)),
    };
    if let Err(refused) = verdict {
        let method = request.method().as_str().to_owned();
        state.metrics.emit(AdminRefused {
            reason: refused.reason(),
            method: &method,
            path: &path,
            peer: request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(peer)| *peer),
            origin: headers
                .get(header::ORIGIN)
                .and_then(|origin| origin.to_str().ok()),
        });
        // The body is never read: the answer goes out from the head, and the connection is
        // closed after it (lingering a moment over what the client still sends, unbuffered).
        let mut response = refused.response(&path);
        if has_body(request.headers()) {
            closing(&mut response);
        }
        return response;
    }
    if authenticated.is_ok() {
        request.extensions_mut().insert(Authenticated);
    }
    next.run(request).await
}

/// Whether a request says it carries a body.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

/// Marks `response` as the connection's last: its request's body is left unread.
fn closing(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// `POST /rule` takes `application/wasm` (parameters aside); promote and rollback take
/// nothing: no content type, no body.
fn body_allowed(headers: &HeaderMap, wasm: bool) -> Result<(), Refused> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default());
    let allowed = if wasm {
        content_type.is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(WASM))
        })
    } else {
        let empty = headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|length| length.as_bytes() == b"0");
        content_type.is_none() && empty && !headers.contains_key(header::TRANSFER_ENCODING)
    };
    if allowed {
        Ok(())
    } else {
        Err(Refused::ContentType)
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// The active rule's info.
async fn rule(State(state): State<AdminState>) -> Response {
    json_response(StatusCode::OK, &state.control.active_info())
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(body).unwrap_or_default(),
    )
        .into_response()
}

fn swap_response(result: Result<RuleRef, Refusal>) -> Response {
    match result {
        Ok(applied) => json_response(StatusCode::OK, &applied),
        Err(refusal) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &refusal),
    }
}

/// How much of the shadow samples `/rule/status` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Samples {
    /// Keys, payloads and reasons replaced (the default).
    #[default]
    Redacted,
    /// As decided: only with the token.
    Full,
}

#[derive(Debug, serde::Deserialize)]
struct StatusQuery {
    #[serde(default)]
    samples: Samples,
}

async fn rule_status(
    State(state): State<AdminState>,
    Query(query): Query<StatusQuery>,
    authenticated: Option<Extension<Authenticated>>,
) -> Response {
    let status = state.control.status();
    // The guard refuses `samples=full` without the token; redacting here too keeps the
    // samples hidden should the two ever disagree.
    let status = if query.samples == Samples::Full && authenticated.is_some() {
        status
    } else {
        status.redacted()
    };
    json_response(StatusCode::OK, &status)
}

#[derive(Debug, serde::Deserialize)]
struct UploadQuery {
    #[serde(default = "default_role")]
    role: Role,
    /// Bring back a version this instance refused (`?force=true`): logged and counted, and
    /// judged again (gates where it never passed them, probation).
    #[serde(default)]
    force: bool,
}

/// `POST /rule/rollback?force=true`: roll back to a previous version that was refused since.
#[derive(Debug, Default, serde::Deserialize)]
struct ForceQuery {
    #[serde(default)]
    force: bool,
}

fn default_role() -> Role {
    Role::Active
}

/// Gates an uploaded component and swaps it in on this instance only.
async fn upload_rule(
    State(state): State<AdminState>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = state.control.max_component_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok())
        .and_then(|length| length.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&size| size > limit as u64) {
        return too_large(size, limit);
    }
    // One upload at a time, its body within the body time (its wait for its turn included).
    let deadline = Instant::now() + state.limits.body_timeout;
    let Ok(Ok(permit)) =
        tokio::time::timeout_at(deadline, Arc::clone(&state.uploads).acquire_owned()).await
    else {
        return body_timed_out(state.limits.body_timeout);
    };
    let bytes = match tokio::time::timeout_at(deadline, read_body(body, limit)).await {
        Err(_) => return body_timed_out(state.limits.body_timeout),
        Ok(Err(BodyRead::TooLarge(size))) => return too_large(size, limit),
        Ok(Err(BodyRead::Failed(error))) => {
            let mut response = json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({ "error": format!("cannot read the upload: {error}") }),
            );
            closing(&mut response);
            return response;
        }
        Ok(Ok(bytes)) => bytes,
    };
    let control = state.control;
    let offered = tokio::task::spawn_blocking(move || {
        let _permit: OwnedSemaphorePermit = permit;
        if query.force {
            control.offer_overriding(&bytes, None, "admin", query.role)
        } else {
            control.offer(&bytes, None, "admin", query.role)
        }
    })
    .await;
    match offered {
        Ok(result) => swap_response(result),
        Err(error) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": error.to_string()}),
        ),
    }
}

/// Why an upload's body was not read whole.
enum BodyRead {
    /// Longer than the cap: this many bytes at least.
    TooLarge(u64),
    /// The client broke off or sent something unreadable.
    Failed(axum::Error),
}

/// Reads a body of at most `limit` bytes, stopping at the first byte past it.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, BodyRead> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyRead::Failed)?;
        let size = bytes.len() + chunk.len();
        if size > limit {
            return Err(BodyRead::TooLarge(size as u64));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// 413, from the declared length or as far as the body was read; the rest is left unread.
fn too_large(size: u64, limit: usize) -> Response {
    let mut response = json_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &serde_json::json!({
            "error": format!(
                "the upload is {size} bytes or more, over the cap of {limit} bytes \
                 (rule.max_component_bytes)"
            )
        }),
    );
    closing(&mut response);
    response
}

/// 408: the upload did not arrive within the body time.
fn body_timed_out(within: Duration) -> Response {
    let mut response = json_response(
        StatusCode::REQUEST_TIMEOUT,
        &serde_json::json!({
            "error": format!("the upload did not arrive within {} s", within.as_secs())
        }),
    );
    closing(&mut response);
    response
}

async fn promote_rule(State(state): State<AdminState>) -> Response {
    swap_response(state.control.promote("admin"))
}

async fn rollback_rule(
    State(state): State<AdminState>,
    Query(query): Query<ForceQuery>,
) -> Response {
    swap_response(if query.force {
        state.control.rollback_overriding("admin")
    } else {
        state.control.rollback("admin")
    })
}

/// Binds the admin endpoint's address, so that a taken port fails at start-up.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    Ok(listener)
}

/// The endpoint's routes behind the guard.
fn router(
    config: &AdminConfig,
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
    limits: Limits,
) -> Router {
    let state = AdminState {
        metrics,
        control,
        policy: Arc::new(Policy::new(config)),
        uploads: Arc::new(Semaphore::new(1)),
        limits,
    };
    if state.policy.token_digest.is_none() {
        tracing::info!("no admin token: rule swaps through the admin endpoint are disabled");
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/rule", get(rule).post(upload_rule))
        .route("/rule/status", get(rule_status))
        .route("/rule/promote", post(promote_rule))
        .route("/rule/rollback", post(rollback_rule))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serves the admin endpoint until `shutdown` resolves, within [`Limits::default`].
pub(crate) fn serve_admin(
    listener: TcpListener,
    config: &AdminConfig,
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let limits = Limits::default();
    let app = router(config, metrics, control, limits);
    async move {
        serve_connections(listener, app, limits, shutdown).await;
        Ok(())
    }
}

/// Accepts connections while fewer than `limits.max_connections` are open, and serves each
/// with `app` until `shutdown` resolves; then gives the requests in progress
/// `limits.close_grace` (and their lingering close `limits.linger`) and drops what is left.
async fn serve_connections(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (closing, closed) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
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
    let _ = closing.send(true);
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
    mut closed: watch::Receiver<bool>,
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
        _ = closed.wait_for(|closed| *closed) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(limits.close_grace, connection).await;
}

/// A connection's stream whose shutdown lingers: once the answer is out, the write side is
/// closed and what the client still sends (a body the handler never read) is read into a
/// scratch buffer and dropped, until the client closes or `linger` has passed. Closing a socket
/// that has unread bytes resets the connection, and the client could lose the answer.
#[derive(Debug)]
struct Lingering {
    stream: TcpStream,
    linger: Duration,
    /// Set once the write side is closed: when lingering ends.
    until: Option<Pin<Box<Sleep>>>,
}

impl Lingering {
    fn new(stream: TcpStream, linger: Duration) -> Self {
        Self {
            stream,
            linger,
            until: None,
        }
    }
}

impl AsyncRead for Lingering {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.until.is_none() {
            if ready!(Pin::new(&mut this.stream).poll_shutdown(cx)).is_err() {
                return Poll::Ready(Ok(()));
            }
            this.until = Some(Box::pin(tokio::time::sleep(this.linger)));
        }
        let mut scratch = [0u8; 8 << 10];
        loop {
            if let Some(until) = &mut this.until
                && until.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ok(()));
            }
            let mut discarded = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut discarded) {
                Poll::Ready(Ok(())) if !discarded.filled().is_empty() => {}
                // The client closed (or reset) its side: nothing more can be lost.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves `app` on a loopback port within `limits` until the sender is dropped or sent;
    /// answers the address and the server's task.
    async fn served(
        app: Router,
        limits: Limits,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bound");
        let at = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_connections(listener, app, limits, async move {
            let _ = stopped.await;
        }));
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
        let _ = stop.send(());
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

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).expect("header"));
        }
        map
    }

    #[test]
    fn the_token_is_checked_by_digest_and_scheme() {
        let mut config = AdminConfig::default();
        let policy = Policy::new(&config);
        assert_eq!(
            policy.authenticate(&HeaderMap::new()),
            Err(Refused::Disabled)
        );
        config.token = Some(crate::redact::Secret::new("0123456789abcdef-token"));
        let policy = Policy::new(&config);
        let with = |value: &str| policy.authenticate(&headers(&[(header::AUTHORIZATION, value)]));
        assert_eq!(with("Bearer 0123456789abcdef-token"), Ok(()));
        assert_eq!(with("bearer 0123456789abcdef-token"), Ok(()));
        assert_eq!(with("Bearer 0123456789abcdef-toke"), Err(Refused::BadToken));
        assert_eq!(with("Basic 0123456789abcdef-token"), Err(Refused::NoToken));
        assert_eq!(with("0123456789abcdef-token"), Err(Refused::NoToken));
        assert_eq!(
            policy.authenticate(&HeaderMap::new()),
            Err(Refused::NoToken)
        );
    }

    #[test]
    fn uploads_take_wasm_and_other_swaps_take_nothing() {
        let wasm = |value: &str| body_allowed(&headers(&[(header::CONTENT_TYPE, value)]), true);
        assert_eq!(wasm("application/wasm"), Ok(()));
        assert_eq!(wasm("Application/WASM; charset=binary"), Ok(()));
        for form in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            assert_eq!(wasm(form), Err(Refused::ContentType), "{form}");
            assert_eq!(
                body_allowed(&headers(&[(header::CONTENT_TYPE, form)]), false),
                Err(Refused::ContentType),
                "{form}"
            );
        }
        assert_eq!(
            body_allowed(&HeaderMap::new(), true),
            Err(Refused::ContentType)
        );
        assert_eq!(body_allowed(&HeaderMap::new(), false), Ok(()));
        assert_eq!(
            body_allowed(&headers(&[(header::CONTENT_LENGTH, "0")]), false),
            Ok(())
        );
        assert_eq!(
            body_allowed(&headers(&[(header::CONTENT_LENGTH, "3")]), false),
            Err(Refused::ContentType)
        );
    }

    #[test]
    fn requests_are_classified_by_method_and_path() {
        assert_eq!(access(&Method::GET, "/healthz", None), Access::Open);
        assert_eq!(access(&Method::POST, "/readyz", None), Access::Open);
        assert_eq!(
            access(&Method::POST, "/rule", Some("role=shadow")),
            Access::Mutation { wasm: true }
        );
        assert_eq!(
            access(&Method::POST, "/rule/rollback", None),
            Access::Mutation { wasm: false }
        );
        assert_eq!(
            access(&Method::GET, "/rule/status", Some("x=1&samples=full")),
            Access::Read { samples: true }
        );
        assert_eq!(
            access(&Method::GET, "/rule/status", Some("samples=redacted")),
            Access::Read { samples: false }
        );
        assert_eq!(
            access(&Method::GET, "/metrics", Some("samples=full")),
            Access::Read { samples: false }
        );
    }
}
