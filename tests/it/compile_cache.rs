//! The compile cache: a second engine (a restart, a second instance) loads a rule compiled
//! before instead of compiling it; what it loads decides like the compiled rule; a damaged
//! artifact is compiled again; and a directory others could write to is never used.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use converge::rule::{
    CompileCache, CompileCacheError, CompiledRule, EngineLimits, Rule as _, RuleEngine,
};
use converge_tests::build;
use converge_tests::events::event;

fn load(cache: &CompileCache) -> CompiledRule {
    RuleEngine::with_compile_cache(EngineLimits::default(), Some(cache.clone()))
        .expect("engine starts")
        .compile_file(&build::rule("order-status"))
        .expect("the order rule loads")
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the cache directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// The same decisions from both rules over a short history of one order.
fn assert_same_decisions(a: &CompiledRule, b: &CompiledRule) {
    let (mut a, mut b) = (a.instance(), b.instance());
    let history = [
        event("o-1", "created", 1),
        event("o-1", "paid", 2),
        event("o-1", "created", 1),
    ];
    let mut stored = None;
    for incoming in &history {
        let from_a = a.decide(stored.as_ref(), incoming).expect("a decides");
        let from_b = b.decide(stored.as_ref(), incoming).expect("b decides");
        assert_eq!(
            from_a, from_b,
            "cached and compiled rules disagree on {incoming:?}"
        );
        if let Some(state) = from_a.stored_state() {
            stored = Some(state.clone());
        }
    }
}

#[test]
fn compile_cache_second_engine_loads_what_the_first_compiled() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = CompileCache::open(&dir.path().join("rules")).expect("cache opens");

    let first = load(&cache);
    assert!(!first.compiled().from_cache, "nothing was cached yet");
    assert!(
        !files(cache.dir()).is_empty(),
        "compiling wrote no artifact into {}",
        cache.dir().display()
    );

    // A new engine over the same directory stands for a restart or a second instance.
    let reopened = CompileCache::open(cache.dir()).expect("cache opens again");
    let second = load(&reopened);
    assert!(
        second.compiled().from_cache,
        "the second engine compiled the rule again instead of loading it"
    );
    assert_eq!(second.info(), first.info());
    assert_same_decisions(&first, &second);
}

#[test]
fn compile_cache_damaged_artifact_is_compiled_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cache = CompileCache::open(dir.path()).expect("cache opens");
    let first = load(&cache);
    let artifacts: Vec<_> = files(cache.dir())
        .into_iter()
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    assert!(!artifacts.is_empty(), "no artifact to damage");
    for artifact in &artifacts {
        std::fs::write(artifact, b"not an artifact").expect("damage the artifact");
    }

    let again = load(&CompileCache::open(cache.dir()).expect("cache opens again"));
    assert!(
        !again.compiled().from_cache,
        "a damaged artifact was taken as a cache hit"
    );
    assert_same_decisions(&first, &again);
}

#[test]
fn compile_cache_refuses_a_directory_others_may_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("create");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");

    match CompileCache::open(&shared) {
        Err(CompileCacheError::WritableByOthers { mode, .. }) => assert_eq!(mode, 0o777),
        other => panic!("a world-writable cache directory was not refused: {other:?}"),
    }
    // Asked for by name, it stops the start with the reason; the default one only warns.
    let error = CompileCache::configured(true, Some(&shared)).expect_err("refused");
    assert!(error.to_string().contains("chmod 700"), "{error}");
    assert!(
        CompileCache::configured(false, Some(&shared))
            .expect("off")
            .is_none()
    );
}

#[test]
fn compile_cache_creates_its_directory_for_its_owner_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fresh = dir.path().join("a/b/rules");
    let cache = CompileCache::open(&fresh).expect("cache opens");
    let mode = std::fs::metadata(cache.dir())
        .expect("created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "mode {mode:o}");
}
