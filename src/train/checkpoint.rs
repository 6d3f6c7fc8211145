//! Checkpoints: `<out>/checkpoints/step-NNNNNNN/` holds the adapter (PEFT layout), the optimizer
//! state (`optimizer.safetensors`) and `state.json` (step, data cursor, tokens seen, the run's
//! config and the model's shape). A checkpoint is written into a temporary directory, synced, and
//! renamed into place, so a crash leaves either the whole checkpoint or none of it; older ones are
//! removed only after the new one exists.
//!
//! There is no generator state to save: dropout masks, Sophia's sampled labels and the data order
//! are pure functions of (seed, step) and (seed, epoch), so step and cursor resume them exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::{block_on, Device};
use crate::error::{Error, Result};
use crate::model::load::{peft, safetensors};
use crate::model::weights::Model;
use crate::tensor::Tensor;
use crate::train::config::TrainConfig;
use crate::train::data::Cursor;

pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    pub cursor: Cursor,
    pub tokens: u64,
    pub elapsed_s: f64,
    /// The model's shape (`Config` debug string): resuming on another model is refused.
    pub model_shape: String,
    /// The model's fingerprint (`load::fingerprint::model`: sizes, first and last MiB) and the
    /// absolute path it was read from; absent in checkpoints of older versions.
    #[serde(default)]
    pub model_fingerprint: Option<String>,
    #[serde(default)]
    pub model_path: Option<PathBuf>,
    pub config: TrainConfig,
}

fn bad(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.display().to_string(), detail: detail.into() }
}

/// Step directory name.
fn step_dir(root: &Path, step: usize) -> PathBuf {
    root.join(format!("step-{step:07}"))
}

fn sync_dir(dir: &Path) {
    // Best effort: makes the rename durable on filesystems that need it.
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Writes a checkpoint under `root` (`<out>/checkpoints`) and keeps the newest `keep` (≥ 1).
/// `opt` is the optimizer state as (name, tensor) pairs.
///
/// Room first: before writing, checkpoints beyond the newest `keep - 1` are removed (never the
/// newest one, so a failed write still leaves a checkpoint to resume from), so `keep` checkpoints
/// need `keep` checkpoints of disk and not one more. A failed write removes its temporary
/// directory before returning the error.
pub fn save(dev: &Device, root: &Path, model: &Model, opt: &[(String, &Tensor)], state: &State, keep: usize) -> Result<PathBuf> {
    let keep = keep.max(1);
    let fin = step_dir(root, state.step);
    prune(root, keep.saturating_sub(1).max(1), Some(state.step))?;
    let tmp = root.join(format!(".tmp-step-{:07}-{}", state.step, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = || -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(crate::error::io_at(&tmp, "create"))?;
        block_on(Some(dev), peft::save(dev, model, &tmp, &state.config.model.display().to_string()))?;
        let mut tensors = Vec::with_capacity(opt.len());
        for (name, t) in opt {
            tensors.push((name.clone(), t.shape().to_vec(), block_on(Some(dev), t.to_vec_f32(dev))?));
        }
        safetensors::write(&tmp.join(OPTIMIZER_FILE), &tensors, None)?;
        let json = serde_json::to_string_pretty(state).map_err(|e| bad(&tmp, e.to_string()))?;
        crate::model::load::write_atomic(&tmp.join(STATE_FILE), json.as_bytes())?;
        sync_dir(&tmp);
        if fin.exists() {
            std::fs::remove_dir_all(&fin).map_err(crate::error::io_at(&fin, "replace"))?;
        }
        std::fs::rename(&tmp, &fin).map_err(crate::error::io_at(&fin, "rename a checkpoint into"))
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(root);
    prune(root, keep, None)?;
    Ok(fin)
}

/// Removes all but the newest `keep` complete checkpoints under `root` (a checkpoint of step
/// `except` is left alone: it is about to be replaced).
fn prune(root: &Path, keep: usize, except: Option<usize>) -> Result<()> {
    let all: Vec<(usize, PathBuf)> = list(root)?.into_iter().filter(|(s, _)| Some(*s) != except).collect();
    for (_, old) in all.iter().rev().skip(keep) {
        std::fs::remove_dir_all(old).map_err(crate::error::io_at(old, "remove an old checkpoint"))?;
    }
    Ok(())
}

/// Removes temporary checkpoint directories (`.tmp-step-*`) a killed or failed write left under
/// `root`; called when a run starts or resumes, when no write of this run is in progress.
pub fn remove_leftovers(root: &Path) -> Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(Vec::new()) };
    let mut removed = Vec::new();
    for e in entries.filter_map(|e| e.ok()) {
        if e.file_name().to_string_lossy().starts_with(".tmp-step-") {
            let p = e.path();
            std::fs::remove_dir_all(&p).map_err(crate::error::io_at(&p, "remove a leftover temporary checkpoint"))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// The run directory a checkpoint belongs to: `<out>` for `<out>/checkpoints/step-N`. A step
/// directory that is not inside a run's `checkpoints/` folder has none, and cannot be resumed in
/// place (the run would have nowhere of its own to write).
pub fn run_dir(ckpt: &Path) -> Result<PathBuf> {
    let parent = ckpt.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"));
    match parent.and_then(|p| p.parent()) {
        Some(out) => Ok(if out.as_os_str().is_empty() { PathBuf::from(".") } else { out.to_path_buf() }),
        None => Err(bad(
            ckpt,
            "this step directory is not inside a run's checkpoints/ folder; resume the run directory that holds it (RUN/checkpoints/step-N)",
        )),
    }
}

/// Complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(root) else { return Ok(Vec::new()) };
    let mut out: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            Some((step, e.path()))
        })
        .filter(|(_, p)| p.join(STATE_FILE).exists())
        .collect();
    out.sort();
    Ok(out)
}

/// The checkpoint `path` means: a step directory itself, or the newest one under a run directory
/// (`<out>`) or its `checkpoints/` folder.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    for root in [path.join("checkpoints"), path.to_path_buf()] {
        if let Some((_, p)) = list(&root)?.pop() {
            return Ok(p);
        }
    }
    Err(bad(path, "no checkpoint here (expected a run directory with checkpoints/step-*/state.json, or a step directory)"))
}

pub fn load_state(ckpt: &Path) -> Result<State> {
    let path = ckpt.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(crate::error::io_at(&path, "read"))?;
    serde_json::from_str(&text).map_err(|e| bad(&path, format!("{e}; the file is damaged or from another flexlora version")))
}

/// Loads the optimizer state, checking that it has exactly `want` (name, shape) entries.
pub fn load_optimizer(dev: &Device, ckpt: &Path, want: &[(String, Vec<usize>)]) -> Result<Vec<Tensor>> {
    let path = ckpt.join(OPTIMIZER_FILE);
    let (mut tensors, _): (HashMap<_, _>, _) = safetensors::read_all(&path)?;
    let mut out = Vec::with_capacity(want.len());
    for (name, shape) in want {
        let (got, data) = tensors.remove(name).ok_or_else(|| bad(&path, format!("optimizer state `{name}` is missing")))?;
        if &got != shape {
            return Err(bad(&path, format!("optimizer state `{name}` has shape {got:?}, expected {shape:?}")));
        }
        out.push(Tensor::from_f32(dev, name, shape, &data)?);
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(bad(&path, format!("unexpected optimizer state `{extra}`: the checkpoint is from another optimizer or adapter")));
    }
    Ok(out)
}
