//! A PEFT adapter read onto the host without loading its model: its config and, per adapted
//! linear, A [R, in] and B [out, R], checked against the base model's configuration (every tensor
//! present, no stray ones, shapes that fit), and the merged update ΔW = s·B·A.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::load::{peft, safetensors};
use crate::model::lora::{check_finite, peft_names, LoraConfig, Target};
use crate::model::weights::tensor_names;

/// An adapter's tensors on the host, keyed by (layer, target).
pub struct HostAdapter {
    pub dir: PathBuf,
    pub cfg: LoraConfig,
    /// (A [R, in], B [out, R]) row-major, with their shapes.
    pub pairs: BTreeMap<(usize, Target), (Vec<f32>, Vec<f32>)>,
    /// (out, in) of each adapted linear.
    pub dims: BTreeMap<(usize, Target), (usize, usize)>,
}

/// The Hugging Face name of layer `layer`'s `target` weight.
pub fn weight_name(layer: usize, target: Target) -> String {
    format!("model.layers.{layer}.{}.weight", target.module())
}

impl HostAdapter {
    /// Reads the PEFT adapter directory `dir` (or its `adapter_model.safetensors`) for a model
    /// configured by `model_cfg`; `model_origin` names the model in errors.
    pub fn read(dir: &Path, model_cfg: &Config, model_origin: &str) -> Result<HostAdapter> {
        let dir = if dir.is_file() { dir.parent().unwrap_or(Path::new(".")) } else { dir };
        let cfg_path = dir.join(peft::CONFIG_FILE);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::Config {
            file: cfg_path.display().to_string(),
            detail: format!("{e}; an adapter directory holds {} and {} as PEFT saves them", peft::CONFIG_FILE, peft::WEIGHTS_FILE),
        })?;
        let cfg = peft::parse_config(&cfg_path.display().to_string(), &text)?;
        let weights = dir.join(peft::WEIGHTS_FILE);
        let origin = weights.display().to_string();
        let (mut tensors, _) = safetensors::read_all(&weights)?;
        peft::check_names(model_cfg.layers, &cfg, &origin, tensors.keys())?;
        let shapes: std::collections::HashMap<String, Vec<usize>> = tensor_names(model_cfg).into_iter().collect();
        let mut pairs = BTreeMap::new();
        let mut dims = BTreeMap::new();
        for layer in 0..model_cfg.layers {
            for &t in &cfg.targets {
                let w = weight_name(layer, t);
                let (out, inp) = match shapes.get(&w).map(|s| s.as_slice()) {
                    Some(&[o, i]) => (o, i),
                    _ => return Err(Error::Weights { file: model_origin.into(), tensor: w, detail: "not a matrix of this model".into() }),
                };
                let (na, nb) = peft_names(layer, t);
                let mut take = |name: &str, shape: [usize; 2]| -> Result<Vec<f32>> {
                    let (got, data) = tensors
                        .remove(name)
                        .or_else(|| tensors.remove(&name.replace(".weight", ".default.weight")))
                        .ok_or_else(|| Error::MissingTensor {
                            file: origin.clone(),
                            tensor: name.into(),
                            needed_by: format!("the adapter config (targets {:?}) at layer {layer}", cfg.targets),
                            hint: "the adapter was saved for another model or other target modules",
                        })?;
                    if got != shape {
                        return Err(Error::Weights {
                            file: origin.clone(),
                            tensor: name.into(),
                            detail: format!(
                                "shape {got:?}, but {model_origin} ({w} is [{out}, {inp}]) with rank {} needs {shape:?}: the adapter was trained on another model",
                                cfg.rank
                            ),
                        });
                    }
                    check_finite(&origin, name, &data)?;
                    Ok(data)
                };
                let a = take(&na, [cfg.rank, inp])?;
                let b = take(&nb, [out, cfg.rank])?;
                pairs.insert((layer, t), (a, b));
                dims.insert((layer, t), (out, inp));
            }
        }
        Ok(HostAdapter { dir: dir.to_path_buf(), cfg, pairs, dims })
    }

    /// The update s·B·A [out, in] of layer `layer`'s `target`, if that linear is adapted. Each
    /// element is summed over the rank in f64 and rounded once.
    pub fn delta(&self, layer: usize, target: Target) -> Option<Vec<f32>> {
        use rayon::prelude::*;
        let (a, b) = self.pairs.get(&(layer, target))?;
        let (out, inp) = self.dims[&(layer, target)];
        let (r, s) = (self.cfg.rank, self.cfg.scale() as f64);
        let mut d = vec![0f32; out * inp];
        d.par_chunks_mut(inp).enumerate().for_each(|(o, row)| {
            let mut acc = vec![0f64; inp];
            for k in 0..r {
                let bk = b[o * r + k] as f64;
                for (x, &ak) in acc.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                    *x += bk * ak as f64;
                }
            }
            for (y, x) in row.iter_mut().zip(acc) {
                *y = (s * x) as f32;
            }
        });
        Some(d)
    }

    /// The (layer, target) a Hugging Face weight name belongs to, when that linear is adapted.
    pub fn key_of(&self, hf_name: &str) -> Option<(usize, Target)> {
        let rest = hf_name.strip_prefix("model.layers.")?;
        let (i, rest) = rest.split_once('.')?;
        let layer: usize = i.parse().ok()?;
        let t = Target::ALL.into_iter().find(|t| rest == format!("{}.weight", t.module()))?;
        self.pairs.contains_key(&(layer, t)).then_some((layer, t))
    }
}
