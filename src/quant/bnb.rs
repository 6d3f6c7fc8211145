//! The bitsandbytes 4-bit safetensors format (`*-bnb-4bit` checkpoints, transformers'
//! `save_pretrained` of a `BitsAndBytesConfig(load_in_4bit=True)` model), read and written.
//!
//! Per quantized weight `W` (e.g. `model.layers.0.mlp.down_proj.weight`), as bnb 0.50.2 /
//! transformers 5.23 write it:
//! - `W` uint8 [ceil(N/2), 1]: NF4 codes, first element in the high nibble;
//! - `W.absmax`: f32 [blocks], or uint8 [blocks] when double-quantized;
//! - `W.quant_map` f32 [16]: the NF4 codebook;
//! - when double-quantized: `W.nested_absmax` f32 [ceil(blocks/256)], `W.nested_quant_map` f32 [256];
//! - `W.quant_state.bitsandbytes__nf4` uint8 [len]: UTF-8 JSON `{"quant_type": "nf4",
//!   "blocksize": 64, "dtype": "bfloat16", "shape": [C_out, C_in]}`, plus `"nested_blocksize": 256,
//!   "nested_dtype": "float32", "nested_offset": <f32 as a Python float>` when double-quantized.
//!
//! Parsing works on bytes (the browser build can use it); reading and writing files lives in
//! [`fs`], native only. Every inconsistency is an error naming the file and the tensor.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};

use safetensors::{Dtype, SafeTensors, View};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::quant::double::{Absmax, DoubleQuant, Nf4State};
use crate::quant::nf4::{self, NF4_CODE};

const QS_MARK: &str = ".quant_state.bitsandbytes__";
const COMPANIONS: [&str; 4] = [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"];
const HINT_REEXPORT: &str =
    "the checkpoint is damaged or not a bitsandbytes NF4 export; re-export it, or quantize the full-precision weights";

/// The dtype bnb dequantizes a weight to (the original weight's dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    BF16,
}

impl WeightDtype {
    /// The torch name bnb writes (`str(dtype).strip("torch.")`).
    pub fn torch_name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "float32",
            WeightDtype::F16 => "float16",
            WeightDtype::BF16 => "bfloat16",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [WeightDtype::F32, WeightDtype::F16, WeightDtype::BF16].into_iter().find(|d| d.torch_name() == s)
    }
}

/// One bnb 4-bit weight: its name, original shape and dtype, and NF4 state.
#[derive(Debug, Clone, PartialEq)]
pub struct BnbWeight {
    /// The weight's key, e.g. `model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// The original shape, [C_out, C_in] for a linear.
    pub shape: Vec<usize>,
    pub dtype: WeightDtype,
    pub state: Nf4State,
}

impl BnbWeight {
    /// Quantizes a full-precision weight as bnb would (`double` = `bnb_4bit_use_double_quant`).
    pub fn quantize(name: &str, weights: &[f32], shape: &[usize], dtype: WeightDtype, blocksize: usize, double: bool) -> Result<BnbWeight> {
        let n: usize = shape.iter().product();
        if n != weights.len() {
            return Err(Error::shape("bnb quantize", format!("`{name}`: shape {shape:?} holds {n} elements, {} given", weights.len())));
        }
        let state = Nf4State::quantize(weights, blocksize, double)?;
        Ok(BnbWeight { name: name.to_string(), shape: shape.to_vec(), dtype, state })
    }
}

/// A tensor kept as it is in the file (embeddings, norms, anything not 4-bit).
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Little-endian element bytes, as stored.
    pub data: Vec<u8>,
}

impl View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The JSON inside `W.quant_state.bitsandbytes__<type>`; unknown keys are ignored.
#[derive(Deserialize)]
struct QuantStateJson {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Option<Vec<usize>>,
    nested_blocksize: Option<usize>,
    nested_dtype: Option<String>,
    nested_offset: Option<f64>,
}

/// A parsed safetensors file with bnb 4-bit weights in it.
pub struct BnbReader<'a> {
    file: String,
    st: SafeTensors<'a>,
    metadata: Option<HashMap<String, String>>,
    /// weight name -> its quant_state key
    quantized: Vec<(String, String)>,
}

impl<'a> BnbReader<'a> {
    /// Parses the header of `bytes`; `file` names it in errors. Fails if a companion tensor
    /// (`.absmax`, `.quant_map`, ...) has no quant_state, or a weight has two.
    pub fn new(bytes: &'a [u8], file: &str) -> Result<Self> {
        let bad = |e: safetensors::SafeTensorError| Error::Safetensors { file: file.to_string(), detail: e.to_string() };
        let st = SafeTensors::deserialize(bytes).map_err(bad)?;
        let metadata = SafeTensors::read_metadata(bytes).map_err(bad)?.1.metadata().clone();
        let mut quantized: Vec<(String, String)> = Vec::new();
        for key in st.names() {
            if let Some(pos) = key.find(QS_MARK) {
                let base = &key[..pos];
                if let Some((_, other)) = quantized.iter().find(|(b, _)| b == base) {
                    return Err(quant_error(file, key, format!("`{base}` already has the quant state `{other}`")));
                }
                quantized.push((base.to_string(), key.to_string()));
            }
        }
        quantized.sort();
        let reader = BnbReader { file: file.to_string(), st, metadata, quantized };
        for key in reader.st.names() {
            for suffix in COMPANIONS {
                let Some(base) = key.strip_suffix(suffix) else { continue };
                if reader.st.tensor(base).is_ok() && reader.quant_state_key(base).is_none() {
                    return Err(reader.missing(&format!("{base}{QS_MARK}nf4"), key));
                }
            }
        }
        Ok(reader)
    }

    /// The file's `__metadata__` map (transformers writes `{"format": "pt"}`).
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// Names of the 4-bit weights, sorted.
    pub fn quantized_names(&self) -> Vec<&str> {
        self.quantized.iter().map(|(b, _)| b.as_str()).collect()
    }

    /// Names of tensors that are not part of any 4-bit state, sorted.
    pub fn plain_names(&self) -> Vec<&str> {
        let state_keys: BTreeSet<String> = self
            .quantized
            .iter()
            .flat_map(|(b, qs)| std::iter::once(b.clone()).chain(COMPANIONS.iter().map(move |s| format!("{b}{s}"))).chain([qs.clone()]))
            .collect();
        let mut names: Vec<&str> = self.st.names().into_iter().filter(|n| !state_keys.contains(*n)).collect();
        names.sort();
        names
    }

    fn quant_state_key(&self, base: &str) -> Option<&str> {
        self.quantized.iter().find(|(b, _)| b == base).map(|(_, k)| k.as_str())
    }

    fn missing(&self, tensor: &str, needed_by: &str) -> Error {
        Error::MissingTensor { file: self.file.clone(), tensor: tensor.to_string(), needed_by: needed_by.to_string(), hint: HINT_REEXPORT }
    }

    fn err(&self, tensor: &str, detail: impl Into<String>) -> Error {
        quant_error(&self.file, tensor, detail.into())
    }

    /// A tensor as stored.
    pub fn raw(&self, name: &str) -> Result<RawTensor> {
        let view = self.st.tensor(name).map_err(|_| self.missing(name, "the caller"))?;
        Ok(RawTensor { name: name.to_string(), dtype: view.dtype(), shape: view.shape().to_vec(), data: view.data().to_vec() })
    }

    /// Companion `key` of a 4-bit weight, checked for dtype and element count.
    fn companion(&self, key: &str, weight: &str, dtype: Dtype, numel: usize) -> Result<&'a [u8]> {
        let view = self.st.tensor(key).map_err(|_| self.missing(key, weight))?;
        if view.dtype() != dtype {
            return Err(self.err(key, format!("dtype is {:?}, expected {dtype:?}", view.dtype())));
        }
        let found: usize = view.shape().iter().product();
        if found != numel {
            return Err(self.err(key, format!("has {found} elements (shape {:?}), expected {numel}", view.shape())));
        }
        Ok(view.data())
    }

    fn f32_companion(&self, key: &str, weight: &str, numel: usize, scales: bool) -> Result<Vec<f32>> {
        let v = f32s(self.companion(key, weight, Dtype::F32, numel)?);
        if let Some(i) = v.iter().position(|x| !x.is_finite() || (scales && *x < 0.0)) {
            return Err(
                self.err(key, format!("element {i} is {}, expected a finite{} value", v[i], if scales { " non-negative" } else { "" }))
            );
        }
        Ok(v)
    }

    /// Reads and checks the 4-bit weight `name` (a name from [`Self::quantized_names`]).
    pub fn weight(&self, name: &str) -> Result<BnbWeight> {
        let qs_key = self.quant_state_key(name).ok_or_else(|| self.missing(&format!("{name}{QS_MARK}nf4"), name))?;
        let key_type = &qs_key[name.len() + QS_MARK.len()..];
        if key_type != "nf4" {
            return Err(self.err(qs_key, format!("quant_type `{key_type}` is not supported; flexlora reads NF4 only")));
        }
        let qs_view = self.st.tensor(qs_key).map_err(|_| self.missing(qs_key, name))?;
        if qs_view.dtype() != Dtype::U8 {
            return Err(self.err(qs_key, format!("dtype is {:?}, expected U8 (UTF-8 JSON)", qs_view.dtype())));
        }
        let qs: QuantStateJson =
            serde_json::from_slice(qs_view.data()).map_err(|e| self.err(qs_key, format!("its JSON does not parse: {e}")))?;
        if qs.quant_type != key_type {
            return Err(self.err(qs_key, format!("JSON says quant_type `{}` but the key says `{key_type}`", qs.quant_type)));
        }
        if nf4::check_blocksize(qs.blocksize).is_err() {
            return Err(self.err(qs_key, format!("blocksize {} is not one of {:?}", qs.blocksize, nf4::BLOCKSIZES)));
        }
        let dtype = WeightDtype::parse(&qs.dtype)
            .ok_or_else(|| self.err(qs_key, format!("dtype `{}` is not float32, float16 or bfloat16", qs.dtype)))?;
        let shape = qs.shape.ok_or_else(|| self.err(qs_key, "it has no shape"))?;
        let n: usize = shape.iter().product();
        if shape.is_empty() || n == 0 {
            return Err(self.err(qs_key, format!("shape {shape:?} is empty")));
        }
        let blocks = nf4::num_blocks(n, qs.blocksize);
        let packed = self.companion(name, name, Dtype::U8, nf4::packed_len(n)).map_err(|e| match e {
            Error::QuantState { detail, .. } => self.err(name, format!("{detail} for shape {shape:?}; only uint8 quant_storage is read")),
            e => e,
        })?;
        let map = self.f32_companion(&format!("{name}.quant_map"), name, 16, false)?;
        if map.iter().zip(NF4_CODE).any(|(a, b)| a.to_bits() != b.to_bits()) {
            return Err(self.err(&format!("{name}.quant_map"), "it is not bitsandbytes' NF4 codebook"));
        }
        let nested_key = format!("{name}.nested_absmax");
        let is_nested = qs.nested_offset.is_some() || qs.nested_blocksize.is_some() || self.st.tensor(&nested_key).is_ok();
        let absmax_key = format!("{name}.absmax");
        let absmax = if is_nested {
            let nbs = qs
                .nested_blocksize
                .filter(|&b| b > 0)
                .ok_or_else(|| self.err(qs_key, "double-quantized but nested_blocksize is missing or 0"))?;
            let offset = qs.nested_offset.ok_or_else(|| self.err(qs_key, "double-quantized but nested_offset is missing"))?;
            if !offset.is_finite() {
                return Err(self.err(qs_key, format!("nested_offset {offset} is not finite")));
            }
            if let Some(d) = qs.nested_dtype.as_deref().filter(|d| *d != "float32") {
                return Err(self.err(qs_key, format!("nested_dtype `{d}` is not float32")));
            }
            let codes = self.companion(&absmax_key, name, Dtype::U8, blocks)?.to_vec();
            let nested_absmax = self.f32_companion(&nested_key, name, blocks.div_ceil(nbs), true)?;
            let map = self.f32_companion(&format!("{name}.nested_quant_map"), name, 256, false)?;
            Absmax::Double(DoubleQuant { codes, offset: offset as f32, nested_absmax, nested_blocksize: nbs, map })
        } else {
            if self.st.tensor(&format!("{name}.nested_quant_map")).is_ok() {
                return Err(self.err(qs_key, "a nested_quant_map is stored but the JSON has no nested_offset"));
            }
            Absmax::F32(self.f32_companion(&absmax_key, name, blocks, true)?)
        };
        let state = Nf4State { packed: packed.to_vec(), len: n, blocksize: qs.blocksize, absmax };
        Ok(BnbWeight { name: name.to_string(), shape, dtype, state })
    }

    /// Every 4-bit weight and every other tensor of the file.
    pub fn read_all(&self) -> Result<(Vec<BnbWeight>, Vec<RawTensor>)> {
        let weights = self.quantized_names().into_iter().map(|n| self.weight(n)).collect::<Result<Vec<_>>>()?;
        let plain = self.plain_names().into_iter().map(|n| self.raw(n)).collect::<Result<Vec<_>>>()?;
        Ok((weights, plain))
    }
}

fn quant_error(file: &str, tensor: &str, detail: String) -> Error {
    Error::QuantState { file: file.to_string(), tensor: tensor.to_string(), detail, hint: HINT_REEXPORT }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tensors bnb stores for `w`, with bnb's keys, dtypes and shapes.
pub fn weight_tensors(w: &BnbWeight) -> Result<Vec<RawTensor>> {
    let s = &w.state;
    let n: usize = w.shape.iter().product();
    if n != s.len || s.packed.len() != nf4::packed_len(n) {
        return Err(Error::shape("bnb write", format!("`{}`: shape {:?} does not match {} packed codes", w.name, w.shape, s.len)));
    }
    let raw = |suffix: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>| RawTensor {
        name: format!("{}{suffix}", w.name),
        dtype,
        shape,
        data,
    };
    let mut json = format!(
        "{{\"quant_type\": \"nf4\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
        s.blocksize,
        w.dtype.torch_name(),
        w.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
    );
    let mut out = vec![raw("", Dtype::U8, vec![s.packed.len(), 1], s.packed.clone())];
    match &s.absmax {
        Absmax::F32(a) => out.push(raw(".absmax", Dtype::F32, vec![a.len()], f32_bytes(a))),
        Absmax::Double(dq) => {
            if !dq.offset.is_finite() {
                return Err(Error::NonFinite { what: "bnb write: nested_offset", index: 0, value: dq.offset });
            }
            out.push(raw(".absmax", Dtype::U8, vec![dq.codes.len()], dq.codes.clone()));
            out.push(raw(".nested_absmax", Dtype::F32, vec![dq.nested_absmax.len()], f32_bytes(&dq.nested_absmax)));
            out.push(raw(".nested_quant_map", Dtype::F32, vec![dq.map.len()], f32_bytes(&dq.map)));
            json += &format!(
                ", \"nested_blocksize\": {}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
                dq.nested_blocksize,
                python_float_repr(dq.offset as f64)
            );
        }
    }
    json.push('}');
    out.push(raw(".quant_map", Dtype::F32, vec![16], f32_bytes(&NF4_CODE)));
    out.push(raw(&format!("{QS_MARK}nf4"), Dtype::U8, vec![json.len()], json.into_bytes()));
    Ok(out)
}

/// A safetensors file holding `weights` in bnb's 4-bit layout and `plain` as they are.
pub fn to_bytes(weights: &[BnbWeight], plain: &[RawTensor], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    for w in weights {
        all.extend(weight_tensors(w)?);
    }
    all.extend(plain.iter().cloned());
    safetensors::serialize(all.iter().map(|t| (t.name.clone(), t)), metadata)
        .map_err(|e| Error::Safetensors { file: "<in memory>".into(), detail: e.to_string() })
}

/// Formats a float as Python's `repr` does (shortest round-trip digits; scientific notation
/// below 1e-4 or from 1e16 on), so the JSON matches what bnb writes with `json.dumps`.
pub fn python_float_repr(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{:e}", v.abs()); // shortest digits, e.g. "5.133247375488281e-2"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let sign = if v < 0.0 { "-" } else { "" };
    let point = exp + 1; // digits before the decimal point
    let body = if !(-3..=16).contains(&point) {
        let rest = if digits.len() > 1 { format!(".{}", &digits[1..]) } else { String::new() };
        format!("{}{rest}e{}{:02}", &digits[..1], if exp < 0 { '-' } else { '+' }, exp.abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    format!("{sign}{body}")
}

/// Reading and writing bnb 4-bit safetensors files (native only).
#[cfg(not(target_arch = "wasm32"))]
pub mod fs {
    use std::collections::HashMap;
    use std::path::Path;

    use super::{to_bytes, BnbReader, BnbWeight, RawTensor};
    use crate::error::{Error, Result};

    /// Everything in a bnb 4-bit safetensors file.
    #[derive(Debug, Clone, PartialEq)]
    pub struct BnbFile {
        pub weights: Vec<BnbWeight>,
        pub plain: Vec<RawTensor>,
        pub metadata: Option<HashMap<String, String>>,
    }

    /// Reads every 4-bit weight and plain tensor of a safetensors file, and its metadata.
    pub fn read(path: &Path) -> Result<BnbFile> {
        let label = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { action: "read", path: label.clone(), source })?;
        let reader = BnbReader::new(&bytes, &label)?;
        let (weights, plain) = reader.read_all()?;
        Ok(BnbFile { weights, plain, metadata: reader.metadata().cloned() })
    }

    /// Writes a bnb 4-bit safetensors file atomically (a temporary file renamed into place).
    pub fn write(path: &Path, weights: &[BnbWeight], plain: &[RawTensor], metadata: Option<HashMap<String, String>>) -> Result<()> {
        let bytes = to_bytes(weights, plain, metadata)?;
        let tmp = path.with_extension("safetensors.tmp");
        let io = |source| Error::Io { action: "write", path: tmp.display().to_string(), source };
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
