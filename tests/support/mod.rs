//! Helpers shared by the integration-test crates (included with `#[path]`; a folder, so cargo
//! does not build it as a test of its own).

use std::path::{Path, PathBuf};

/// A fresh, empty temporary directory for one test (`prefix` names the crate, `tag` the test).
pub fn tmpdir(prefix: &str, tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexlora-{prefix}-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The datasets directory ($FLEXLORA_DATA, else ../shared/data) when it holds `needed`. Without
/// it a test skips loudly, and under CI=true it fails: CI never skips a test silently.
pub fn data_dir(needed: &str) -> Option<PathBuf> {
    let d = std::env::var_os("FLEXLORA_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if d.join(needed).is_file() {
        return Some(d);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {} is missing (set FLEXLORA_DATA)", d.join(needed).display());
    eprintln!("\n*** skipped: {} not found (set FLEXLORA_DATA to the folder with the datasets) ***\n", d.join(needed).display());
    None
}

/// A real model file: $`env`, else `models/<file>` in the checkout. Without it a test skips
/// loudly (`what`: what is then not tested; `fetch`: the scripts/fetch-model.sh command that
/// fetches it), and under CI=true it fails.
#[allow(dead_code)]
pub fn model_file(env: &str, file: &str, fetch: &str, what: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models").join(file));
    if p.exists() {
        return Some(p);
    }
    assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {what} is missing at {}: run {fetch}", p.display());
    eprintln!("\n*** skipped: {} not found (run {fetch}) — {what} is NOT being tested ***\n", p.display());
    None
}

/// The real default model, SmolLM2-135M-Instruct (GGUF, Q4_1): $FLEXLORA_MODEL_GGUF, else models/.
#[allow(dead_code)]
pub fn default_model(what: &str) -> Option<PathBuf> {
    model_file("FLEXLORA_MODEL_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf", "scripts/fetch-model.sh", what)
}

/// Copies the directory tree `from` to `to` (created), files and folders alike.
#[allow(dead_code)] // not every test crate copies a tree
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}
