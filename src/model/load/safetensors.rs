//! Hugging Face model directories: `config.json`, `model.safetensors` or shards listed in
//! `model.safetensors.index.json`. Files are memory-mapped and tensors converted to f32 one at a
//! time (F32, F16, BF16), so loading never holds a second full copy of the model. A tensor's
//! mapped pages are released once it is converted: mapped file pages count as resident memory,
//! and a 7B bf16 checkpoint read through the map would otherwise add its 13.5 GB to the peak.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::model::config::{Config, HfConfig};
use crate::model::weights::WeightSource;

pub use super::safetensors_bytes::to_f32;

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Config { file: path.display().to_string(), detail: e.to_string() }
}

/// Reads and validates `dir/config.json`.
pub fn read_config(dir: &Path) -> Result<Config> {
    let path = dir.join("config.json");
    let text =
        std::fs::read_to_string(&path).map_err(|e| io_err(&path, format!("{e}; a Hugging Face model directory needs config.json")))?;
    let hf: HfConfig = serde_json::from_str(&text).map_err(|e| io_err(&path, e))?;
    hf.validate(&path.display().to_string())
}

/// The safetensors files of a model directory, memory-mapped, and which file holds each tensor.
pub struct SafetensorsDir {
    dir: PathBuf,
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    index: HashMap<String, usize>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| io_err(&index_path, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| io_err(&index_path, e))?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| io_err(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|f| dir.join(f)).collect()
        } else if dir.join("model.safetensors").exists() {
            vec![dir.join("model.safetensors")]
        } else {
            return Err(io_err(dir, "no model.safetensors or model.safetensors.index.json in this directory"));
        };
        let mut maps = Vec::new();
        let mut index = HashMap::new();
        for path in files {
            let file = std::fs::File::open(&path).map_err(|e| io_err(&path, e))?;
            // SAFETY: the map is read-only; a file changed underneath us while loading is the
            // user's error and at worst yields wrong values, which shape checks partly catch.
            // (Not checkable at run time: another process may write the file at any moment.)
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(&path, e))?;
            let st = SafeTensors::deserialize(&map)
                .map_err(|e| io_err(&path, format!("not a valid safetensors file ({e}); is it truncated?")))?;
            for name in st.names() {
                index.insert(name.to_string(), maps.len());
            }
            maps.push((path, map));
        }
        Ok(SafetensorsDir { dir: dir.to_path_buf(), maps, index })
    }

    pub fn names(&self) -> Vec<String> {
        self.index.keys().cloned().collect()
    }
}

impl WeightSource for SafetensorsDir {
    fn origin(&self) -> String {
        self.dir.display().to_string()
    }
    fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
    fn get(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let &i = self.index.get(name).ok_or_else(|| Error::Weights {
            file: self.origin(),
            tensor: name.into(),
            detail: "missing from the checkpoint".into(),
        })?;
        let (path, map) = &self.maps[i];
        let file = path.display().to_string();
        let st =
            SafeTensors::deserialize(map).map_err(|e| Error::Weights { file: file.clone(), tensor: name.into(), detail: e.to_string() })?;
        let view = st.tensor(name).map_err(|e| Error::Weights { file: file.clone(), tensor: name.into(), detail: e.to_string() })?;
        let data = to_f32(view.dtype(), view.data()).ok_or_else(|| Error::Weights {
            file,
            tensor: name.into(),
            detail: format!("dtype {:?} is not supported (F32, F16, BF16)", view.dtype()),
        })?;
        let (start, len) = (view.data().as_ptr() as usize - map.as_ptr() as usize, view.data().len());
        let shape = view.shape().to_vec();
        drop((view, st));
        release(map, start, len);
        Ok((shape, data))
    }
}

/// Drops the mapped pages of bytes `start..start + len` from this process's resident set (the
/// page cache keeps them). Tensors are read once, so nothing faults them back in; if something
/// did, it would read the same file bytes again. Failure only costs memory, so it is ignored.
pub(crate) fn release(map: &memmap2::Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: MADV_DONTNEED on a private read-only file mapping discards the pages; a later read
    // of the range faults the unchanged file contents back in. No borrow of the range is alive:
    // the tensor was converted to an owned Vec before this call.
    debug_assert!(start.checked_add(len).is_some_and(|end| end <= map.len()));
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
    #[cfg(not(unix))]
    let _ = (map, start, len);
}

/// Writes f32 tensors as one safetensors file (`safetensors_bytes::serialize`: sorted header, so
/// the same content is the same bytes), atomically (temp file + rename).
pub fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let bytes = super::safetensors_bytes::serialize(&path.display().to_string(), tensors, metadata)?;
    crate::model::load::write_atomic(path, &bytes)
}

/// Tensors of one small safetensors file (adapters, optimizer state) as f32, with the file's
/// metadata. Errors name the file and say whether it looks truncated.
pub fn read_all(path: &Path) -> Result<(HashMap<String, (Vec<usize>, Vec<f32>)>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    super::safetensors_bytes::read_all(&path.display().to_string(), &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tensors and metadata give the same bytes every time (each `HashMap` has its own
    /// random order), and the file reads back.
    #[test]
    fn same_content_same_bytes() {
        let dir = std::env::temp_dir().join(format!("flexlora-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tensors = vec![("b".to_string(), vec![2, 3], vec![1.5f32; 6]), ("a".to_string(), vec![4], vec![-2.0f32; 4])];
        let files: Vec<Vec<u8>> = (0..6)
            .map(|i| {
                let meta: HashMap<String, String> = (0..8).map(|k| (format!("key{k}"), format!("value {k}"))).collect();
                let p = dir.join(format!("{i}.safetensors"));
                write(&p, &tensors, Some(meta)).unwrap();
                std::fs::read(&p).unwrap()
            })
            .collect();
        assert!(files.iter().all(|f| f == &files[0]), "the same content gave different bytes");
        assert_eq!(u64::from_le_bytes(files[0][..8].try_into().unwrap()) % 8, 0, "header not padded to 8 bytes");
        let (read, meta) = read_all(&dir.join("0.safetensors")).unwrap();
        assert_eq!(read["b"], (vec![2, 3], vec![1.5f32; 6]));
        assert_eq!(meta["key7"], "value 7");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
