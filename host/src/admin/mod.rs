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
//!
//! Its files, and what each holds: the module map in ARCHITECTURE.md.

mod config;
#[cfg(feature = "http")]
mod guard;
#[cfg(feature = "http")]
mod lingering;
#[cfg(feature = "http")]
mod routes;
#[cfg(feature = "http")]
mod server;

pub use config::{ADMIN_TOKEN_ENV, AdminConfig, DEFAULT_ADMIN_LISTEN, MIN_ADMIN_TOKEN_CHARS};
#[cfg(feature = "http")]
pub(crate) use server::{bind, serve_admin};
