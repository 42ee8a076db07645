//! The watched rule file: when `rule.watch` is on, a change to the rule file (or its sidecar
//! vectors) offers the new component to [`RuleControl`] as the active rule.
//!
//! The rule file's directory is watched rather than the file, because deploy tools and editors
//! replace a file by renaming a new one over it; changes are debounced so that a file still
//! being written is read once, complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

use crate::rule::vectors::{VectorError, VectorFile};
use crate::rule::{GateError, LoadError, content_hash, read_component};
use crate::shutdown::Shutdown;
use crate::swap::status::sidecar_digest;
use crate::swap::{Origin, Role, RuleControl};

/// How long the file must stay quiet before it is read.
const SETTLE: Duration = Duration::from_millis(300);

/// The rule file's directory cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch rule file {path}: {source}")]
pub struct WatchError {
    path: PathBuf,
    source: notify::Error,
}

/// Why a rule file, or the vectors beside it, cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RuleFileError {
    /// The rule file cannot be read ([`LoadError::Read`]), or is larger than the size cap
    /// ([`LoadError::TooLarge`], and then it is not read).
    #[error(transparent)]
    Rule(LoadError),
    /// The sidecar vector file exists but cannot be read or parsed.
    #[error(transparent)]
    Vectors(#[from] VectorError),
}

/// Reads the rule at `path` and the vectors beside it, if any; a rule over `max_bytes` is
/// refused unread.
pub fn read_rule_file(
    path: &Path,
    max_bytes: usize,
) -> Result<(Vec<u8>, Option<VectorFile>), RuleFileError> {
    let bytes = read_component(path, max_bytes).map_err(RuleFileError::Rule)?;
    let sidecar = VectorFile::sidecar_path(path);
    let vectors = match VectorFile::load(&sidecar) {
        Ok(vectors) => Some(vectors),
        Err(VectorError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            None
        }
        Err(error) => return Err(error.into()),
    };
    Ok((bytes, vectors))
}

/// Starts watching `path`; the returned task offers every settled change to `control` until
/// `shutdown` is requested.
pub fn watch_rule_file(
    path: PathBuf,
    control: Arc<RuleControl>,
    mut shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let (changed, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let file_name = path.file_name().map(ToOwned::to_owned);
    let sidecar_name = VectorFile::sidecar_path(&path)
        .file_name()
        .map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let ours = event.paths.iter().any(|changed_path| {
            let name = changed_path.file_name();
            name.is_some() && (name == file_name.as_deref() || name == sidecar_name.as_deref())
        });
        if ours && !event.kind.is_access() {
            let _ = changed.send(());
        }
    })
    .map_err(|source| WatchError {
        path: path.clone(),
        source,
    })?;
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    watcher
        .watch(&directory, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError {
            path: path.clone(),
            source,
        })?;
    tracing::info!(path = %path.display(), "watching the rule file");
    // What the file held when serving started (the start-up rule): not an offer to repeat.
    let mut last = read_rule_file(&path, control.max_component_bytes())
        .ok()
        .map(|(bytes, vectors)| FileContent::of(&bytes, vectors.as_ref()));
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped: it lives as long as this task.
        let _watcher = watcher;
        loop {
            tokio::select! {
                () = shutdown.requested() => return,
                change = changes.recv() => if change.is_none() { return },
            }
            // Debounce: wait until no change arrived for SETTLE.
            while let Ok(Some(())) = tokio::time::timeout(SETTLE, changes.recv()).await {}
            offer(&path, &control, &mut last).await;
        }
    }))
}

/// What a rule file held when it was last offered: its content hash and its sidecar's digest.
/// An event that leaves both as they were (a `touch`, a rewrite with the same bytes, a
/// config-management run) offers nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileContent {
    rule: String,
    sidecar: Option<String>,
}

impl FileContent {
    fn of(bytes: &[u8], vectors: Option<&VectorFile>) -> Self {
        Self {
            rule: content_hash(bytes),
            sidecar: vectors.map(sidecar_digest),
        }
    }
}

async fn offer(path: &Path, control: &Arc<RuleControl>, last: &mut Option<FileContent>) {
    let origin = Origin::file(path);
    let (bytes, vectors) = match read_rule_file(path, control.max_component_bytes()) {
        Ok(read) => read,
        Err(RuleFileError::Rule(error @ LoadError::TooLarge { .. })) => {
            control.record_refusal(Role::Active, &origin, "-", GateError::Load(error));
            return;
        }
        Err(error) => {
            // A file deleted or half-replaced: the next change brings it back.
            tracing::warn!(path = %path.display(), %error, "cannot read the changed rule file");
            return;
        }
    };
    let content = FileContent::of(&bytes, vectors.as_ref());
    if last.as_ref() == Some(&content) {
        return;
    }
    *last = Some(content.clone());
    if content.rule == control.active_hash() {
        return;
    }
    let control = Arc::clone(control);
    let _ =
        tokio::task::spawn_blocking(move || control.offer(&bytes, vectors, &origin, Role::Active))
            .await;
}
