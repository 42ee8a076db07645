//! What both end-to-end benches note about the machine, and where their reports go.

/// The one-minute load average: the machine's cores are shared with whatever else runs.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Where the reports go: `target/bench` under the workspace root.
pub fn report_dir() -> std::path::PathBuf {
    let dir = converge_tests::build::workspace_root()
        .join("target")
        .join("bench");
    std::fs::create_dir_all(&dir).expect("target/bench");
    dir
}
