//! LoRA adapters in llama.cpp's GGUF format (what its `convert_lora_to_gguf.py` writes and
//! `llama_adapter_lora_init` reads): written from a PEFT adapter by `flexlora export-lora`, and
//! read back into PEFT-named tensors.
//!
//! Format: `general.type` = "adapter", `adapter.type` = "lora", `general.architecture` equal to
//! the base model's (llama.cpp refuses a mismatch), `adapter.lora.alpha` (f32); per adapted
//! linear `<base tensor>.lora_a` with GGUF dims [in, R] (row-major [R, in], PEFT's A as it is)
//! and `<base tensor>.lora_b` with dims [R, out] (PEFT's B as it is), e.g.
//! `blk.3.ffn_up.weight.lora_a`. For Llama models the rows of B on q and k are permuted like the
//! base's q/k rows (llama.cpp's converter does so), so B·A lands on the permuted weight.
//! llama.cpp scales by alpha / R (R read from B), so an rsLoRA adapter (scale alpha/√R) is
//! exported with alpha·√R; `flexlora.lora.*` keys keep the PEFT values.

use std::collections::HashMap;
use std::path::Path;

use super::adapter::{weight_name, HostAdapter};
use super::merge_gguf::{ggml_type, to_gguf_rows};
use super::staging::Staging;
use crate::error::{Error, Result};
use crate::model::config::{Arch, Config};
use crate::model::load::convert::FloatType;
use crate::model::load::gguf_model::{gguf_name, unpermute_rows};
use crate::model::load::{GgufFile, GgufWriter, Value};
use crate::model::lora::{peft_names, LoraConfig, Target};

/// llama.cpp's name for the architecture of `cfg`.
pub fn arch_name(cfg: &Config) -> &'static str {
    match cfg.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
    }
}

/// The alpha llama.cpp needs so that its alpha / R equals the adapter's scale.
pub fn llama_cpp_alpha(cfg: &LoraConfig) -> f32 {
    if cfg.rslora {
        cfg.alpha * (cfg.rank as f32).sqrt()
    } else {
        cfg.alpha
    }
}

/// What `export` wrote.
#[derive(Debug)]
pub struct ExportReport {
    pub tensors: usize,
    /// `adapter.lora.alpha` as written.
    pub alpha: f32,
    pub arch: &'static str,
}

/// Writes `host` (read for the model configured by `cfg`) as a GGUF LoRA at `out`.
pub fn export(host: &HostAdapter, cfg: &Config, dtype: FloatType, out: &Path, force: bool) -> Result<ExportReport> {
    let arch = arch_name(cfg);
    let alpha = llama_cpp_alpha(&host.cfg);
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", Value::String(arch.into()))?;
    w.add_metadata("general.type", Value::String("adapter".into()))?;
    let name = host.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    w.add_metadata("general.name", Value::String(name))?;
    w.add_metadata("adapter.type", Value::String("lora".into()))?;
    w.add_metadata("adapter.lora.alpha", Value::F32(alpha))?;
    w.add_metadata("flexlora.lora.r", Value::U32(host.cfg.rank as u32))?;
    w.add_metadata("flexlora.lora.peft_alpha", Value::F32(host.cfg.alpha))?;
    w.add_metadata("flexlora.lora.use_rslora", Value::Bool(host.cfg.rslora))?;
    let r = host.cfg.rank;
    for (&(layer, target), (a, b)) in &host.pairs {
        let (out_f, in_f) = host.dims[&(layer, target)];
        let base = gguf_name(&weight_name(layer, target)).ok_or_else(|| Error::Weights {
            file: host.dir.display().to_string(),
            tensor: weight_name(layer, target),
            detail: "has no GGUF name".into(),
        })?;
        w.add_tensor(format!("{base}.lora_a"), ggml_type(dtype), &[r, in_f], dtype.encode(a))?;
        let b = to_gguf_rows(cfg, target, b.clone(), r);
        w.add_tensor(format!("{base}.lora_b"), ggml_type(dtype), &[out_f, r], dtype.encode(&b))?;
    }
    let staging = Staging::begin(out, false, force, "--force")?;
    w.write_file(&staging.tmp)?;
    staging.finish()?;
    Ok(ExportReport { tensors: host.pairs.len() * 2, alpha, arch })
}

/// Adapter tensors by PEFT name: (shape, values).
pub type PeftTensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Reads a GGUF LoRA for the model configured by `cfg` into PEFT-named tensors (B's q/k rows
/// back in Hugging Face order) and the config that applies them as llama.cpp does: scale
/// `adapter.lora.alpha` / R (R = 1 scale when alpha is absent or 0, as llama.cpp does).
pub fn read(path: &Path, cfg: &Config) -> Result<(LoraConfig, PeftTensors)> {
    let file = GgufFile::open(path)?;
    let bad = |detail: String| Error::Config { file: file.name().into(), detail };
    if file.opt_str("general.type")? != Some("adapter") || file.opt_str("adapter.type")? != Some("lora") {
        return Err(bad("is not a GGUF LoRA adapter (general.type must be \"adapter\" and adapter.type \"lora\")".into()));
    }
    let arch = file.architecture()?;
    if arch != arch_name(cfg) {
        return Err(bad(format!("is an adapter for `{arch}` models, but the model is `{}`", arch_name(cfg))));
    }
    let by_gguf: HashMap<String, (usize, Target)> = (0..cfg.layers)
        .flat_map(|l| Target::ALL.into_iter().map(move |t| (l, t)))
        .filter_map(|(l, t)| Some((gguf_name(&weight_name(l, t))?, (l, t))))
        .collect();
    let mut out = HashMap::new();
    let mut targets = Vec::new();
    let mut rank = None;
    for info in file.tensors() {
        let (base, side_b) = match (info.name.strip_suffix(".lora_a"), info.name.strip_suffix(".lora_b")) {
            (Some(b), _) => (b, false),
            (_, Some(b)) => (b, true),
            _ => return Err(bad(format!("tensor `{}` is neither a .lora_a nor a .lora_b matrix", info.name))),
        };
        let &(layer, target) = by_gguf.get(base).ok_or_else(|| {
            bad(format!("tensor `{}` adapts `{base}`, which is not a linear layer of this {}-layer model", info.name, cfg.layers))
        })?;
        let shape = info.shape();
        let mut data = file.tensor(&info.name)?.to_f32()?;
        let r = if side_b { shape.get(1) } else { shape.first() }.copied().unwrap_or(0);
        if *rank.get_or_insert(r) != r || shape.len() != 2 {
            return Err(bad(format!("tensor `{}` has shape {shape:?}; flexlora applies adapters of one rank ({rank:?})", info.name)));
        }
        if side_b && cfg.arch == Arch::Llama && matches!(target, Target::Q | Target::K) {
            let heads = if target == Target::Q { cfg.h } else { cfg.kv };
            data = unpermute_rows(&data, heads, r);
        }
        if !targets.contains(&target) {
            targets.push(target);
        }
        let (na, nb) = peft_names(layer, target);
        out.insert(if side_b { nb } else { na }, (shape, data));
    }
    let rank = rank.ok_or_else(|| bad("holds no LoRA tensors".into()))?;
    targets.sort_by_key(|t| t.index());
    let alpha = file.opt_f32("adapter.lora.alpha")?.filter(|&a| a != 0.0).unwrap_or(rank as f32);
    let lora = LoraConfig { rank, alpha, dropout: 0.0, rslora: false, targets };
    lora.validate().map_err(|e| bad(e.to_string()))?;
    Ok((lora, out))
}

/// Reads the GGUF LoRA at `path` and attaches it to `model`.
pub fn attach(dev: &crate::device::Device, model: &mut crate::model::Model, path: &Path) -> Result<LoraConfig> {
    let (lora, mut tensors) = read(path, &model.cfg)?;
    model.attach_lora_from(dev, &lora, &path.display().to_string(), &mut |name| Ok(tensors.remove(name)))?;
    Ok(lora)
}
