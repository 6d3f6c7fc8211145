//! Checkpoints: `<out>/checkpoints/step-NNNNNNN/` holds `checkpoint.safetensors`, the whole
//! training state in one file (`train::state`: adapter, optimizer state, step, data cursor,
//! tokens, the run's config and the model's identity), which is what resume reads and what the
//! browser page opens and downloads; and next to it the adapter in PEFT's layout
//! (`adapter_config.json`, `adapter_model.safetensors`), for users who load it with PEFT or
//! `--adapter`. A checkpoint is written into a temporary directory, synced, and renamed into
//! place, so a crash leaves either the whole checkpoint or none of it; older ones are removed only
//! after the new one exists.
//!
//! Checkpoints of earlier versions (`state.json`, `optimizer.safetensors` and the PEFT files, no
//! `checkpoint.safetensors`) are still read, into the same in-memory state (`read_legacy`).
//!
//! There is no generator state to save: dropout masks, Sophia's sampled labels and the data order
//! are pure functions of (seed, step) and (seed, epoch), so step and cursor resume them exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::load::{peft, safetensors};
use crate::model::weights::Model;
use crate::tensor::Tensor;
use crate::train::config::TrainConfig;
use crate::train::data::Cursor;
use crate::train::state::{self, Checkpoint, ModelId, Progress};

/// The single-file training state in a step directory.
pub const FILE: &str = state::FILE;
/// Earlier versions' run state (JSON) and optimizer state; read, no longer written.
pub const STATE_FILE: &str = "state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// A checkpoint's state with the run's settings typed (`state::Checkpoint` holds them as JSON);
/// also the schema of earlier versions' `state.json`.
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

/// Where the run of `st` stands, as the single-file state holds it.
fn progress(st: &State) -> Progress {
    Progress {
        step: st.step,
        total_steps: st.total_steps,
        epoch: st.cursor.epoch,
        index: st.cursor.index,
        tokens: st.tokens,
        elapsed_s: st.elapsed_s,
    }
}

impl State {
    /// The model this state was trained on.
    pub fn model_id(&self) -> ModelId {
        ModelId {
            shape: self.model_shape.clone(),
            fingerprint: self.model_fingerprint.clone(),
            name: self.model_path.as_ref().map(|p| p.display().to_string()),
        }
    }

    /// The state of `ck`, its settings parsed into a `TrainConfig`; `origin` names it in errors.
    pub fn of(origin: &str, ck: &Checkpoint) -> Result<State> {
        let config: TrainConfig = serde_json::from_value(ck.config.clone()).map_err(|e| Error::Checkpoint {
            path: origin.into(),
            detail: format!("its run settings: {e}; the file is damaged or from another flexlora version"),
        })?;
        let p = &ck.progress;
        Ok(State {
            step: p.step,
            total_steps: p.total_steps,
            cursor: Cursor { epoch: p.epoch, index: p.index },
            tokens: p.tokens,
            elapsed_s: p.elapsed_s,
            model_shape: ck.model.shape.clone(),
            model_fingerprint: ck.model.fingerprint.clone(),
            model_path: ck.model.name.as_ref().map(PathBuf::from),
            config,
        })
    }
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

/// The whole training state of `model` (its adapter), the optimizer state `opt` (as (name,
/// tensor) pairs, `AdapterStore::named_state`) and `st`, read back to the host.
pub async fn to_checkpoint(dev: &Device, model: &Model, opt: &[(String, &Tensor)], state_names: &[&str], st: &State) -> Result<Checkpoint> {
    let lora = model.lora.clone().ok_or_else(|| bad(Path::new(FILE), "the model has no adapter to save"))?;
    let mut optimizer = Vec::with_capacity(opt.len());
    for (name, t) in opt {
        optimizer.push((name.clone(), t.shape().to_vec(), t.to_vec_f32(dev).await?));
    }
    let config = serde_json::to_value(&st.config).map_err(|e| bad(Path::new(FILE), format!("cannot encode the run settings: {e}")))?;
    Ok(Checkpoint {
        progress: progress(st),
        config,
        lora,
        model: st.model_id(),
        state_names: state_names.iter().map(|s| s.to_string()).collect(),
        adapter: peft::host_tensors(dev, model).await?,
        optimizer,
    })
}

/// Writes a checkpoint under `root` (`<out>/checkpoints`) and keeps the newest `keep` (≥ 1):
/// `checkpoint.safetensors` (`to_checkpoint`) and the adapter's PEFT files.
///
/// Room first: before writing, checkpoints beyond the newest `keep - 1` are removed (never the
/// newest one, so a failed write still leaves a checkpoint to resume from), so `keep` checkpoints
/// need `keep` checkpoints of disk and not one more. A failed write removes its temporary
/// directory before returning the error.
pub async fn save(
    dev: &Device,
    root: &Path,
    model: &Model,
    opt: &[(String, &Tensor)],
    state_names: &[&str],
    state: &State,
    keep: usize,
) -> Result<PathBuf> {
    let keep = keep.max(1);
    let fin = step_dir(root, state.step);
    prune(root, keep.saturating_sub(1).max(1), Some(state.step))?;
    let tmp = root.join(format!(".tmp-step-{:07}-{}", state.step, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // Read back first (the only await), then write the files.
    let ck = to_checkpoint(dev, model, opt, state_names, state).await?;
    let write = || -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(crate::error::io_at(&tmp, "create"))?;
        // The PEFT files from the tensors already read back (as `peft::save` writes them).
        safetensors::write(&tmp.join(peft::WEIGHTS_FILE), &ck.adapter, Some(peft::weights_metadata(&ck.lora)))?;
        let peft_config = peft::config_json(&ck.lora, &state.config.model.display().to_string());
        crate::model::load::write_atomic(&tmp.join(peft::CONFIG_FILE), peft_config.as_bytes())?;
        crate::model::load::write_atomic(&tmp.join(FILE), &ck.encode()?)?;
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

/// Whether `dir` holds a complete checkpoint (this version's or an earlier one).
fn is_checkpoint(dir: &Path) -> bool {
    dir.join(FILE).is_file() || dir.join(STATE_FILE).is_file()
}

/// The run directory a checkpoint (a step directory, or its `checkpoint.safetensors`) belongs
/// to: `<out>` for `<out>/checkpoints/step-N`. `None` for one that is not inside a run's
/// `checkpoints/` folder (a copied step directory, a file downloaded from the browser page).
pub fn run_dir(ckpt: &Path) -> Option<PathBuf> {
    let step = if ckpt.is_file() { ckpt.parent()? } else { ckpt };
    let parent = step.parent().filter(|p| p.file_name().is_some_and(|n| n == "checkpoints"))?;
    let out = parent.parent()?;
    Some(if out.as_os_str().is_empty() { PathBuf::from(".") } else { out.to_path_buf() })
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
        .filter(|(_, p)| is_checkpoint(p))
        .collect();
    out.sort();
    Ok(out)
}

/// The checkpoint `path` means: a `checkpoint.safetensors` file, a step directory, or the newest
/// step directory under a run directory (`<out>`) or its `checkpoints/` folder.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.is_file() || is_checkpoint(path) {
        return Ok(path.to_path_buf());
    }
    for root in [path.join("checkpoints"), path.to_path_buf()] {
        if let Some((_, p)) = list(&root)?.pop() {
            return Ok(p);
        }
    }
    Err(bad(
        path,
        "no checkpoint here (expected a checkpoint.safetensors file, a run directory with checkpoints/step-*/, or a step directory)",
    ))
}

/// Reads the checkpoint `ckpt` (a step directory or a checkpoint file, as `resolve` returns):
/// its typed state, and the whole state with its tensors. A step directory of an earlier version
/// is read by `read_legacy`.
pub fn read(ckpt: &Path) -> Result<(State, Checkpoint)> {
    let file = if ckpt.is_file() { ckpt.to_path_buf() } else { ckpt.join(FILE) };
    if !file.exists() && ckpt.join(STATE_FILE).exists() {
        return read_legacy(ckpt);
    }
    let bytes = std::fs::read(&file).map_err(crate::error::io_at(&file, "read"))?;
    let origin = file.display().to_string();
    let ck = Checkpoint::decode(&origin, &bytes)?;
    Ok((State::of(&origin, &ck)?, ck))
}

/// How errors name checkpoint `ckpt`: its `checkpoint.safetensors` when it has one.
pub fn origin(ckpt: &Path) -> String {
    let file = ckpt.join(FILE);
    if ckpt.is_dir() && file.exists() { file } else { ckpt.to_path_buf() }.display().to_string()
}

/// The typed state of checkpoint `ckpt` (see `read`).
pub fn load_state(ckpt: &Path) -> Result<State> {
    read(ckpt).map(|(s, _)| s)
}

/// Reads a step directory of an earlier version: `state.json`, the PEFT adapter files and
/// `optimizer.safetensors` (its tensors named `<state>.<PEFT name>`, the state names those of
/// the saved config's optimizer).
pub fn read_legacy(dir: &Path) -> Result<(State, Checkpoint)> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(crate::error::io_at(&path, "read"))?;
    let st: State =
        serde_json::from_str(&text).map_err(|e| bad(&path, format!("{e}; the file is damaged or from another flexlora version")))?;
    let cfg_path = dir.join(peft::CONFIG_FILE);
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(crate::error::io_at(&cfg_path, "read"))?;
    let lora = peft::parse_config(&cfg_path.display().to_string(), &cfg_text)?;
    let flat = |m: HashMap<String, (Vec<usize>, Vec<f32>)>| -> Vec<state::HostTensor> {
        let mut v: Vec<state::HostTensor> = m.into_iter().map(|(n, (s, d))| (n, s, d)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    let (adapter, _) = safetensors::read_all(&dir.join(peft::WEIGHTS_FILE))?;
    let (optimizer, _) = safetensors::read_all(&dir.join(OPTIMIZER_FILE))?;
    let state_names = crate::train::optimizer::from_config(&st.config).state_names().iter().map(|s| s.to_string()).collect();
    let config = serde_json::to_value(&st.config).map_err(|e| bad(&path, e.to_string()))?;
    let ck = Checkpoint {
        progress: progress(&st),
        config,
        lora,
        model: st.model_id(),
        state_names,
        adapter: flat(adapter),
        optimizer: flat(optimizer),
    };
    Ok((st, ck))
}
