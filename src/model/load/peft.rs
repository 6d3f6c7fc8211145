//! LoRA adapters as Hugging Face PEFT saves them: a directory with `adapter_config.json` and
//! `adapter_model.safetensors` (tensors named `base_model.model.model.layers.{i}.{module}.lora_A.weight`).
//! What flexlora writes, `PeftModel.from_pretrained` loads, and the other way round.
//!
//! Parsing works on text and bytes ([`parse_config`], [`attach_bytes`]), so the browser build
//! loads adapters with the same code; reading and writing directories is native.

use serde_json::json;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::load::safetensors_bytes;
use crate::model::lora::{LoraConfig, Target};
use crate::model::weights::Model;
#[cfg(not(target_arch = "wasm32"))]
pub use native::{load, save};

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn config_err(origin: &str, detail: impl Into<String>) -> Error {
    Error::Config { file: origin.to_string(), detail: detail.into() }
}

/// The PEFT `adapter_config.json` for `cfg`.
pub fn config_json(cfg: &LoraConfig, base_model: &str) -> String {
    let v = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.rslora,
        "target_modules": cfg.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "use_dora": false,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// The `__metadata__` of `adapter_model.safetensors`: PEFT's `format`, and the rank, alpha, scaling
/// and target modules, for loaders that read only the weights file (values are strings, as
/// safetensors requires).
pub fn weights_metadata(cfg: &LoraConfig) -> std::collections::HashMap<String, String> {
    let targets: Vec<&str> = cfg.targets.iter().map(|t| t.name()).collect();
    std::collections::HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("peft_type".to_string(), "LORA".to_string()),
        ("r".to_string(), cfg.rank.to_string()),
        ("lora_alpha".to_string(), cfg.alpha.to_string()),
        ("use_rslora".to_string(), cfg.rslora.to_string()),
        ("target_modules".to_string(), targets.join(",")),
    ])
}

/// Parses a PEFT `adapter_config.json`, rejecting what flexlora cannot apply (DoRA, other PEFT
/// types, biases, extra trained modules) with a message naming the key. `path` names the file.
pub fn parse_config(path: &str, text: &str) -> Result<LoraConfig> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| config_err(path, e.to_string()))?;
    let get = |k: &str| v.get(k).filter(|x| !x.is_null());
    if let Some(t) = get("peft_type").and_then(|t| t.as_str()) {
        if t != "LORA" {
            return Err(config_err(path, format!("peft_type `{t}` is not supported; flexlora applies LoRA adapters")));
        }
    }
    for (key, ok) in [("use_dora", json!(false)), ("bias", json!("none")), ("fan_in_fan_out", json!(false))] {
        if let Some(x) = get(key) {
            if *x != ok {
                return Err(config_err(path, format!("`{key}` = {x} is not supported (flexlora needs {ok})")));
            }
        }
    }
    if get("modules_to_save").and_then(|m| m.as_array()).is_some_and(|m| !m.is_empty()) {
        return Err(config_err(path, "`modules_to_save` is not supported: flexlora trains and loads LoRA matrices only"));
    }
    // Each of these changes which layers get the adapter or at what rank and scale; ignoring it
    // would apply the adapter other than it was trained.
    if let Some(x) = get("layers_to_transform") {
        return Err(config_err(
            path,
            format!("`layers_to_transform` = {x} is not supported: flexlora applies an adapter to every layer; merge or re-save the adapter for all layers"),
        ));
    }
    if let Some(x) = get("layers_pattern").filter(|x| x.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(config_err(path, format!("`layers_pattern` = {x} is not supported: flexlora applies an adapter to every layer")));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if let Some(x) = get(key).filter(|x| x.as_object().is_none_or(|o| !o.is_empty())) {
            return Err(config_err(path, format!("`{key}` = {x} is not supported: flexlora uses one rank and alpha for every module")));
        }
    }
    let rank = get("r").and_then(|r| r.as_u64()).ok_or_else(|| config_err(path, "`r` (the LoRA rank) is missing"))? as usize;
    let alpha = get("lora_alpha").and_then(|a| a.as_f64()).unwrap_or(8.0) as f32;
    let dropout = get("lora_dropout").and_then(|d| d.as_f64()).unwrap_or(0.0) as f32;
    let rslora = get("use_rslora").and_then(|r| r.as_bool()).unwrap_or(false);
    let names: Vec<String> = match get("target_modules") {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
        _ => return Err(config_err(path, "`target_modules` is missing")),
    };
    let mut targets = Vec::new();
    for n in &names {
        let t = Target::parse(n).map_err(|_| {
            config_err(
                path,
                format!("target module `{n}` is not a Llama linear layer (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)"),
            )
        })?;
        if !targets.contains(&t) {
            targets.push(t);
        }
    }
    targets.sort_by_key(|t| t.index());
    let cfg = LoraConfig { rank, alpha, dropout, rslora, targets };
    cfg.validate().map_err(|e| config_err(path, e.to_string()))?;
    Ok(cfg)
}

/// The adapter's tensors read back to the host, PEFT-named, in `lora_tensors` order.
pub async fn host_tensors(dev: &Device, model: &Model) -> Result<Vec<(String, Vec<usize>, Vec<f32>)>> {
    let mut out = Vec::new();
    for (name, t) in model.lora_tensors() {
        out.push((name, t.shape().to_vec(), t.to_vec_f32(dev).await?));
    }
    Ok(out)
}

/// The model's adapter as PEFT's two files: `adapter_config.json` text and
/// `adapter_model.safetensors` bytes (what `save` writes, and what the browser downloads).
pub async fn files(dev: &Device, model: &Model, base_model: &str) -> Result<(String, Vec<u8>)> {
    let cfg = model.lora.as_ref().ok_or_else(|| config_err(base_model, "the model has no adapter to save"))?;
    let weights = safetensors_bytes::serialize(WEIGHTS_FILE, &host_tensors(dev, model).await?, Some(weights_metadata(cfg)))?;
    Ok((config_json(cfg, base_model), weights))
}

/// Attaches the adapter given as `adapter_config.json` text and `adapter_model.safetensors` bytes
/// to `model`; `origin` names the adapter (a directory, a URL) in errors.
pub fn attach_bytes(dev: &Device, model: &mut Model, origin: &str, config_text: &str, weights: &[u8]) -> Result<LoraConfig> {
    let cfg = parse_config(&format!("{origin}/{CONFIG_FILE}"), config_text)?;
    let weights_origin = format!("{origin}/{WEIGHTS_FILE}");
    let (mut tensors, _) = safetensors_bytes::read_all(&weights_origin, weights)?;
    check_names(model.layers.len(), &cfg, &weights_origin, tensors.keys())?;
    // PEFT saves without the adapter name; older versions sometimes kept `.default`.
    model.attach_lora_from(dev, &cfg, &weights_origin, &mut |name| {
        Ok(tensors.remove(name).or_else(|| tensors.remove(&name.replace(".weight", ".default.weight"))))
    })?;
    Ok(cfg)
}

/// Refuses tensors the adapter config does not account for: a module outside `target_modules`
/// or a layer this model (of `layers` layers) does not have would otherwise be dropped without a word.
pub fn check_names<'a>(layers: usize, cfg: &LoraConfig, origin: &str, names: impl Iterator<Item = &'a String>) -> Result<()> {
    let mut expected = std::collections::HashSet::new();
    for i in 0..layers {
        for &t in &cfg.targets {
            let (a, b) = crate::model::lora::peft_names(i, t);
            for n in [a, b] {
                expected.insert(n.replace(".weight", ".default.weight"));
                expected.insert(n);
            }
        }
    }
    let mut unexpected: Vec<&String> = names.filter(|n| !expected.contains(*n)).collect();
    unexpected.sort();
    let Some(first) = unexpected.first() else { return Ok(()) };
    let layer = first.split(".layers.").nth(1).and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
    let module = Target::ALL.into_iter().find(|t| first.contains(&format!(".{}.", t.module())));
    let why = match (layer, module) {
        (Some(i), _) if i >= layers => {
            format!("it is for layer {i}, but the model has {layers} layers (0-{}): the adapter was trained on another model", layers - 1)
        }
        (_, Some(t)) => format!(
            "its module {} is not in the config's target_modules ({}): the config and the weights do not match",
            t.name(),
            cfg.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
        ),
        _ => "it is not a LoRA matrix of a Llama linear layer (lora_A/lora_B of q/k/v/o/gate/up/down_proj)".into(),
    };
    Err(Error::Weights {
        file: origin.into(),
        tensor: first.to_string(),
        detail: format!(
            "{why}{}",
            if unexpected.len() > 1 { format!(" ({} more such tensors)", unexpected.len() - 1) } else { String::new() }
        ),
    })
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::Path;

    use super::{attach_bytes, config_err, files, CONFIG_FILE, WEIGHTS_FILE};
    use crate::device::Device;
    use crate::error::{io_at, Result};
    use crate::model::load::write_atomic;
    use crate::model::lora::LoraConfig;
    use crate::model::weights::Model;

    /// Writes the model's adapter into `dir` (created if needed) in PEFT's layout, each file atomically.
    pub async fn save(dev: &Device, model: &Model, dir: &Path, base_model: &str) -> Result<()> {
        if model.lora.is_none() {
            return Err(config_err(&dir.display().to_string(), "the model has no adapter to save"));
        }
        let (config, weights) = files(dev, model, base_model).await?;
        std::fs::create_dir_all(dir).map_err(|e| config_err(&dir.display().to_string(), format!("cannot create the directory: {e}")))?;
        write_atomic(&dir.join(WEIGHTS_FILE), &weights)?;
        write_atomic(&dir.join(CONFIG_FILE), config.as_bytes())
    }

    /// Reads a PEFT adapter directory (or its `adapter_model.safetensors`) and attaches it to `model`.
    pub fn load(dev: &Device, model: &mut Model, path: &Path) -> Result<LoraConfig> {
        let dir = if path.is_file() { path.parent().unwrap_or(Path::new(".")) } else { path };
        let cfg_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| {
            config_err(
                &cfg_path.display().to_string(),
                format!("{e}; an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE} as PEFT saves them"),
            )
        })?;
        let weights = dir.join(WEIGHTS_FILE);
        if !weights.exists() && dir.join("adapter_model.bin").exists() {
            return Err(config_err(
                &weights.display().to_string(),
                "only adapter_model.bin (a pickle) is present; save the adapter with safe_serialization=True",
            ));
        }
        let bytes = std::fs::read(&weights).map_err(io_at(&weights, "read"))?;
        attach_bytes(dev, model, &dir.display().to_string(), &text, &bytes)
    }
}
