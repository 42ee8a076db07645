//! `converge rule keygen`: a signing key pair, the private key readable by its owner only.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use converge::rule::SigningKey;

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM, readable by its owner only); the public key
    /// goes to the same path with `.pub` appended. Neither may exist.
    #[arg(long, value_name = "KEY")]
    out: PathBuf,
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

pub(crate) fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
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
