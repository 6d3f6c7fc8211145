//! One training state as the bytes of one safetensors file (`checkpoint.safetensors`), the same
//! natively and in the browser: a run saved on one side continues on the other. This module only
//! encodes and decodes bytes and checks them against a model's shape; it touches no file system
//! (native step directories are `checkpoint.rs`), so the browser build has it.
//!
//! The file holds:
//! - the adapter tensors under their PEFT names (`base_model.model.model.layers.{i}.{module}.lora_A.weight`);
//! - the optimizer state under `optimizer.<state>.<PEFT name>` (AdamW `m`, `v`; Sophia `m`, `h`);
//! - in `__metadata__` (string values): `flexlora.checkpoint.version` (`VERSION`),
//!   `flexlora.progress` (step, total steps, data cursor, tokens, elapsed seconds: JSON),
//!   `flexlora.config` (the run's `TrainConfig` as JSON), `flexlora.adapter_config` (PEFT's
//!   `adapter_config.json` text), `flexlora.optimizer.state` (the state names, comma-separated)
//!   and the model's identity: `flexlora.model.shape` (the `Config` debug string),
//!   `flexlora.model.fingerprint` (`load::fingerprint::model`) and `flexlora.model.name` (the path
//!   or URL it was read from), the last two when known.
//!
//! All tensors are f32, so a resumed run continues bit for bit. A reader refuses a newer or
//! unknown version, a checkpoint of another model, and missing, extra or misshapen tensors, each
//! with `Error::Checkpoint` naming the tensor and what to do.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::load::{peft, safetensors_bytes};
use crate::model::lora::{peft_names, LoraConfig};
use crate::train::memory::linear_shape;

/// The file name a checkpoint has in a step directory and in the browser's downloads.
pub const FILE: &str = "checkpoint.safetensors";
/// The format version this build writes and the newest it reads.
pub const VERSION: u32 = 1;

const KEY_VERSION: &str = "flexlora.checkpoint.version";
const KEY_PROGRESS: &str = "flexlora.progress";
const KEY_CONFIG: &str = "flexlora.config";
const KEY_ADAPTER: &str = "flexlora.adapter_config";
const KEY_STATE_NAMES: &str = "flexlora.optimizer.state";
const KEY_SHAPE: &str = "flexlora.model.shape";
const KEY_FINGERPRINT: &str = "flexlora.model.fingerprint";
const KEY_NAME: &str = "flexlora.model.name";
/// Prefix of optimizer state tensors (the adapter's own names start with `base_model.`).
const OPTIMIZER_PREFIX: &str = "optimizer.";

/// A tensor on the host: (name, shape, data).
pub type HostTensor = (String, Vec<usize>, Vec<f32>);

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps completed.
    pub step: usize,
    pub total_steps: usize,
    /// The next example in the training order (`train::data::Cursor`, kept as its two numbers
    /// so this module needs nothing of the data loader): the `index`-th of epoch `epoch`.
    pub epoch: u64,
    pub index: usize,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Seconds spent in training steps so far.
    pub elapsed_s: f64,
}

/// Which model a run trains: its shape (`format!("{:?}", Config)`), and when known its content
/// fingerprint and the path or URL it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelId {
    pub shape: String,
    pub fingerprint: Option<String>,
    pub name: Option<String>,
}

impl ModelId {
    /// The identity of a model of configuration `cfg`.
    pub fn of(cfg: &Config, fingerprint: Option<String>, name: Option<String>) -> ModelId {
        ModelId { shape: format!("{cfg:?}"), fingerprint, name }
    }

    fn describe(&self) -> String {
        self.name.clone().unwrap_or_else(|| "an unnamed model".into())
    }
}

/// A whole training state in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub progress: Progress,
    /// The run's settings (`train::config::TrainConfig` serialized to JSON).
    pub config: serde_json::Value,
    pub lora: LoraConfig,
    pub model: ModelId,
    /// The optimizer's state names in its order (`Optimizer::state_names`).
    pub state_names: Vec<String>,
    /// The adapter under PEFT names.
    pub adapter: Vec<HostTensor>,
    /// The optimizer state, named `<state>.<PEFT name>` (as `AdapterStore::named_state`).
    pub optimizer: Vec<HostTensor>,
}

fn bad(origin: &str, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: origin.to_string(), detail: detail.into() }
}

impl Checkpoint {
    /// The checkpoint as the bytes of one safetensors file (the same state gives the same bytes).
    pub fn encode(&self) -> Result<Vec<u8>> {
        let origin = FILE;
        let json = |v: serde_json::Result<String>| v.map_err(|e| bad(origin, format!("cannot encode: {e}")));
        let mut meta = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            (KEY_VERSION.to_string(), VERSION.to_string()),
            (KEY_PROGRESS.to_string(), json(serde_json::to_string(&self.progress))?),
            (KEY_CONFIG.to_string(), json(serde_json::to_string(&self.config))?),
            (KEY_ADAPTER.to_string(), peft::config_json(&self.lora, self.model.name.as_deref().unwrap_or(""))),
            (KEY_STATE_NAMES.to_string(), self.state_names.join(",")),
            (KEY_SHAPE.to_string(), self.model.shape.clone()),
        ]);
        if let Some(f) = &self.model.fingerprint {
            meta.insert(KEY_FINGERPRINT.to_string(), f.clone());
        }
        if let Some(n) = &self.model.name {
            meta.insert(KEY_NAME.to_string(), n.clone());
        }
        let mut tensors: Vec<HostTensor> = self.adapter.clone();
        for (name, shape, data) in &self.optimizer {
            tensors.push((format!("{OPTIMIZER_PREFIX}{name}"), shape.clone(), data.clone()));
        }
        safetensors_bytes::serialize(origin, &tensors, Some(meta))
    }

    /// Reads a checkpoint from `bytes`; `origin` (a path, a URL, a file the user picked) names it in
    /// errors. Refuses what is not a flexlora checkpoint and a version newer than `VERSION`.
    pub fn decode(origin: &str, bytes: &[u8]) -> Result<Checkpoint> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(origin, format!("not a valid safetensors file ({e}); is it truncated?")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let Some(version) = meta.get(KEY_VERSION) else {
            return Err(bad(
                origin,
                format!(
                    "not a flexlora training checkpoint (its metadata has no `{KEY_VERSION}`); an adapter alone \
                     (adapter_model.safetensors) is loaded with --adapter, not resumed"
                ),
            ));
        };
        match version.trim().parse::<u32>() {
            Ok(v) if v == VERSION => {}
            Ok(v) if v > VERSION => {
                return Err(bad(
                    origin,
                    format!(
                        "written by a newer flexlora (checkpoint format version {v}; this build reads version {VERSION}); \
                         update flexlora to continue this run"
                    ),
                ))
            }
            _ => return Err(bad(origin, format!("unknown checkpoint format version `{version}` (this build reads version {VERSION})"))),
        }
        let get = |key: &str| meta.get(key).ok_or_else(|| bad(origin, format!("its metadata lacks `{key}`; the file is damaged")));
        let progress: Progress =
            serde_json::from_str(get(KEY_PROGRESS)?).map_err(|e| bad(origin, format!("`{KEY_PROGRESS}`: {e}; the file is damaged")))?;
        let config: serde_json::Value =
            serde_json::from_str(get(KEY_CONFIG)?).map_err(|e| bad(origin, format!("`{KEY_CONFIG}`: {e}; the file is damaged")))?;
        let lora = peft::parse_config(&format!("{origin}: {KEY_ADAPTER}"), get(KEY_ADAPTER)?)?;
        let state_names: Vec<String> = get(KEY_STATE_NAMES)?.split(',').filter(|s| !s.is_empty()).map(String::from).collect();
        let model =
            ModelId { shape: get(KEY_SHAPE)?.clone(), fingerprint: meta.get(KEY_FINGERPRINT).cloned(), name: meta.get(KEY_NAME).cloned() };
        let (tensors, _) = safetensors_bytes::read_all(origin, bytes).map_err(|e| match e {
            Error::Config { detail, .. } => bad(origin, detail),
            e => e,
        })?;
        let (mut adapter, mut optimizer) = (Vec::new(), Vec::new());
        for (name, (shape, data)) in tensors {
            match name.strip_prefix(OPTIMIZER_PREFIX) {
                Some(n) => optimizer.push((n.to_string(), shape, data)),
                None => adapter.push((name, shape, data)),
            }
        }
        adapter.sort_by(|a, b| a.0.cmp(&b.0));
        optimizer.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Checkpoint { progress, config, lora, model, state_names, adapter, optimizer })
    }

    /// Refuses to continue this checkpoint on `current`, another model: a different shape, or the
    /// same shape with other contents (when both fingerprints are known).
    pub fn check_model(&self, origin: &str, current: &ModelId) -> Result<()> {
        let (saved, now) = (self.model.describe(), current.describe());
        if self.model.shape != current.shape {
            return Err(bad(
                origin,
                format!(
                    "it was trained on {saved}, a model of shape {}, not on {now} ({}); load the model it was trained on \
                     (natively: --model {saved})",
                    self.model.shape, current.shape
                ),
            ));
        }
        if let (Some(a), Some(b)) = (&self.model.fingerprint, &current.fingerprint) {
            if a != b {
                return Err(bad(
                    origin,
                    format!(
                        "it was trained on the model {saved} ({a}), but {now} has other contents ({b}); load the model the \
                         run was trained on (natively: --model {saved})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks every tensor against a model of configuration `cfg` and an optimizer keeping
    /// `state_names`: each adapter tensor that `self.lora` implies, with its shape, and one
    /// optimizer tensor per state name and adapter tensor of the same shape; nothing missing,
    /// nothing extra.
    pub fn check_tensors(&self, origin: &str, cfg: &Config, state_names: &[&str]) -> Result<()> {
        if self.state_names.iter().map(String::as_str).ne(state_names.iter().copied()) {
            return Err(bad(
                origin,
                format!(
                    "it holds the optimizer state {:?}, but this run's optimizer keeps {state_names:?}: the checkpoint is from another optimizer",
                    self.state_names
                ),
            ));
        }
        let r = self.lora.rank;
        let mut want: Vec<(String, [usize; 2])> = Vec::new();
        for i in 0..cfg.layers {
            for &t in &self.lora.targets {
                let [out, inp] = linear_shape(cfg, t);
                let (a, b) = peft_names(i, t);
                want.push((a, [r, inp]));
                want.push((b, [out, r]));
            }
        }
        let check = |kind: &str, have: &[HostTensor], want: &[(String, [usize; 2])]| -> Result<()> {
            let by_name: HashMap<&str, &Vec<usize>> = have.iter().map(|(n, s, _)| (n.as_str(), s)).collect();
            for (name, shape) in want {
                match by_name.get(name.as_str()) {
                    None => return Err(bad(origin, format!("{kind} tensor `{name}` is missing; the file is damaged or incomplete"))),
                    Some(got) if got.as_slice() != shape => {
                        return Err(bad(
                            origin,
                            format!(
                                "{kind} tensor `{name}` has shape {got:?}, but rank {r} on this model needs {shape:?}; \
                                 the checkpoint is from another model or adapter config"
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            let wanted: std::collections::HashSet<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
            if let Some((extra, _, _)) = have.iter().find(|(n, _, _)| !wanted.contains(n.as_str())) {
                return Err(bad(
                    origin,
                    format!(
                        "unexpected {kind} tensor `{extra}`: the adapter config (targets {:?}) does not account for it",
                        self.lora.targets
                    ),
                ));
            }
            Ok(())
        };
        check("adapter", &self.adapter, &want)?;
        let want_opt: Vec<(String, [usize; 2])> =
            state_names.iter().flat_map(|s| want.iter().map(move |(n, shape)| (format!("{s}.{n}"), *shape))).collect();
        check("optimizer state", &self.optimizer, &want_opt)
    }

    /// Takes the optimizer state out, keyed by name (`<state>.<PEFT name>`).
    pub fn take_optimizer(&mut self) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
        std::mem::take(&mut self.optimizer).into_iter().map(|(n, s, d)| (n, (s, d))).collect()
    }

    /// Takes the adapter tensors out, keyed by PEFT name.
    pub fn take_adapter(&mut self) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
        std::mem::take(&mut self.adapter).into_iter().map(|(n, s, d)| (n, (s, d))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;
    use crate::model::lora::Target;

    fn config() -> Config {
        Config {
            arch: Arch::Llama,
            c: 16,
            f: 24,
            h: 4,
            kv: 2,
            d: 4,
            layers: 2,
            vocab: 50,
            eps: 1e-5,
            rope_base: 10000.0,
            rope_scaling: None,
            max_pos: 64,
            tied: true,
            qkv_bias: false,
            bos: None,
            eos: vec![1],
        }
    }

    /// A checkpoint of `cfg` with rank 2 on q_proj and down_proj, AdamW state, values from `seed`.
    fn sample(cfg: &Config, seed: u32) -> Checkpoint {
        let lora = LoraConfig { rank: 2, alpha: 5.0, dropout: 0.1, rslora: false, targets: vec![Target::Q, Target::Down] };
        let mut adapter = Vec::new();
        let mut x = seed as f32;
        let mut fill = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    x = (x * 1.618 + 0.37).fract() - 0.5;
                    x / 3.0
                })
                .collect()
        };
        for i in 0..cfg.layers {
            for &t in &lora.targets {
                let [out, inp] = linear_shape(cfg, t);
                let (a, b) = peft_names(i, t);
                adapter.push((a, vec![2, inp], fill(2 * inp)));
                adapter.push((b, vec![out, 2], fill(2 * out)));
            }
        }
        let optimizer = ["m", "v"]
            .iter()
            .flat_map(|s| adapter.iter().map(move |(n, shape, d)| (format!("{s}.{n}"), shape.clone(), d.iter().map(|v| v * 0.5).collect())))
            .collect();
        Checkpoint {
            progress: Progress { step: 7, total_steps: 20, epoch: 1, index: 3, tokens: 1234, elapsed_s: 0.1 + 0.2 },
            config: serde_json::json!({"lr": 0.001, "seed": 3, "optimizer": "adamw"}),
            lora,
            model: ModelId::of(cfg, Some("7 bytes, edges:00ff".into()), Some("models/tiny.gguf".into())),
            state_names: vec!["m".into(), "v".into()],
            adapter,
            optimizer,
        }
    }

    fn with_meta(bytes: &[u8], key: &str, value: Option<&str>) -> Vec<u8> {
        let (mut tensors, mut meta) = safetensors_bytes::read_all("t", bytes).unwrap();
        match value {
            Some(v) => meta.insert(key.to_string(), v.to_string()),
            None => meta.remove(key),
        };
        let list: Vec<HostTensor> = tensors.drain().map(|(n, (s, d))| (n, s, d)).collect();
        safetensors_bytes::serialize("t", &list, Some(meta)).unwrap()
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        r.expect_err("expected an error").to_string()
    }

    #[test]
    fn encode_decode_round_trips_bit_for_bit_and_is_deterministic() {
        let cfg = config();
        let ck = sample(&cfg, 1);
        let bytes = ck.encode().unwrap();
        assert_eq!(bytes, ck.encode().unwrap(), "the same state gave different bytes");
        let back = Checkpoint::decode("ck", &bytes).unwrap();
        let mut want = ck.clone();
        want.adapter.sort_by(|a, b| a.0.cmp(&b.0));
        want.optimizer.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(back, want);
        back.check_model("ck", &ck.model).unwrap();
        back.check_tensors("ck", &cfg, &["m", "v"]).unwrap();
    }

    #[test]
    fn newer_unknown_or_missing_versions_are_refused() {
        let bytes = sample(&config(), 2).encode().unwrap();
        let e = err(Checkpoint::decode("ck.safetensors", &with_meta(&bytes, KEY_VERSION, Some("2"))));
        assert!(e.contains("ck.safetensors") && e.contains("newer flexlora") && e.contains("version 2"), "{e}");
        let e = err(Checkpoint::decode("ck", &with_meta(&bytes, KEY_VERSION, Some("one"))));
        assert!(e.contains("unknown checkpoint format version `one`"), "{e}");
        let e = err(Checkpoint::decode("ck", &with_meta(&bytes, KEY_VERSION, None)));
        assert!(e.contains("not a flexlora training checkpoint") && e.contains("--adapter"), "{e}");
        let e = err(Checkpoint::decode("ck", &with_meta(&bytes, KEY_PROGRESS, None)));
        assert!(e.contains(KEY_PROGRESS), "{e}");
        let e = err(Checkpoint::decode("half.safetensors", &bytes[..bytes.len() / 2]));
        assert!(e.contains("half.safetensors") && e.contains("truncated"), "{e}");
    }

    #[test]
    fn another_model_is_refused_naming_both() {
        let cfg = config();
        let ck = sample(&cfg, 3);
        let mut other = cfg.clone();
        other.f = 32;
        let e = err(ck.check_model("ck", &ModelId::of(&other, None, Some("models/big.gguf".into()))));
        assert!(e.contains("models/tiny.gguf") && e.contains("models/big.gguf") && e.contains("--model models/tiny.gguf"), "{e}");
        let e = err(ck.check_model("ck", &ModelId::of(&cfg, Some("7 bytes, edges:0100".into()), Some("copy.gguf".into()))));
        assert!(e.contains("other contents") && e.contains("edges:0100") && e.contains("edges:00ff"), "{e}");
        // An unknown fingerprint on either side: the shape decides.
        ck.check_model("ck", &ModelId::of(&cfg, None, None)).unwrap();
    }

    #[test]
    fn missing_extra_or_misshapen_tensors_are_refused_by_name() {
        let cfg = config();
        let ck = sample(&cfg, 4);
        let a0 = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
        let mut c = ck.clone();
        c.adapter.retain(|t| t.0 != a0);
        let e = err(c.check_tensors("ck", &cfg, &["m", "v"]));
        assert!(e.contains(a0) && e.contains("missing"), "{e}");
        let mut c = ck.clone();
        c.optimizer.retain(|t| t.0 != format!("v.{a0}"));
        let e = err(c.check_tensors("ck", &cfg, &["m", "v"]));
        assert!(e.contains(&format!("v.{a0}")) && e.contains("missing"), "{e}");
        let mut c = ck.clone();
        c.lora.rank = 3;
        let e = err(c.check_tensors("ck", &cfg, &["m", "v"]));
        assert!(e.contains(a0) && e.contains("[2, 16]") && e.contains("rank 3"), "{e}");
        let mut c = ck.clone();
        c.lora.targets = vec![Target::Q];
        let e = err(c.check_tensors("ck", &cfg, &["m", "v"]));
        assert!(e.contains("unexpected adapter tensor") && e.contains("down_proj"), "{e}");
        let e = err(ck.check_tensors("ck", &cfg, &["m", "h"]));
        assert!(e.contains("another optimizer"), "{e}");
        let mut other = cfg.clone();
        other.layers = 3;
        let e = err(ck.check_tensors("ck", &other, &["m", "v"]));
        assert!(e.contains("layers.2.") && e.contains("missing"), "{e}");
    }
}
