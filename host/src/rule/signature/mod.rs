//! Signed rules: who made a component, proved by the Ed25519 signatures it carries, and the
//! integrity checks of a component that arrives by its content hash.
//!
//! A signature travels inside the component, as a custom section named [`SIGNATURE_SECTION`]
//! holding `{"key": "ed25519:<base64>", "signature": "<base64>"}`. What is signed is the
//! component with every signature section taken out — so signatures can be appended one after
//! another (an old and a new key during a rotation) — hashed and domain-separated:
//! `Ed25519(key, "converge rule signature v1\0" || SHA-256(component without signatures))`.
//! Everything else the component carries is covered, its vectors
//! ([`crate::rule::VECTORS_SECTION`]) included: packing vectors into a signed component breaks
//! its signature, so pack first, then sign.
//!
//! [`TrustedKeys`] is the policy of the signature gate ([`crate::rule::Gates`]): with keys, a
//! component must carry a valid signature by one of them; without, an unsigned component
//! passes. Either way every signature a component carries must verify: one that does not says
//! the component was changed after it was signed.
//!
//! A component may declare its **release**, a number that only grows from one published
//! version to the next, in a custom section named [`RELEASE_SECTION`] holding the number in
//! decimal (`converge rule sign --release N` writes it). It is not a signature section, so
//! every signature covers it: it cannot be changed without the signing key. A component
//! without one is release 0. A fleet refuses an active pointer to a release below the highest
//! it has made active (see [`crate::swap::Fleet`]).

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{Signer as _, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use wasm_encoder::ComponentSection as _;
use zeroize::{Zeroize as _, Zeroizing};

/// The custom section that carries one signature of the component.
pub const SIGNATURE_SECTION: &str = "converge:signature";

/// Prefixed to the digest that is signed, so that a converge signature can never be taken for
/// a signature of anything else made with the same key (and the other way round).
const DOMAIN: &[u8] = b"converge rule signature v1\0";

/// How a public key is written: this prefix, then the 32 bytes in base64.
const KEY_PREFIX: &str = "ed25519:";

/// More signatures than this on one component is refused as malformed: each costs a
/// verification, and a key rotation needs two.
const MAX_SIGNATURES: usize = 8;

/// The custom section that carries a component's release number (decimal, canonical: no sign,
/// no leading zero). Signed like everything that is not a signature.
pub const RELEASE_SECTION: &str = "converge:release";

/// The most of a release section read: the 20 digits of the largest `u64`.
const RELEASE_DIGITS: usize = 20;

/// An Ed25519 public key, written `ed25519:<base64 of its 32 bytes>` (as `converge rule
/// keygen` prints it and `rule.trusted_keys` takes it). Weak keys are refused.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The key's id: the first 8 bytes of the SHA-256 of the key, in hex. What errors, logs and
    /// `converge rule verify` name a key by.
    pub fn id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn verifies(&self, message: &[u8], signature: &ed25519_dalek::Signature) -> bool {
        self.0.verify_strict(message, signature).is_ok()
    }
}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.as_bytes().hash(state);
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{KEY_PREFIX}{}", BASE64.encode(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let Some(encoded) = text.strip_prefix(KEY_PREFIX) else {
            return Err(KeyError::Prefix(excerpt(text)));
        };
        let bytes = BASE64.decode(encoded).map_err(KeyError::Base64)?;
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Invalid)?;
        if key.is_weak() {
            return Err(KeyError::Invalid);
        }
        Ok(Self(key))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a key cannot be read, made or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text (an excerpt) does not start with `ed25519:`.
    #[error(
        "a public key is written ed25519:<base64 of its 32 bytes>, as `converge rule keygen` \
         prints it; {0:?} is not"
    )]
    Prefix(String),
    /// The part after `ed25519:` is not base64.
    #[error("the public key is not valid base64: {0}")]
    Base64(#[source] base64::DecodeError),
    /// The key decodes to another length than 32 bytes (the value).
    #[error("an Ed25519 public key is 32 bytes, not {0}")]
    Length(usize),
    /// The 32 bytes are not a point of the curve, or a weak (small-order) key.
    #[error("not a usable Ed25519 public key (not a point of the curve, or a weak key)")]
    Invalid,
    /// The private key file is not an Ed25519 private key in PKCS#8 PEM.
    #[error("not an Ed25519 private key in PKCS#8 PEM (as `converge rule keygen` writes): {0}")]
    Private(#[source] ed25519_dalek::pkcs8::Error),
    /// The operating system gave no randomness for a new key.
    #[error("no randomness from the operating system for a new key: {0}")]
    Random(getrandom::Error),
}

/// The private half of a signing key. Its bytes are wiped when it is dropped, and it never
/// prints them.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key().id())
    }
}

impl SigningKey {
    /// A new key from the operating system's randomness.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(KeyError::Random)?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        seed.zeroize();
        Ok(Self(key))
    }

    /// The key in a PKCS#8 PEM document (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(KeyError::Private)
    }

    /// The key as a PKCS#8 PEM document, wiped when dropped.
    pub fn to_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.0
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(KeyError::Private)
    }

    /// The public half, which verifies what this key signs.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
}

/// Why a component's signatures are refused (the `signature` gate), or cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The bytes are not a WebAssembly component whose sections can be read.
    #[error("not a WebAssembly component whose signature can be read: {0}")]
    NotAComponent(String),
    /// Keys are trusted and the component carries no signature.
    #[error(
        "the rule is not signed, and rule.trusted_keys requires a signature by one of the keys \
         {}; sign it with `converge rule sign`",
        .trusted.join(", ")
    )]
    Unsigned {
        /// The ids of the trusted keys.
        trusted: Vec<String>,
    },
    /// A signature section does not hold a signature, or there are too many.
    #[error("a {SIGNATURE_SECTION} section is malformed: {0}")]
    Malformed(MalformedSignature),
    /// The release section is not one canonical decimal number, or there are several (the
    /// reason).
    #[error("the {RELEASE_SECTION} section is malformed: {0}")]
    Release(String),
    /// A signature does not verify: the component changed after it was signed.
    #[error(
        "the signature by key {key} does not verify: the component was changed after it was \
         signed (packing vectors into a signed component does that: pack first, then sign)"
    )]
    DoesNotVerify {
        /// The id of the key it claims.
        key: String,
    },
    /// Every signature verifies, but none is by a trusted key.
    #[error(
        "signed by the key {} and by no trusted key (trusted: {})",
        .signers.join(", "),
        .trusted.join(", ")
    )]
    Untrusted {
        /// The ids of the keys that signed.
        signers: Vec<String>,
        /// The ids of the trusted keys.
        trusted: Vec<String>,
    },
}

/// Why the signature sections of a component do not hold signatures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MalformedSignature {
    /// A section's contents are not `{"key": "ed25519:<base64>", "signature": "<base64>"}`
    /// (or, signing, cannot be written as such).
    #[error("{0}")]
    Contents(Arc<serde_json::Error>),
    /// More signature sections than a component may carry.
    #[error("{count} signatures, more than the {MAX_SIGNATURES} a component may carry")]
    TooMany {
        /// How many it carries.
        count: usize,
    },
}

impl MalformedSignature {
    fn contents(error: serde_json::Error) -> Self {
        Self::Contents(Arc::new(error))
    }
}

/// Equal when they say the same: a JSON error is compared by its message.
impl PartialEq for MalformedSignature {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Contents(a), Self::Contents(b)) => a.to_string() == b.to_string(),
            (Self::TooMany { count: a }, Self::TooMany { count: b }) => a == b,
            _ => false,
        }
    }
}

impl Eq for MalformedSignature {}

/// One signature a component carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSignature {
    /// The key it names.
    pub key: PublicKey,
    /// Whether it is that key's signature of this component.
    pub verifies: bool,
}

/// The signature sections of a component, their contents read, and its release.
struct Signatures<'a> {
    /// Each section: where it lies in the component (header included) and what it holds.
    sections: Vec<(Range<usize>, Result<Section, MalformedSignature>)>,
    /// The release section: where it lies and the number it holds (none: release 0).
    release: Option<(Range<usize>, u64)>,
    /// What is signed: the domain and the digest of the component without its signatures.
    message: Vec<u8>,
    component: &'a [u8],
}

/// A signature section's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    key: PublicKey,
    signature: String,
}

impl Section {
    fn verifies(&self, message: &[u8]) -> bool {
        let Ok(bytes) = BASE64.decode(&self.signature) else {
            return false;
        };
        ed25519_dalek::Signature::from_slice(&bytes)
            .is_ok_and(|signature| self.key.verifies(message, &signature))
    }
}

impl<'a> Signatures<'a> {
    /// Finds the component's top-level signature sections (a section inside a nested module or
    /// component is part of what is signed, like any other byte).
    fn read(component: &'a [u8]) -> Result<Self, SignatureError> {
        let not_a_component = |error: wasmparser::BinaryReaderError| {
            SignatureError::NotAComponent(error.message().to_owned())
        };
        let mut parser = wasmparser::Parser::new(0);
        let mut offset = 0;
        let mut sections = Vec::new();
        let mut release = None;
        loop {
            let rest = component.get(offset..).unwrap_or_default();
            let (consumed, payload) = match parser.parse(rest, true).map_err(not_a_component)? {
                wasmparser::Chunk::Parsed { consumed, payload } => (consumed, payload),
                // Not with `eof` set; counted as truncated all the same.
                wasmparser::Chunk::NeedMoreData(_) => {
                    return Err(SignatureError::NotAComponent("truncated".to_owned()));
                }
            };
            let start = offset;
            offset += consumed;
            match &payload {
                wasmparser::Payload::Version { encoding, .. }
                    if *encoding != wasmparser::Encoding::Component =>
                {
                    return Err(SignatureError::NotAComponent(
                        "a core module, not a component".to_owned(),
                    ));
                }
                wasmparser::Payload::CustomSection(section)
                    if section.name() == SIGNATURE_SECTION =>
                {
                    let contents = serde_json::from_slice::<Section>(section.data())
                        .map_err(MalformedSignature::contents);
                    sections.push((start..offset, contents));
                }
                wasmparser::Payload::CustomSection(section)
                    if section.name() == RELEASE_SECTION =>
                {
                    if release.is_some() {
                        return Err(SignatureError::Release(
                            "a component carries at most one".to_owned(),
                        ));
                    }
                    release = Some((start..offset, parse_release(section.data())?));
                }
                wasmparser::Payload::End(_) => break,
                _ => {}
            }
            // A nested module or component is skipped whole: its header was consumed, its
            // contents end where its range does.
            if let Some((_, range)) = payload.as_section() {
                offset = offset.max(range.end);
            }
        }
        if sections.len() > MAX_SIGNATURES {
            return Err(SignatureError::Malformed(MalformedSignature::TooMany {
                count: sections.len(),
            }));
        }
        let mut digest = Sha256::new();
        let mut from = 0;
        for (range, _) in &sections {
            digest.update(&component[from..range.start]);
            from = range.end;
        }
        digest.update(&component[from..]);
        let mut message = DOMAIN.to_vec();
        message.extend_from_slice(&digest.finalize());
        Ok(Self {
            sections,
            release,
            message,
            component,
        })
    }

    /// Every signature, verified; the first malformed section is an error.
    fn found(&self) -> Result<Vec<FoundSignature>, SignatureError> {
        self.sections
            .iter()
            .map(|(_, contents)| match contents {
                Ok(section) => Ok(FoundSignature {
                    key: section.key,
                    verifies: section.verifies(&self.message),
                }),
                Err(malformed) => Err(SignatureError::Malformed(malformed.clone())),
            })
            .collect()
    }
}

/// The signatures `component` carries, each verified.
pub fn signatures(component: &[u8]) -> Result<Vec<FoundSignature>, SignatureError> {
    Signatures::read(component)?.found()
}

/// A release number as a [`RELEASE_SECTION`] holds it: canonical decimal digits of a `u64`.
fn parse_release(data: &[u8]) -> Result<u64, SignatureError> {
    let malformed = || {
        SignatureError::Release(format!(
            "{:?} is not a release number (decimal digits, no leading zero)",
            excerpt(&String::from_utf8_lossy(data))
        ))
    };
    let canonical = !data.is_empty()
        && data.len() <= RELEASE_DIGITS
        && data.iter().all(u8::is_ascii_digit)
        && (data == b"0" || data[0] != b'0');
    if !canonical {
        return Err(malformed());
    }
    std::str::from_utf8(data)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(malformed)
}

/// The release `component` declares in its [`RELEASE_SECTION`]; 0 when it has none. Only a
/// signature makes it trustworthy: the signature gate checks that separately.
pub fn release(component: &[u8]) -> Result<u64, SignatureError> {
    Ok(Signatures::read(component)?
        .release
        .map_or(0, |(_, release)| release))
}

/// `component` declaring release `release`: a release section it carries is replaced (which
/// changes what is signed, so signatures it carried no longer verify unless the release was
/// already `release`, in which case the component is answered unchanged).
pub fn with_release(component: &[u8], release: u64) -> Result<Vec<u8>, SignatureError> {
    let read = Signatures::read(component)?;
    let mut released = Vec::with_capacity(component.len() + 32);
    match &read.release {
        Some((_, current)) if *current == release => return Ok(component.to_vec()),
        Some((range, _)) => {
            released.extend_from_slice(&component[..range.start]);
            released.extend_from_slice(&component[range.end..]);
        }
        None => released.extend_from_slice(component),
    }
    wasm_encoder::CustomSection {
        name: std::borrow::Cow::Borrowed(RELEASE_SECTION),
        data: std::borrow::Cow::Owned(release.to_string().into_bytes()),
    }
    .append_to_component(&mut released);
    Ok(released)
}

/// A component signed by [`sign`].
#[derive(Debug, Clone)]
pub struct Signed {
    /// The component with the new signature appended.
    pub component: Vec<u8>,
    /// Signature sections left out of it: an earlier signature by the same key (replaced),
    /// or one that no longer verifies or does not parse. Why, one line each.
    pub dropped: Vec<String>,
}

/// `component` with `key`'s signature appended as a [`SIGNATURE_SECTION`]. Signatures by other
/// keys that still verify are kept (signing with a second key adds to the first); an earlier
/// one by the same key, and any that no longer verifies, are dropped and listed.
pub fn sign(component: &[u8], key: &SigningKey) -> Result<Signed, SignatureError> {
    let read = Signatures::read(component)?;
    let public = key.public_key();
    let mut signed = Vec::with_capacity(component.len() + 256);
    let mut dropped = Vec::new();
    let mut from = 0;
    for (range, contents) in &read.sections {
        let drop_reason = match contents {
            Ok(section) if section.key == public => Some(format!(
                "an earlier signature by the same key {}",
                public.id()
            )),
            Ok(section) if !section.verifies(&read.message) => Some(format!(
                "a signature by key {} that no longer verifies",
                section.key.id()
            )),
            Ok(_) => None,
            Err(reason) => Some(format!("a malformed signature section ({reason})")),
        };
        if let Some(reason) = drop_reason {
            signed.extend_from_slice(&read.component[from..range.start]);
            from = range.end;
            dropped.push(reason);
        }
    }
    signed.extend_from_slice(&read.component[from..]);
    let section = Section {
        key: public,
        signature: BASE64.encode(key.0.sign(&read.message).to_bytes()),
    };
    let data = serde_json::to_vec(&section)
        .map_err(|error| SignatureError::Malformed(MalformedSignature::contents(error)))?;
    wasm_encoder::CustomSection {
        name: std::borrow::Cow::Borrowed(SIGNATURE_SECTION),
        data: std::borrow::Cow::Owned(data),
    }
    .append_to_component(&mut signed);
    Ok(Signed {
        component: signed,
        dropped,
    })
}

/// The keys whose signature a rule must carry (`rule.trusted_keys`); none: any rule, signed or
/// not, as long as every signature it carries verifies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// Trusts `keys` (a key given twice counts once).
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut trusted = Vec::new();
        for key in keys {
            if !trusted.contains(&key) {
                trusted.push(key);
            }
        }
        Self { keys: trusted }
    }

    /// Whether no key is trusted (and so a signature is not required).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    fn ids(&self) -> Vec<String> {
        self.keys.iter().map(PublicKey::id).collect()
    }

    /// The signature gate. Every signature `component` carries must verify; with trusted keys,
    /// one of them must be by a trusted key, and that key is answered. Without, an unsigned
    /// component passes (`Ok(None)`), and so do bytes that are not a component (compiling
    /// refuses them next, with a better message).
    pub fn check(&self, component: &[u8]) -> Result<Option<PublicKey>, SignatureError> {
        let found = match Signatures::read(component) {
            Ok(read) => read.found()?,
            Err(SignatureError::NotAComponent(_)) if self.is_empty() => return Ok(None),
            Err(error) => return Err(error),
        };
        if let Some(bad) = found.iter().find(|signature| !signature.verifies) {
            return Err(SignatureError::DoesNotVerify { key: bad.key.id() });
        }
        if self.is_empty() {
            return Ok(None);
        }
        if found.is_empty() {
            return Err(SignatureError::Unsigned {
                trusted: self.ids(),
            });
        }
        match found
            .iter()
            .find(|signature| self.keys.contains(&signature.key))
        {
            Some(trusted) => Ok(Some(trusted.key)),
            None => Err(SignatureError::Untrusted {
                signers: found.iter().map(|signature| signature.key.id()).collect(),
                trusted: self.ids(),
            }),
        }
    }
}

/// Whether `text` is a content hash as [`crate::rule::content_hash`] writes one: 64 lowercase
/// hex digits. A fleet follows nothing else.
pub fn is_content_hash(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Why a component that arrived by its content hash is not what it claims (the `integrity`
/// gate): nothing of it is compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntegrityError {
    /// A pointer (or history entry) that is not a content hash.
    #[error(
        "the fleet's {pointer} holds {value:?}, which is not a content hash (64 hex digits); not followed"
    )]
    NotAHash {
        /// Which: `active pointer`, `shadow pointer`, `history entry 2`.
        pointer: String,
        /// What it holds (an excerpt).
        value: String,
    },
    /// A blob whose SHA-256 is not the hash it is stored under.
    #[error(
        "the blob stored under {stored_under} hashes to {actual}: it was altered or planted; not compiled"
    )]
    HashMismatch {
        /// The hash it is stored (and pointed at) under.
        stored_under: String,
        /// Its SHA-256.
        actual: String,
    },
    /// The active pointer names a rule whose signed release is below the fleet's floor (the
    /// highest release it has made active): a replay of an older version.
    #[error(
        "the fleet's rule {hash} is release {release}, below the fleet's floor {floor} (the \
         highest release it has made active); an older release is made active only by \
         `converge rule rollback --allow-downgrade`; not followed"
    )]
    BelowFloor {
        /// The hash the pointer holds.
        hash: String,
        /// The release its component declares.
        release: u64,
        /// The floor.
        floor: u64,
    },
    /// The fleet's floor is not a release number.
    #[error(
        "the fleet's release floor holds {value:?}, which is not a release number; no active \
         pointer is followed until it is one"
    )]
    Floor {
        /// What it holds (an excerpt).
        value: String,
    },
}

/// At most 80 characters of `text`, for an error that quotes what it refuses.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests;
