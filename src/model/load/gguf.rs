//! GGUF files (llama.cpp's model format, versions 2 and 3): parsing, metadata, tensor lookup.
//!
//! Owns: turning the bytes of a GGUF file into a [`GgufFile`] with typed metadata getters
//! (`meta.rs`) and zero-copy tensor views, and writing GGUF files (`write.rs`). Parsing works on a
//! byte slice and is target independent; only [`GgufFile::open`] (memory-mapping a file) is native.
//! It does not build a model: the loader reads the keys and tensors it needs from here.
//!
//! Layout, all little-endian:
//! - `"GGUF"`, u32 version, u64 tensor count, u64 metadata count;
//! - per metadata entry: string key, u32 value type, value (an array is u32 element type, u64
//!   count, elements; a string is u64 byte length and UTF-8 bytes);
//! - per tensor: string name, u32 n_dims, n_dims × u64 dims, u32 ggml type, u64 offset;
//! - zero padding up to `general.alignment` (default 32), then the data section. Tensor offsets
//!   are relative to the data section and multiples of the alignment.
//!
//! Shapes: GGUF lists dims innermost first (`dims[0]` is the contiguous row length). Everything
//! public here uses row-major shapes, outermost first, as PyTorch and HF do: GGUF dims
//! `[576, 49152]` of `token_embd.weight` become shape `[49152, 576]` = [rows, cols] = [V, C].
//!
//! Every count, length and offset read from the file is checked against the bytes that remain
//! before anything is allocated, so a truncated or corrupt file is an error naming the file, the
//! byte offset and what was being read, never a panic or a huge allocation.

mod meta;
mod write;

use std::collections::HashMap;
use std::ops::Range;

pub use meta::{Array, Value, ValueType};
pub use write::GgufWriter;

use super::ggml_blocks::{self, GgmlType};
use crate::error::{Error, Result};

/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Dimensions a ggml tensor can have (GGML_MAX_DIMS).
pub const MAX_DIMS: usize = 4;
const MAGIC: &[u8; 4] = b"GGUF";
/// Nesting limit for arrays of arrays: deep enough for any real file, shallow enough that a
/// crafted file cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 8;
const CORRUPT: &str = "the file is truncated, corrupt or from an unknown GGUF writer; download or convert it again";

/// One tensor's entry in the file's tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// GGUF order: innermost (contiguous) dimension first. See [`TensorInfo::shape`].
    pub dims: Vec<u64>,
    /// Byte offset of the data, relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data: elements / block size × block bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Row-major shape, outermost first (GGUF dims reversed); `[]` for a 0-dim scalar.
    pub fn shape(&self) -> Vec<usize> {
        // Parsing checked that the product of the dims (zeros counted as 1) fits usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// (rows, cols): cols is the innermost dimension, rows the product of all others. A tensor
    /// [L, F, C] is (L·F, C); a vector [C] is (1, C).
    pub fn rows_cols(&self) -> (usize, usize) {
        let cols = self.dims.first().map_or(1, |&d| d as usize);
        let rows = self.dims.iter().skip(1).product::<u64>() as usize;
        (rows, cols)
    }
}

/// A tensor's info and its raw bytes inside the file.
#[derive(Clone, Copy, Debug)]
pub struct TensorView<'a> {
    pub file: &'a str,
    pub info: &'a TensorInfo,
    /// The packed data, exactly `info.n_bytes` long.
    pub data: &'a [u8],
}

impl TensorView<'_> {
    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn ggml_type(&self) -> GgmlType {
        self.info.ggml_type
    }
    /// Row-major shape, outermost first.
    pub fn shape(&self) -> Vec<usize> {
        self.info.shape()
    }
    pub fn rows_cols(&self) -> (usize, usize) {
        self.info.rows_cols()
    }

    /// The whole tensor as f32, row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let mut out = vec![0f32; self.info.n_elements()];
        ggml_blocks::dequantize(self.info.ggml_type, self.data, &mut out, self.file, &self.info.name)?;
        Ok(out)
    }

    /// Dequantizes rows `first_row..first_row + out.len() / cols` into `out`, so a loader can
    /// stream a large tensor in chunks instead of holding all of it in f32.
    pub fn dequantize_rows(&self, first_row: usize, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = self.rows_cols();
        let n_rows = out.len().checked_div(cols).unwrap_or(0);
        if cols == 0 || out.len() % cols != 0 || first_row.checked_add(n_rows).is_none_or(|end| end > rows) {
            let detail = format!("cannot dequantize rows {first_row}.. into {} values: the tensor has {rows} rows of {cols}", out.len());
            return Err(Error::GgufTensor { file: self.file.into(), tensor: self.info.name.clone(), detail });
        }
        // Rows are whole blocks: parsing checked that cols is a multiple of the block size.
        let row_bytes = self.data.len() / rows.max(1);
        // `get` rather than indexing: a hand-built view may disagree with its info.
        let bytes = self.data.get(first_row * row_bytes..(first_row + n_rows) * row_bytes).unwrap_or_default();
        ggml_blocks::dequantize(self.info.ggml_type, bytes, out, self.file, &self.info.name)
    }
}

/// The file's bytes: memory-mapped natively, or owned (e.g. fetched in the browser).
enum Bytes {
    Owned(Vec<u8>),
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Mapped(m) => m,
        }
    }
}

/// A parsed GGUF file. Metadata is decoded into memory; tensor data stays in the file's bytes.
pub struct GgufFile {
    name: String,
    bytes: Bytes,
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Vec<(String, Value)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Parses a GGUF file held in memory; `name` labels it in errors (a path or URL).
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(name.into(), Bytes::Owned(bytes))
    }

    fn parse(name: String, bytes: Bytes) -> Result<GgufFile> {
        let h = parse_header(&name, &bytes)?;
        let meta_index = h.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        let tensor_index = h.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            name,
            bytes,
            version: h.version,
            alignment: h.alignment,
            data_start: h.data_start,
            metadata: h.metadata,
            meta_index,
            tensors: h.tensors,
            tensor_index,
        })
    }

    /// The name given at open (the path for files), as used in errors.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Byte offset of the data section in the file.
    pub fn data_start(&self) -> usize {
        self.data_start
    }
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, or None if the file has none.
    pub fn tensor_opt(&self, name: &str) -> Option<TensorView<'_>> {
        let info = &self.tensors[*self.tensor_index.get(name)?];
        // Parsing checked that data_start + offset + n_bytes lies inside the file.
        let start = self.data_start + info.offset as usize;
        Some(TensorView { file: &self.name, info, data: &self.bytes[start..start + info.n_bytes as usize] })
    }

    /// Drops the mapped pages of tensor `name`'s bytes from this process's resident set, once the
    /// loader holds its own copy (the page cache keeps them): without this a GGUF's weights count
    /// twice in the peak resident memory, as the copy and as the mapped file. Owned bytes (the
    /// browser) are left alone.
    pub fn release(&self, name: &str) {
        #[cfg(not(target_arch = "wasm32"))]
        if let (Bytes::Mapped(map), Some(&i)) = (&self.bytes, self.tensor_index.get(name)) {
            let info = &self.tensors[i];
            super::safetensors::release(map, self.data_start + info.offset as usize, info.n_bytes as usize);
        }
        #[cfg(target_arch = "wasm32")]
        let _ = name;
    }

    /// The tensor called `name`; an error naming the file if it is missing.
    pub fn tensor(&self, name: &str) -> Result<TensorView<'_>> {
        self.tensor_opt(name).ok_or_else(|| {
            let some: Vec<&str> = self.tensors.iter().take(3).map(|t| t.name.as_str()).collect();
            let detail = format!(
                "not found; the file has {} tensors (first: {}), is it a model of the expected architecture?",
                self.tensors.len(),
                some.join(", ")
            );
            Error::GgufTensor { file: self.name.clone(), tensor: name.into(), detail }
        })
    }

    /// The tensor called `name`, dequantized to f32 in row-major order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.tensor(name)?.to_f32()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::Path;

    use super::{Bytes, GgufFile};
    use crate::error::{Error, Result};

    impl GgufFile {
        /// Memory-maps and parses the GGUF file at `path`. The file must not be modified while
        /// the `GgufFile` is alive (the usual memory-map caveat; llama.cpp and safetensors
        /// loaders rely on the same).
        pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
            let path = path.as_ref();
            let name = path.display().to_string();
            let io = |action, source| Error::Io { action, path: name.clone(), source };
            let file = std::fs::File::open(path).map_err(|e| io("open", e))?;
            let len = file.metadata().map_err(|e| io("stat", e))?.len();
            // Tiny files are read instead: mapping zero bytes fails on some systems, and the
            // parser reports them as truncated either way.
            let bytes = if len < 64 {
                Bytes::Owned(std::fs::read(path).map_err(|e| io("read", e))?)
            } else {
                // SAFETY: read-only mapping; see the caveat above about concurrent modification
                // (not checkable at run time).
                Bytes::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io("memory-map", e))?)
            };
            GgufFile::parse(name, bytes)
        }
    }
}

/// What `parse_header` finds before the data section.
struct Header {
    version: u32,
    alignment: u64,
    data_start: usize,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian cursor. `what` says what is being read, for errors.
struct Reader<'a> {
    file: &'a str,
    data: &'a [u8],
    pos: usize,
    what: String,
}

impl<'a> Reader<'a> {
    fn fail(&self, detail: impl std::fmt::Display) -> Error {
        Error::GgufFormat { file: self.file.into(), offset: self.pos as u64, detail: format!("{}: {detail}", self.what), hint: CORRUPT }
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let rem = self.remaining();
        if n > rem as u64 {
            return Err(self.fail(format!("needs {n} bytes but only {rem} remain")));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u64 length + UTF-8 bytes.
    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.fail(format!("string of {len} bytes is not valid UTF-8 ({e})")))
    }

    /// A u64 count of items that take at least `min_bytes` each, checked against the bytes left
    /// so that a corrupt count cannot trigger a huge allocation.
    fn count(&mut self, min_bytes: u64, items: &str) -> Result<usize> {
        let n = self.u64()?;
        let rem = self.remaining() as u64;
        if n.checked_mul(min_bytes).is_none_or(|b| b > rem) {
            return Err(self.fail(format!("claims {n} {items} of at least {min_bytes} bytes each, but only {rem} bytes remain")));
        }
        Ok(n as usize)
    }
}

fn parse_header(file: &str, data: &[u8]) -> Result<Header> {
    let mut r = Reader { file, data, pos: 0, what: "the magic number".into() };
    let magic = r.array::<4>()?;
    if &magic != MAGIC {
        return Err(Error::GgufFormat {
            file: file.into(),
            offset: 0,
            detail: format!("starts with \"{}\", not the GGUF magic \"GGUF\"", magic.escape_ascii()),
            hint: "is this a GGUF file? flexlora also reads HF safetensors model directories",
        });
    }
    r.what = "the version".into();
    let version = r.u32()?;
    if version != 2 && version != 3 {
        let detail = match version {
            1 => "GGUF version 1 is not supported (only 2 and 3)".to_string(),
            v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => "this is a big-endian GGUF file, which is not supported".to_string(),
            v => format!("GGUF version {v} is not supported (only 2 and 3)"),
        };
        return Err(Error::GgufFormat {
            file: file.into(),
            offset: 4,
            detail,
            hint: "convert the model again with a current llama.cpp (little-endian, GGUF v3)",
        });
    }
    r.what = "the tensor count".into();
    // Smallest tensor info: empty name (8) + n_dims (4) + type (4) + offset (8).
    let n_tensors = r.count(24, "tensors")?;
    r.what = "the metadata count".into();
    // Smallest entry: empty key (8) + value type (4) + a one-byte value.
    let n_meta = r.count(13, "metadata entries")?;

    let mut metadata = Vec::with_capacity(n_meta);
    let mut seen = HashMap::with_capacity(n_meta);
    for i in 0..n_meta {
        r.what = format!("metadata entry #{i}");
        let key = r.string()?;
        r.what = format!("metadata key `{key}`");
        if seen.insert(key.clone(), i).is_some() {
            return Err(r.fail("appears twice"));
        }
        let ty = value_type(&mut r)?;
        let value = read_value(&mut r, ty, 0)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
        Some((k, v)) => {
            let detail = format!("is {v}; it must be a u32 power of two");
            return Err(Error::GgufKey { file: file.into(), key: k.clone(), detail });
        }
    };

    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut names = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        r.what = format!("tensor info #{i}");
        let name = r.string()?;
        r.what = format!("tensor info #{i} `{name}`");
        tensors.push(read_tensor_info(&mut r, name)?);
        if names.insert(tensors[i].name.clone(), i).is_some() {
            return Err(r.fail("this tensor name appears twice"));
        }
    }

    r.what = "the padding before the data section".into();
    let data_start = align_up(r.pos as u64, alignment).filter(|&s| s <= data.len() as u64 || n_tensors == 0);
    let Some(data_start) = data_start else {
        return Err(r.fail(format!("the data section would start past the end of the {}-byte file", data.len())));
    };
    for t in &tensors {
        check_tensor_range(file, t, data_start, alignment, data.len())?;
    }
    Ok(Header { version, alignment, data_start: data_start.min(data.len() as u64) as usize, metadata, tensors })
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

fn read_tensor_info(r: &mut Reader<'_>, name: String) -> Result<TensorInfo> {
    let n_dims = r.u32()? as usize;
    if n_dims > MAX_DIMS {
        return Err(r.fail(format!("has {n_dims} dimensions; ggml tensors have at most {MAX_DIMS}")));
    }
    let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<u64>>>()?;
    let type_id = r.u32()?;
    let Some(ggml_type) = GgmlType::from_id(type_id) else {
        return Err(r.fail(format!("unknown ggml type id {type_id}")));
    };
    // Zero dims count as 1 here so that every partial product (rows, shape) fits usize too.
    let bound = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1))).filter(|&n| usize::try_from(n).is_ok());
    if bound.is_none() {
        return Err(r.fail(format!("dims {dims:?} hold more elements than this machine can address")));
    }
    let n_elements: u64 = dims.iter().product();
    let (block, _) = ggml_type.block();
    let row_len = dims.first().copied().unwrap_or(1);
    if row_len % block as u64 != 0 {
        return Err(r.fail(format!("row length {row_len} is not a multiple of the {ggml_type} block size {block}")));
    }
    let Some(n_bytes) = ggml_type.bytes_for(n_elements) else {
        return Err(r.fail(format!("{n_elements} elements of {ggml_type} overflow a byte count")));
    };
    let offset = r.u64()?;
    Ok(TensorInfo { name, ggml_type, dims, offset, n_bytes })
}

fn check_tensor_range(file: &str, t: &TensorInfo, data_start: u64, alignment: u64, file_len: usize) -> Result<()> {
    let fail = |detail: String| Error::GgufTensor { file: file.into(), tensor: t.name.clone(), detail: format!("{detail}; {CORRUPT}") };
    if t.offset % alignment != 0 {
        return Err(fail(format!("data offset {} is not a multiple of the alignment {alignment}", t.offset)));
    }
    let range: Option<Range<u64>> = data_start.checked_add(t.offset).and_then(|s| Some(s..s.checked_add(t.n_bytes)?));
    match range {
        Some(r) if r.end <= file_len as u64 => Ok(()),
        Some(r) => Err(fail(format!("its data (bytes {}..{} of the file) runs past the end of the {file_len}-byte file", r.start, r.end))),
        None => Err(fail(format!("data offset {} overflows", t.offset))),
    }
}

fn value_type(r: &mut Reader<'_>) -> Result<ValueType> {
    let id = r.u32()?;
    ValueType::from_id(id).ok_or_else(|| r.fail(format!("unknown value type id {id} (GGUF defines 0..=12)")))
}

fn read_value(r: &mut Reader<'_>, ty: ValueType, depth: usize) -> Result<Value> {
    Ok(match ty {
        ValueType::U8 => Value::U8(r.u8()?),
        ValueType::I8 => Value::I8(r.u8()? as i8),
        ValueType::U16 => Value::U16(r.u16()?),
        ValueType::I16 => Value::I16(r.u16()? as i16),
        ValueType::U32 => Value::U32(r.u32()?),
        ValueType::I32 => Value::I32(r.u32()? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(r.u32()?)),
        ValueType::Bool => Value::Bool(read_bool(r)?),
        ValueType::String => Value::String(r.string()?),
        ValueType::Array => Value::Array(read_array(r, depth)?),
        ValueType::U64 => Value::U64(r.u64()?),
        ValueType::I64 => Value::I64(r.u64()? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(r.u64()?)),
    })
}

fn read_bool(r: &mut Reader<'_>) -> Result<bool> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(r.fail(format!("bool byte is {b}, not 0 or 1"))),
    }
}

fn read_array(r: &mut Reader<'_>, depth: usize) -> Result<Array> {
    if depth >= MAX_ARRAY_DEPTH {
        return Err(r.fail(format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels")));
    }
    let ty = value_type(r)?;
    let n = r.count(ty.min_size(), "array elements")?;
    fn many<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<Vec<T>> {
        (0..n).map(|_| f()).collect()
    }
    Ok(match ty {
        ValueType::U8 => Array::U8(r.take(n as u64)?.to_vec()),
        ValueType::I8 => Array::I8(r.take(n as u64)?.iter().map(|&b| b as i8).collect()),
        ValueType::U16 => Array::U16(many(n, || r.u16())?),
        ValueType::I16 => Array::I16(many(n, || Ok(r.u16()? as i16))?),
        ValueType::U32 => Array::U32(many(n, || r.u32())?),
        ValueType::I32 => Array::I32(many(n, || Ok(r.u32()? as i32))?),
        ValueType::F32 => Array::F32(many(n, || Ok(f32::from_bits(r.u32()?)))?),
        ValueType::Bool => Array::Bool(many(n, || read_bool(r))?),
        ValueType::String => Array::String(many(n, || r.string())?),
        ValueType::Array => Array::Array(many(n, || read_array(r, depth + 1))?),
        ValueType::U64 => Array::U64(many(n, || r.u64())?),
        ValueType::I64 => Array::I64(many(n, || Ok(r.u64()? as i64))?),
        ValueType::F64 => Array::F64(many(n, || Ok(f64::from_bits(r.u64()?)))?),
    })
}
