//! Secrets kept out of what converge prints: passwords in URLs, and the admin token.
//!
//! [`redact`] finds every `scheme://userinfo@host...` in a text and replaces the password (or a
//! userinfo that is a bare token) with `***`, and the value of a query parameter whose name
//! says it is a secret (`password`, `token`, `secret`, `api_key`, ...). It works on free text,
//! not on one parsed URL, because what must not leak is most often a URL inside an error
//! message, and a URL that fails to parse (a password with an unencoded `/` or `#`) is printed
//! exactly when it fails. Every error converge prints and every log line pass through it
//! (`main` and [`stderr_writer`]); places that name a URL on purpose call it as well.
//!
//! [`Secret`] holds a value (the admin token) that must never reach a log or a `Debug`.

use std::borrow::Cow;
use std::io::Write;

/// What a redacted password, token or secret query value reads as.
pub const REDACTED: &str = "***";

/// Names of settings and query parameters whose values are secrets, matched as substrings of
/// the lowercased name (`sasl.password`, `sasl.oauthbearer.client.secret`, `ssl.key.pem`,
/// `sasl.jaas.config`, `?api_key=`...).
const SECRET_NAMES: [&str; 12] = [
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "api-key",
    "access_key",
    "key.pem",
    "oauthbearer.config",
    "jaas",
    "credential",
];

/// `text` with the password of every URL in it replaced by `***` (`redis://user:***@host`), a
/// userinfo without a password replaced whole (`https://***@host`: it is usually a token), and
/// the values of secret-looking query parameters replaced (`?token=***`). Borrowed when there
/// is nothing to hide.
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("://") {
        let separator = search + found;
        let authority = separator + 3;
        search = authority;
        if !has_scheme_before(text, separator) {
            continue;
        }
        let end = text[authority..]
            .find(ends_url)
            .map_or(text.len(), |at| authority + at);
        let url = &text[authority..end];
        let redacted = redact_after_scheme(url);
        if let Cow::Owned(redacted) = redacted {
            out.push_str(&text[copied..authority]);
            out.push_str(&redacted);
            copied = end;
        }
        search = end.max(authority);
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Whether `://` at `separator` follows a URL scheme: a letter, then letters, digits, `+`, `-`
/// or `.`.
fn has_scheme_before(text: &str, separator: usize) -> bool {
    let before = &text.as_bytes()[..separator];
    let scheme_length = before
        .iter()
        .rev()
        .take_while(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'+' | b'-' | b'.'))
        .count();
    scheme_length > 0 && before[separator - scheme_length].is_ascii_alphabetic()
}

/// Where a URL ends in free text: whitespace, quotes, angle brackets (as logs and `Debug`
/// print them).
fn ends_url(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')
}

/// Redacts the part of a URL after `scheme://`.
fn redact_after_scheme(url: &str) -> Cow<'_, str> {
    // The last `@` ends the userinfo: a password may hold an unencoded `/`, `?` or `#` (then
    // the URL does not parse, and is printed in the error); an `@` in a path is rare, and
    // taking it for the userinfo's end over-redacts, which is safe.
    let (userinfo, rest) = match url.rfind('@') {
        Some(at) if at > 0 => (Some(&url[..at]), &url[at..]),
        _ => (None, url),
    };
    let userinfo = userinfo.map(|userinfo| match userinfo.split_once(':') {
        Some((_, password)) if password.is_empty() || password == REDACTED => {
            Cow::Borrowed(userinfo)
        }
        Some((user, _)) => Cow::Owned(format!("{user}:{REDACTED}")),
        None if userinfo == REDACTED => Cow::Borrowed(userinfo),
        None => Cow::Owned(REDACTED.to_owned()),
    });
    let rest = redact_query(rest);
    match (userinfo, rest) {
        (None | Some(Cow::Borrowed(_)), Cow::Borrowed(_)) => Cow::Borrowed(url),
        (userinfo, rest) => Cow::Owned(format!("{}{rest}", userinfo.unwrap_or_default())),
    }
}

/// Replaces the values of secret-looking query parameters in `rest` (host, path, query).
fn redact_query(rest: &str) -> Cow<'_, str> {
    let Some(query_start) = rest.find('?') else {
        return Cow::Borrowed(rest);
    };
    let (before, query) = rest.split_at(query_start + 1);
    let (query, fragment) = match query.find('#') {
        Some(at) => query.split_at(at),
        None => (query, ""),
    };
    let mut changed = false;
    let parameters: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|parameter| match parameter.split_once('=') {
            Some((name, value)) if is_secret_name(name) && value != REDACTED => {
                changed = true;
                Cow::Owned(format!("{name}={REDACTED}"))
            }
            _ => Cow::Borrowed(parameter),
        })
        .collect();
    if !changed {
        return Cow::Borrowed(rest);
    }
    Cow::Owned(format!("{before}{}{fragment}", parameters.join("&")))
}

/// Whether a setting or query parameter of this name holds a secret (a librdkafka property
/// such as `sasl.password`, a query parameter such as `api_key`).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|secret| name.contains(secret))
}

/// A writer for `tracing_subscriber::fmt().with_writer(...)`: each log line is collected and
/// written to stderr redacted, so no URL password reaches the log, whichever crate logged it.
pub fn stderr_writer() -> RedactingStderr {
    RedactingStderr { line: Vec::new() }
}

/// One log event on its way to stderr (see [`stderr_writer`]); written when dropped.
#[derive(Debug)]
pub struct RedactingStderr {
    line: Vec<u8>,
}

impl Write for RedactingStderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingStderr {
    fn drop(&mut self) {
        // The formatter writes one event in one call and drops the writer: the whole line is
        // here, so a URL is never split between two writes.
        let text = String::from_utf8_lossy(&self.line);
        let _ = std::io::stderr().lock().write_all(redact(&text).as_bytes());
    }
}

/// A secret value (the admin token): its `Debug` hides it, and it is read only through
/// [`Secret::expose`]. Serialised as the plain string, so a configuration written as TOML reads
/// back the same.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted_wherever_they_stand() {
        for (text, expected) in [
            (
                "redis://:hunter2@127.0.0.1:6379",
                "redis://:***@127.0.0.1:6379",
            ),
            (
                "rediss://converge:hunter2@redis.internal:6380/0",
                "rediss://converge:***@redis.internal:6380/0",
            ),
            (
                "cannot reach the fleet's Redis at redis://u:p%40ss@h:1: refused",
                "cannot reach the fleet's Redis at redis://u:***@h:1: refused",
            ),
            // A password that breaks the URL is still hidden.
            (
                "redis://:ab/c?d#e@host:6379 did not parse",
                "redis://:***@host:6379 did not parse",
            ),
            // A bare userinfo is a token.
            (
                "https://ghp_abcdef0123456789@example.com/x",
                "https://***@example.com/x",
            ),
            (
                "[\"redis://:one@a:1\", \"redis://:two@b:2\"]",
                "[\"redis://:***@a:1\", \"redis://:***@b:2\"]",
            ),
            (
                "GET http://orders/{key}?api_key=k3y&page=2#top",
                "GET http://orders/{key}?api_key=***&page=2#top",
            ),
            // In JSON logs; a password of one character is not left behind either.
            (
                "{\"url\":\"http://a:b@c/d\"}",
                "{\"url\":\"http://a:***@c/d\"}",
            ),
        ] {
            let redacted = redact(text);
            assert_eq!(redacted, expected, "{text}");
            // Redacting twice changes nothing more.
            assert_eq!(redact(&redacted), redacted);
        }
    }

    #[test]
    fn text_without_secrets_is_borrowed_as_it_is() {
        for text in [
            "no url here",
            "redis://127.0.0.1:6379",
            "http://orders.internal/orders/{key}?page=1",
            "a ratio 3://4",
            "redis://:@host",
        ] {
            assert!(matches!(redact(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn a_secret_does_not_show_in_debug() {
        let secret = Secret::new("s3cret-token-value");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        assert_eq!(secret.expose(), "s3cret-token-value");
        let json = serde_json::to_string(&secret).expect("serialises");
        assert_eq!(json, "\"s3cret-token-value\"");
    }
}
