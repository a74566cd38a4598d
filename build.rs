//! Build facts for `flora --version`: the commit (`git rev-parse --short HEAD`, "unknown"
//! outside a git checkout or without git; `FLORA_GIT_COMMIT` in the environment wins, for
//! builds from a copy without .git such as the Dockerfile's) and the enabled cargo features.

use std::path::PathBuf;
use std::process::Command;

/// The package folder, read when the script runs: `env!` would bake in the folder the script
/// was compiled in, which is gone when a target folder is copied from another checkout.
fn package_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

/// Runs git in the package folder; its trimmed stdout when it succeeds.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(package_dir())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Asks cargo to run this again when `path` (relative to the package, as git prints it) changes.
fn rerun_if_exists(path: &str) {
    let path = package_dir().join(path);
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=FLORA_GIT_COMMIT");
    let given = std::env::var("FLORA_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let found = || git(&["rev-parse", "--short", "HEAD"]);
    let commit = given
        .clone()
        .or_else(found)
        .unwrap_or_else(|| "unknown".into());
    if given.is_none() && commit != "unknown" {
        // HEAD moves on a checkout (.git/HEAD), a commit moves the branch's ref file; a
        // worktree's .git is a file, so ask git where they are.
        if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
            rerun_if_exists(&head);
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
            && let Some(reference) = git(&["rev-parse", "--git-path", &branch])
        {
            rerun_if_exists(&reference);
        }
        if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
            rerun_if_exists(&packed);
        }
    } else if given.is_none() {
        // git failed (not installed, a locked or odd repository): try again once .git changes,
        // rather than keeping "unknown" until build.rs itself changes.
        rerun_if_exists(".git");
    }
    println!("cargo:rustc-env=FLORA_GIT_COMMIT={commit}");

    let mut features: Vec<String> = std::env::vars()
        .filter_map(|(key, _)| key.strip_prefix("CARGO_FEATURE_").map(str::to_owned))
        .map(|name| name.to_lowercase().replace('_', "-"))
        .collect();
    features.sort();
    let features = if features.is_empty() {
        "none".to_owned()
    } else {
        features.join(", ")
    };
    println!("cargo:rustc-env=FLORA_FEATURES={features}");
}
