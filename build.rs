//! Records the git commit the binary is built from (`FLEXLORA_COMMIT`, "unknown" outside a git
//! checkout), so an experiment's run summaries say which code produced them. It reruns when HEAD
//! moves, not on uncommitted edits: build what you report from a clean checkout.

use std::process::Command;

fn main() {
    let git = |args: &[&str]| {
        let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FLEXLORA_COMMIT={commit}");
    println!("cargo:rerun-if-changed=build.rs");
    if let (Some(dir), Some(common)) = (git(&["rev-parse", "--git-dir"]), git(&["rev-parse", "--git-common-dir"])) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={common}/{branch}");
        }
        println!("cargo:rerun-if-changed={common}/packed-refs");
    }
}
