//! `converge new NAME --lang LANG`: a folder holding a minimal convergent rule in one language,
//! ready to build with its `build.sh` and to pass `converge check` as written.
//!
//! The templates live in `plugin/templates/<lang>/` and are compiled into the binary, so a
//! rule can be started anywhere, without this repository. Every template shares the contract
//! (`wit/rule.wit`) and the vectors (`plugin/templates/vectors.json`); `{{name}}` in a file's
//! path or text becomes the rule's name, `{{crate_name}}` (`{{module_name}}`) the same with
//! `-` written `_`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};

#[derive(Debug, Args)]
pub(crate) struct NewArgs {
    /// The rule's name: lowercase letters, digits and `-`, starting with a letter. It names the
    /// folder, the component (NAME.wasm) and the rule (its `info().name`).
    #[arg(value_name = "NAME", value_parser = parse_name)]
    name: String,
    /// The language the rule is written in.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Where the folder is written; default: ./NAME. It must not exist or be empty.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// A language a rule template is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Lang {
    /// Rust, built for wasm32-wasip2 with wit-bindgen.
    Rust,
    /// Python, built with componentize-py.
    Python,
    /// JavaScript, built with componentize-js.
    #[value(name = "js")]
    JavaScript,
    /// Go, built with the Go toolchain, wit-bindgen's Go bindings and wasm-tools.
    Go,
}

/// One file of a template: its path in the rule's folder, its text, and whether it is run.
struct TemplateFile {
    path: &'static str,
    text: &'static str,
    executable: bool,
}

const fn file(path: &'static str, text: &'static str) -> TemplateFile {
    TemplateFile {
        path,
        text,
        executable: false,
    }
}

const fn script(path: &'static str, text: &'static str) -> TemplateFile {
    TemplateFile {
        path,
        text,
        executable: true,
    }
}

/// What every template holds: the contract and the vectors beside the component.
const COMMON: &[TemplateFile] = &[
    file("wit/rule.wit", include_str!("../../../wit/rule.wit")),
    file(
        "{{name}}.vectors.json",
        include_str!("../../../plugin/templates/vectors.json"),
    ),
];

const RUST: &[TemplateFile] = &[
    file(
        "Cargo.toml",
        include_str!("../../../plugin/templates/rust/Cargo.toml"),
    ),
    file(
        "src/lib.rs",
        include_str!("../../../plugin/templates/rust/src/lib.rs"),
    ),
    file(
        "README.md",
        include_str!("../../../plugin/templates/rust/README.md"),
    ),
    file(".gitignore", "/target\n/*.wasm\n"),
    script(
        "build.sh",
        include_str!("../../../plugin/templates/rust/build.sh"),
    ),
];

// The Python, JavaScript and Go templates' `build.sh` is each language's one builder: the
// rules of this repository (`plugin/<lang>/build.sh`) are built with it too.
const PYTHON: &[TemplateFile] = &[
    file(
        "app.py",
        include_str!("../../../plugin/templates/python/app.py"),
    ),
    file(
        "requirements.txt",
        include_str!("../../../plugin/templates/python/requirements.txt"),
    ),
    file(
        "README.md",
        include_str!("../../../plugin/templates/python/README.md"),
    ),
    file(
        ".gitignore",
        include_str!("../../../plugin/templates/python/.gitignore"),
    ),
    script(
        "build.sh",
        include_str!("../../../plugin/templates/python/build.sh"),
    ),
];

const JAVASCRIPT: &[TemplateFile] = &[
    file(
        "rule.js",
        include_str!("../../../plugin/templates/js/rule.js"),
    ),
    file(
        "build.mjs",
        include_str!("../../../plugin/templates/js/build.mjs"),
    ),
    file(
        "package.json",
        include_str!("../../../plugin/templates/js/package.json"),
    ),
    file(
        "package-lock.json",
        include_str!("../../../plugin/templates/js/package-lock.json"),
    ),
    file(
        "README.md",
        include_str!("../../../plugin/templates/js/README.md"),
    ),
    file(
        ".gitignore",
        include_str!("../../../plugin/templates/js/.gitignore"),
    ),
    script(
        "build.sh",
        include_str!("../../../plugin/templates/js/build.sh"),
    ),
];

const GO: &[TemplateFile] = &[
    file(
        "go.mod",
        include_str!("../../../plugin/templates/go/go.mod"),
    ),
    file(
        "rule/rule.go",
        include_str!("../../../plugin/templates/go/rule/rule.go"),
    ),
    file(
        "rule/types.go",
        include_str!("../../../plugin/templates/go/rule/types.go"),
    ),
    file(
        "export_wit_world/export.go",
        include_str!("../../../plugin/templates/go/export_wit_world/export.go"),
    ),
    file(
        "export_wit_world/gc.go",
        include_str!("../../../plugin/templates/go/export_wit_world/gc.go"),
    ),
    file(
        "README.md",
        include_str!("../../../plugin/templates/go/README.md"),
    ),
    file(
        ".gitignore",
        include_str!("../../../plugin/templates/go/.gitignore"),
    ),
    script(
        "build.sh",
        include_str!("../../../plugin/templates/go/build.sh"),
    ),
];

impl Lang {
    fn files(self) -> &'static [TemplateFile] {
        match self {
            Lang::Rust => RUST,
            Lang::Python => PYTHON,
            Lang::JavaScript => JAVASCRIPT,
            Lang::Go => GO,
        }
    }

    /// What `converge check` needs besides the component: JavaScript's heap outgrows the default
    /// rule memory on a long-lived instance (`plugin/js/README.md`).
    fn check_flags(self) -> &'static str {
        match self {
            Lang::JavaScript => " --memory-mib 128 --deadline-ms 1000",
            Lang::Rust | Lang::Python | Lang::Go => "",
        }
    }
}

pub(crate) fn new(args: &NewArgs) -> anyhow::Result<ExitCode> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    ensure_empty(&dir)?;
    let module_name = args.name.replace('-', "_");
    let fill = |text: &str| {
        text.replace("{{name}}", &args.name)
            .replace("{{crate_name}}", &module_name)
            .replace("{{module_name}}", &module_name)
    };
    for template in COMMON.iter().chain(args.lang.files()) {
        let path = dir.join(fill(template.path));
        write(&path, &fill(template.text), template.executable)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote {dir}\nnext:\n  cd {dir}\n  ./build.sh\n  converge check {name}.wasm{flags}",
        dir = dir.display(),
        name = args.name,
        flags = args.lang.check_flags(),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Refuses to write over anything: `dir` must be missing or empty.
fn ensure_empty(dir: &Path) -> anyhow::Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty; choose another NAME or --dir",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot use {}", dir.display())),
    }
}

fn write(path: &Path, text: &str, executable: bool) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    if executable {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    Ok(())
}

/// A name every language accepts for a package, a module and a file.
fn parse_name(name: &str) -> Result<String, String> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(
            "a rule name is 1 to 64 lowercase letters, digits and single `-`, starting with a \
             letter and not ending with `-` (e.g. order-status)"
                .to_owned(),
        )
    }
}
