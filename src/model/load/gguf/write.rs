//! Writing GGUF v3 files: metadata of any type and tensors of any ggml type given as packed bytes
//! (with helpers for F32 and F16 from f32 values). Used by tests and by conversion code.
//!
//! Tensor data is borrowed or owned (`Cow`), so a converter can pass slices of a memory-mapped
//! source without copying; the whole file is produced by one `write_to` call. A tensor can also be
//! declared by type and shape alone (`add_tensor_later`) and its bytes produced while the file is
//! written (`write_file_with`), so a converter holds one tensor at a time.

use std::borrow::Cow;
use std::io::Write;

use half::f16;

use super::{Array, Value, DEFAULT_ALIGNMENT, MAX_DIMS};
use crate::error::{Error, Result};
use crate::model::load::ggml_blocks::GgmlType;

struct PendingTensor<'a> {
    name: String,
    ggml_type: GgmlType,
    /// Row-major, outermost first (written reversed, innermost first, as GGUF wants).
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
    /// Bytes of data: `data.len()`, or what a later tensor's producer must return.
    n_bytes: u64,
    later: bool,
}

/// Collects metadata and tensors, then writes them as one GGUF v3 file.
pub struct GgufWriter<'a> {
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(detail: String) -> Error {
    Error::GgufWrite { detail }
}

impl<'a> GgufWriter<'a> {
    pub fn new() -> Self {
        GgufWriter { alignment: DEFAULT_ALIGNMENT, metadata: Vec::new(), tensors: Vec::new() }
    }

    /// Adds a metadata entry. `general.alignment` must be a u32 power of two and also sets the
    /// alignment of the data written.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if self.metadata.iter().any(|(k, _)| *k == key) {
            return Err(invalid(format!("metadata key `{key}` added twice")));
        }
        if key == "general.alignment" {
            match value {
                Value::U32(a) if a.is_power_of_two() => self.alignment = a as u64,
                ref v => return Err(invalid(format!("general.alignment is {v}; it must be a u32 power of two"))),
            }
        }
        self.metadata.push((key, value));
        Ok(())
    }

    /// Adds a tensor of row-major `shape` whose packed bytes are `data`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ggml_type: GgmlType,
        shape: &[usize],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let (name, data) = (name.into(), data.into());
        let n_bytes = self.check_tensor(&name, ggml_type, shape, Some(data.len() as u64))?;
        self.tensors.push(PendingTensor { name, ggml_type, shape: shape.to_vec(), data, n_bytes, later: false });
        Ok(())
    }

    /// Declares a tensor of row-major `shape` whose bytes `write_file_with`'s producer returns
    /// when the file is written.
    pub fn add_tensor_later(&mut self, name: impl Into<String>, ggml_type: GgmlType, shape: &[usize]) -> Result<()> {
        let name = name.into();
        let n_bytes = self.check_tensor(&name, ggml_type, shape, None)?;
        self.tensors.push(PendingTensor { name, ggml_type, shape: shape.to_vec(), data: Cow::Borrowed(&[]), n_bytes, later: true });
        Ok(())
    }

    /// Checks a new tensor's name, shape and (when given) byte count; returns the byte count.
    fn check_tensor(&self, name: &str, ggml_type: GgmlType, shape: &[usize], given: Option<u64>) -> Result<u64> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(invalid(format!("tensor `{name}` added twice")));
        }
        if shape.len() > MAX_DIMS {
            return Err(invalid(format!("tensor `{name}` has shape {shape:?}; GGUF tensors have at most {MAX_DIMS} dims")));
        }
        let (block, _) = ggml_type.block();
        let n = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        let expected = n.and_then(|n| ggml_type.bytes_for(n));
        match expected {
            Some(e) if shape.last().copied().unwrap_or(1) % block == 0 && given.is_none_or(|g| g == e) => Ok(e),
            _ => Err(invalid(format!(
                "tensor `{name}`: {} bytes do not hold shape {shape:?} of {ggml_type} ({block} values per block, rows must be whole blocks)",
                given.map_or("its".to_string(), |g| g.to_string())
            ))),
        }
    }

    /// Adds an F32 tensor.
    pub fn add_f32(&mut self, name: impl Into<String>, shape: &[usize], values: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.add_tensor(name, GgmlType::F32, shape, bytes)
    }

    /// Adds an F16 tensor, rounding each value to the nearest f16.
    pub fn add_f16(&mut self, name: impl Into<String>, shape: &[usize], values: &[f32]) -> Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        self.add_tensor(name, GgmlType::F16, shape, bytes)
    }

    /// Writes the file to `w`; `label` names the destination in errors.
    pub fn write_to<W: Write>(&self, w: &mut W, label: &str) -> Result<()> {
        self.write_to_with(w, label, &mut |name| Err(invalid(format!("tensor `{name}` was declared for later but no producer was given"))))
    }

    /// [`write_to`](Self::write_to), asking `produce(name)` for the bytes of each tensor added
    /// with `add_tensor_later`, in file order.
    pub fn write_to_with<W: Write>(&self, w: &mut W, label: &str, produce: &mut dyn FnMut(&str) -> Result<Vec<u8>>) -> Result<()> {
        let io = |source| Error::Io { action: "write", path: label.into(), source };
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut head, key);
            head.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut head, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = pad_to(offset + t.n_bytes, self.alignment);
        }
        head.resize(pad_to(head.len() as u64, self.alignment) as usize, 0);
        w.write_all(&head).map_err(io)?;
        let zeros = vec![0u8; self.alignment as usize];
        for t in &self.tensors {
            let produced = if t.later { Some(produce(&t.name)?) } else { None };
            let data: &[u8] = produced.as_deref().unwrap_or(&t.data);
            if data.len() as u64 != t.n_bytes {
                return Err(invalid(format!("tensor `{}`: {} bytes produced, {} declared", t.name, data.len(), t.n_bytes)));
            }
            w.write_all(data).map_err(io)?;
            let pad = pad_to(t.n_bytes, self.alignment) - t.n_bytes;
            w.write_all(&zeros[..pad as usize]).map_err(io)?;
        }
        w.flush().map_err(io)
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out, "<memory>")?;
        Ok(out)
    }

    /// Writes the file at `path` atomically: to a temporary file beside it, then renamed.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_file(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        self.write_file_with(path, &mut |name| Err(invalid(format!("tensor `{name}` was declared for later but no producer was given"))))
    }

    /// [`write_file`](Self::write_file) with a producer for tensors added by `add_tensor_later`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write_file_with(&self, path: impl AsRef<std::path::Path>, produce: &mut dyn FnMut(&str) -> Result<Vec<u8>>) -> Result<()> {
        let path = path.as_ref();
        let label = path.display().to_string();
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let io = |action, source| Error::Io { action, path: label.clone(), source };
        let result = (|| {
            let file = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
            let mut w = std::io::BufWriter::new(file);
            self.write_to_with(&mut w, &label, produce)?;
            w.into_inner().map_err(|e| io("write", e.into_error()))?.sync_all().map_err(|e| io("sync", e))?;
            std::fs::rename(&tmp, path).map_err(|e| io("rename into place", e))
        })();
        if result.is_err() {
            // Best effort: the error being returned matters more than a leftover temporary file.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn pad_to(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(*x as u8),
        Value::String(s) => put_str(out, s),
        Value::Array(a) => put_array(out, a),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}

fn put_array(out: &mut Vec<u8>, a: &Array) {
    out.extend_from_slice(&(a.element_type() as u32).to_le_bytes());
    out.extend_from_slice(&(a.len() as u64).to_le_bytes());
    fn each<T: Copy, const N: usize>(out: &mut Vec<u8>, xs: &[T], f: fn(T) -> [u8; N]) {
        xs.iter().for_each(|&x| out.extend_from_slice(&f(x)));
    }
    match a {
        Array::U8(v) => out.extend_from_slice(v),
        Array::I8(v) => each(out, v, i8::to_le_bytes),
        Array::U16(v) => each(out, v, u16::to_le_bytes),
        Array::I16(v) => each(out, v, i16::to_le_bytes),
        Array::U32(v) => each(out, v, u32::to_le_bytes),
        Array::I32(v) => each(out, v, i32::to_le_bytes),
        Array::F32(v) => each(out, v, f32::to_le_bytes),
        Array::Bool(v) => each(out, v, |b| [b as u8]),
        Array::String(v) => v.iter().for_each(|s| put_str(out, s)),
        Array::Array(v) => v.iter().for_each(|a| put_array(out, a)),
        Array::U64(v) => each(out, v, u64::to_le_bytes),
        Array::I64(v) => each(out, v, i64::to_le_bytes),
        Array::F64(v) => each(out, v, f64::to_le_bytes),
    }
}
