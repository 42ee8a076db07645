//! Who may do what: the [`Policy`] built from `[admin]`, what each request needs
//! ([`Access`]), and the [`guard`] that refuses it before its handler runs, with one log line
//! and one count per refusal.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AdminConfig;
use super::routes::AdminState;
use super::routes::json_response;
use crate::telemetry::events::AdminRefused;

/// The only content type `POST /rule` takes.
const WASM: &str = "application/wasm";

/// `[admin]` as the guard applies it.
#[derive(Debug)]
pub(super) struct Policy {
    /// SHA-256 of the token: presented tokens are hashed and the digests compared, so the
    /// comparison takes the same time whatever the lengths.
    pub(super) token_digest: Option<[u8; 32]>,
    protect_reads: bool,
    allowed_origins: Vec<String>,
}

impl Policy {
    pub(super) fn new(config: &AdminConfig) -> Self {
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
pub(super) struct Authenticated;

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
pub(super) async fn guard(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
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
pub(super) fn closing(response: &mut Response) {
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
