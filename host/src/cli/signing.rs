//! `converge rule keygen`, `sign` and `verify`, and the trusted keys the fleet commands check
//! signatures against.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::EXIT_FAILED;
use crate::rule::{
    DEFAULT_MAX_COMPONENT_BYTES, PublicKey, SigningKey, TrustedKeys, read_component, release, sign,
    signatures, with_release,
};

#[derive(Debug, Args)]
pub(super) struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, readable by its owner only); the public key
    /// goes to the same path with `.pub` appended. Neither may exist.
    #[arg(long, value_name = "KEY")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct SignArgs {
    /// The rule component (.wasm), its vectors already packed (packing after signing breaks
    /// the signature).
    #[arg(value_name = "RULE.wasm")]
    rule: PathBuf,
    /// The private key, as `converge rule keygen` wrote it.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Where to write the signed component. Default: over RULE.wasm.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The release number to sign into the component (custom section `converge:release`),
    /// higher than every release published before it: a fleet refuses to make active a
    /// release below the highest it has made active. Default: the release the component
    /// already carries (0 when it has none). Changing it changes what is signed: signatures
    /// made before are dropped (sign again with each key).
    #[arg(long, value_name = "N")]
    release: Option<u64>,
    /// The largest component read, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_COMPONENT_BYTES)]
    max_component_bytes: usize,
}

#[derive(Debug, Args)]
pub(super) struct VerifyArgs {
    /// The rule component (.wasm).
    #[arg(value_name = "RULE.wasm")]
    rule: PathBuf,
    #[command(flatten)]
    trust: TrustArgs,
    /// The largest component read, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_COMPONENT_BYTES)]
    max_component_bytes: usize,
}

/// The keys a rule's signature must be by, for the commands that check one.
#[derive(Debug, Args)]
pub(super) struct TrustArgs {
    /// A public key (`ed25519:<base64>`, as `converge rule keygen` prints it) one of which must
    /// have signed the rule. Repeatable; the environment variable takes a comma-separated list.
    #[arg(
        long = "trusted-key",
        env = "CONVERGE_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    trusted_keys: Vec<PublicKey>,
    /// Trust the keys of this `serve` configuration's `[rule] trusted_keys` too.
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
}

impl TrustArgs {
    /// The keys given on the command line, in the environment and in the configuration.
    pub(super) fn trusted(&self) -> anyhow::Result<TrustedKeys> {
        let mut keys = self.trusted_keys.clone();
        if let Some(path) = &self.config {
            let config = crate::config::Config::load(path)?;
            keys.extend(config.rule.trusted_keys);
        }
        Ok(TrustedKeys::new(keys))
    }
}

/// The path of the public key beside the private key at `key`: `KEY.pub`.
fn public_path(key: &Path) -> PathBuf {
    let mut path = key.as_os_str().to_owned();
    path.push(".pub");
    PathBuf::from(path)
}

/// Creates `path` for writing, refusing to replace a file; the private key's is readable by
/// its owner only.
fn create_new(path: &Path, private: bool) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options.open(path).with_context(|| {
        if path.exists() {
            format!("{} exists; not overwriting it", path.display())
        } else {
            format!("cannot create {}", path.display())
        }
    })
}

pub(super) fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let public_file = public_path(&args.out);
    for path in [&args.out, &public_file] {
        anyhow::ensure!(
            !path.exists(),
            "{} exists; not overwriting it",
            path.display()
        );
    }
    let key = SigningKey::generate()?;
    let public = key.public_key();
    let pem = key.to_pem()?;
    let mut private = create_new(&args.out, true)?;
    private
        .write_all(pem.as_bytes())
        .and_then(|()| private.sync_all())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let mut public_out = create_new(&public_file, false)?;
    writeln!(public_out, "{public}")
        .with_context(|| format!("cannot write {}", public_file.display()))?;
    println!("{public}");
    println!("key id {}", public.id());
    eprintln!(
        "private key written to {} (keep it secret), public key to {}; add the public key to \
         [rule] trusted_keys of every instance",
        args.out.display(),
        public_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn sign_command(args: &SignArgs) -> anyhow::Result<ExitCode> {
    let component = read_component(&args.rule, args.max_component_bytes)?;
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(&args.key)
            .with_context(|| format!("cannot read the key {}", args.key.display()))?,
    );
    let key = SigningKey::from_pem(&pem)
        .with_context(|| format!("cannot use the key {}", args.key.display()))?;
    let cannot_sign = || format!("cannot sign {}", args.rule.display());
    let carried = release(&component).with_context(cannot_sign)?;
    let component = match args.release {
        Some(new) if new != carried => {
            eprintln!("note: release {carried} -> {new}: signatures made before no longer verify");
            with_release(&component, new).with_context(cannot_sign)?
        }
        _ => component,
    };
    let signed = sign(&component, &key).with_context(cannot_sign)?;
    for reason in &signed.dropped {
        eprintln!("note: dropped {reason}");
    }
    let output = args.output.as_ref().unwrap_or(&args.rule);
    write_replacing(output, &signed.component)?;
    let public = key.public_key();
    let signed_release = args.release.unwrap_or(carried);
    println!(
        "signed {} with key {} ({public}), release {signed_release}: {}",
        args.rule.display(),
        public.id(),
        output.display()
    );
    if signed_release == 0 {
        eprintln!(
            "note: release 0 (no --release): a fleet's floor cannot tell this rule from an \
             older one; give each published version a higher --release"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `bytes` to `path` through a file beside it renamed over it, so that a reader (a
/// rule watch, say) never sees it half-written.
fn write_replacing(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let mut staged_name = std::ffi::OsString::from(".");
    staged_name.push(name);
    staged_name.push(format!(".signing-{}", std::process::id()));
    let staged = path.with_file_name(staged_name);
    std::fs::write(&staged, bytes).with_context(|| format!("cannot write {}", staged.display()))?;
    std::fs::rename(&staged, path).with_context(|| {
        let _ = std::fs::remove_file(&staged);
        format!("cannot write {}", path.display())
    })
}

pub(super) fn verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let component = read_component(&args.rule, args.max_component_bytes)?;
    let trusted = args.trust.trusted()?;
    let found = match signatures(&component) {
        Ok(found) => found,
        Err(error) => {
            println!("FAIL: {error}");
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    if let Ok(release) = release(&component) {
        println!("release {release}");
    }
    for signature in &found {
        println!(
            "signature by key {} ({}): {}{}",
            signature.key.id(),
            signature.key,
            if signature.verifies {
                "verifies"
            } else {
                "DOES NOT VERIFY"
            },
            if trusted.keys().contains(&signature.key) {
                ", trusted"
            } else {
                ""
            }
        );
    }
    let verdict = match trusted.check(&component) {
        Ok(Some(key)) => Ok(format!("signed by the trusted key {}", key.id())),
        Ok(None) if found.is_empty() => Err("not signed".to_owned()),
        Ok(None) => Ok("every signature verifies (no key trusted: give --trusted-key)".to_owned()),
        Err(error) => Err(error.to_string()),
    };
    Ok(match verdict {
        Ok(verdict) => {
            println!("PASS: {verdict}");
            ExitCode::SUCCESS
        }
        Err(verdict) => {
            println!("FAIL: {verdict}");
            ExitCode::from(EXIT_FAILED)
        }
    })
}
