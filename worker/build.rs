//! Stamps the binaries with the commit they were built from, so `--version` and every agent's
//! registration tell an operator exactly what runs where during a rolling upgrade.
//!
//! A release build sets `FERRY_COMMIT` (deploy/release/build does, from the tag), which keeps
//! the build reproducible without a `.git` directory. Otherwise git is asked; a source tree
//! without git says "unknown" rather than failing the build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FERRY_COMMIT");
    let commit = match std::env::var("FERRY_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=FERRY_BUILD_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()).filter(|s| !s.is_empty())
}

fn from_git() -> Option<String> {
    // Rerun when HEAD moves: HEAD itself, and the ref it names (a commit on a branch changes
    // only the ref file). In a worktree, both live under the worktree's own git dir.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = PathBuf::from(dir);
        watch(&dir.join("HEAD"));
        if let Some(name) = git(&["symbolic-ref", "-q", "HEAD"]) {
            let common = git(&["rev-parse", "--git-common-dir"]).map(PathBuf::from).unwrap_or_else(|| dir.clone());
            let common = if common.is_absolute() { common } else { std::env::current_dir().ok()?.join(common) };
            watch(&common.join(&name));
            watch(&common.join("packed-refs"));
        }
    }
    // No "-dirty" mark: the script reruns only when HEAD moves, so it could not keep one true.
    git(&["rev-parse", "HEAD"])
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
