//! Compiled rules kept on disk, so a restart or a second instance loads a big rule without
//! compiling it again (a Python or JavaScript component takes seconds to compile with
//! Cranelift, and milliseconds to load from here).
//!
//! The cache is wasmtime's own (`wasmtime::Cache`): an artifact is filed under the SHA-256 of
//! the component's bytes together with everything about the engine that shapes its code
//! (wasmtime's version, compiler settings, epoch interruption), so another component, another
//! engine configuration or another wasmtime never finds it; a file that does not decompress or
//! that wasmtime does not accept for this engine is compiled again and rewritten.
//!
//! # Trust
//! Loading an artifact means running the native code in it, without the checks compiling the
//! component would do (wasmtime's `deserialize` is `unsafe` for that reason). So:
//! - an artifact is only ever looked up for bytes that have passed the size cap and, when keys
//!   are trusted, the signature gate: the lookup happens inside [`super::RuleEngine::compile`],
//!   which the gates call last, and its key is the hash of exactly those bytes;
//! - the directory must be converge's alone: it is created with mode 0700 and refused (a clear
//!   error, nothing is read from it) when it is not owned by this process's user or when others
//!   may write to it. Whoever can write it can make converge run their code, like whoever can
//!   write the binary;
//! - every check made after compiling (the import allowlist, the world's exports, the rule's
//!   info) runs on a cached component exactly as on a compiled one.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use wasmtime::{Cache, CacheConfig};

/// Why a compile cache directory cannot be used. Nothing is read from such a directory.
#[derive(Debug, thiserror::Error)]
pub enum CompileCacheError {
    /// The directory cannot be created or inspected.
    #[error("cannot use {} as the compile cache: {source}", .dir.display())]
    Io {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The path exists and is not a directory.
    #[error("cannot use {} as the compile cache: it is not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// The directory belongs to another user, who could plant code converge would run.
    #[error(
        "cannot use {} as the compile cache: it belongs to uid {owner}, not to this process's \
         uid {uid}",
        .dir.display()
    )]
    NotOwned {
        /// The directory.
        dir: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective user.
        uid: u32,
    },
    /// Users other than its owner may write to the directory (mode shown in octal).
    #[error(
        "cannot use {} as the compile cache: its mode {mode:o} lets others write to it \
         (chmod 700 it)",
        .dir.display()
    )]
    WritableByOthers {
        /// The directory.
        dir: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// wasmtime refused the cache's configuration.
    #[error("cannot start the compile cache in {}: {source:#}", .dir.display())]
    Wasmtime {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: wasmtime::Error,
    },
}

/// A directory of compiled rules, checked to be converge's alone. Cloning shares it.
#[derive(Clone, Debug)]
pub struct CompileCache {
    dir: PathBuf,
    cache: Cache,
}

impl CompileCache {
    /// Opens (creating it, mode 0700, when missing) the cache directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, CompileCacheError> {
        let io = |source| CompileCacheError::Io {
            dir: dir.to_owned(),
            source,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        let metadata = std::fs::metadata(dir).map_err(io)?;
        if !metadata.is_dir() {
            return Err(CompileCacheError::NotADirectory(dir.to_owned()));
        }
        let uid = rustix::process::geteuid().as_raw();
        if metadata.uid() != uid {
            return Err(CompileCacheError::NotOwned {
                dir: dir.to_owned(),
                owner: metadata.uid(),
                uid,
            });
        }
        let mode = metadata.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(CompileCacheError::WritableByOthers {
                dir: dir.to_owned(),
                mode,
            });
        }
        let mut config = CacheConfig::new();
        config.with_directory(dir);
        let cache = Cache::new(config).map_err(|source| CompileCacheError::Wasmtime {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            cache,
        })
    }

    /// The cache a configuration asks for: none when `enabled` is false; else `dir`, or
    /// [`CompileCache::default_dir`] when `dir` is `None`. A directory named explicitly that
    /// cannot be used is an error; the default one is warned about and the engine compiles
    /// every rule instead (a read-only root file system, say, must not stop converge).
    pub fn configured(
        enabled: bool,
        dir: Option<&Path>,
    ) -> Result<Option<Self>, CompileCacheError> {
        if !enabled {
            return Ok(None);
        }
        if let Some(dir) = dir {
            return Self::open(dir).map(Some);
        }
        let Some(dir) = Self::default_dir() else {
            tracing::info!("no compile cache: neither XDG_CACHE_HOME nor HOME is set");
            return Ok(None);
        };
        match Self::open(&dir) {
            Ok(cache) => Ok(Some(cache)),
            Err(error) => {
                tracing::warn!(error = %error, "no compile cache: every rule is compiled");
                Ok(None)
            }
        }
    }

    /// Where a user's compiled rules go by default: `$XDG_CACHE_HOME/converge/rules`, else
    /// `$HOME/.cache/converge/rules`; `None` when neither variable is set.
    pub fn default_dir() -> Option<PathBuf> {
        let from_env = |name| std::env::var_os(name).filter(|value| !value.is_empty());
        let base = from_env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| from_env("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        Some(base.join("converge").join("rules"))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many components were loaded from this cache, by every engine sharing it.
    pub fn hits(&self) -> usize {
        self.cache.cache_hits()
    }

    /// The cache as wasmtime's engine configuration takes it.
    pub(super) fn wasmtime(&self) -> Cache {
        self.cache.clone()
    }
}
