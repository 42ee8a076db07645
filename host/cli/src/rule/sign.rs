//! `converge rule sign`: a signature (and, with --release, a release number) appended to a
//! component.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use converge::rule::{
    DEFAULT_MAX_COMPONENT_BYTES, SigningKey, read_component, release, sign as sign_component,
    with_release,
};

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
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

pub(crate) fn sign(args: &SignArgs) -> anyhow::Result<ExitCode> {
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
    let signed = sign_component(&component, &key).with_context(cannot_sign)?;
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
