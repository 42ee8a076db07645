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

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AdminConfig;
use crate::swap::{Refusal, Role, RuleControl, RuleRef};
use crate::telemetry::Metrics;
use crate::telemetry::events::AdminRefused;

/// The only content type `POST /rule` takes.
const WASM: &str = "application/wasm";

/// What the admin endpoint serves from: the metrics, the rule control and who may use it.
#[derive(Debug, Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
    policy: Arc<Policy>,
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
        // Read what the client is still sending (as much as an upload may be): a connection
        // closed on unread bytes is reset, and the client loses the answer.
        let limit = state.control.max_component_bytes();
        let _ = axum::body::to_bytes(request.into_body(), limit).await;
        return refused.response(&path);
    }
    if authenticated.is_ok() {
        request.extensions_mut().insert(Authenticated);
    }
    next.run(request).await
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
}

fn default_role() -> Role {
    Role::Active
}

/// Gates an uploaded component and swaps it in on this instance only.
async fn upload_rule(
    State(state): State<AdminState>,
    Query(query): Query<UploadQuery>,
    body: Bytes,
) -> Response {
    let control = state.control;
    let offered =
        tokio::task::spawn_blocking(move || control.offer(&body, None, "admin", query.role)).await;
    match offered {
        Ok(result) => swap_response(result),
        Err(error) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &serde_json::json!({"error": error.to_string()}),
        ),
    }
}

async fn promote_rule(State(state): State<AdminState>) -> Response {
    swap_response(state.control.promote("admin"))
}

async fn rollback_rule(State(state): State<AdminState>) -> Response {
    swap_response(state.control.rollback("admin"))
}

/// Binds the admin endpoint's address, so that a taken port fails at start-up.
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    Ok(listener)
}

/// The endpoint's routes behind the guard.
fn router(config: &AdminConfig, metrics: Arc<Metrics>, control: Arc<RuleControl>) -> Router {
    // The largest rule component accepted: `rule.max_component_bytes`, as on every path.
    let max_rule_bytes = control.max_component_bytes();
    let state = AdminState {
        metrics,
        control,
        policy: Arc::new(Policy::new(config)),
    };
    if state.policy.token_digest.is_none() {
        tracing::info!("no admin token: rule swaps through the admin endpoint are disabled");
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/rule",
            get(rule)
                .post(upload_rule)
                .layer(DefaultBodyLimit::max(max_rule_bytes)),
        )
        .route("/rule/status", get(rule_status))
        .route("/rule/promote", post(promote_rule))
        .route("/rule/rollback", post(rollback_rule))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

/// Serves the admin endpoint until `shutdown` resolves.
pub(crate) fn serve_admin(
    listener: tokio::net::TcpListener,
    config: &AdminConfig,
    metrics: Arc<Metrics>,
    control: Arc<RuleControl>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let app = router(config, metrics, control);
    async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
