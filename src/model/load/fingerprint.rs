//! What a result was computed from: a cheap content fingerprint of a model file or directory, and
//! a full one of an adapter, so a training run resumed on another model or an evaluation re-run
//! after its adapter was retrained in place is noticed instead of silently mixing results.
//!
//! A model can be many gigabytes, so its fingerprint reads each file's size, first MiB and last
//! MiB (a re-quantized or re-converted file changes all three; a bit flip in the middle does not,
//! which is acceptable for telling models apart). Adapters are small: every byte is hashed.

#[cfg(not(target_arch = "wasm32"))]
use std::io::{Read, Seek, SeekFrom};
#[cfg(not(target_arch = "wasm32"))]
use std::path::{Path, PathBuf};

#[cfg(not(target_arch = "wasm32"))]
use crate::error::{io_at, Result};

const EDGE: u64 = 1 << 20;

/// 64-bit FNV-1a over 8-byte words with a final avalanche: not cryptographic, only a stable
/// content digest that changes when the bytes change.
#[derive(Clone, Copy)]
struct Hasher(u64);

impl Hasher {
    fn new() -> Self {
        Hasher(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or_default());
            self.0 = (self.0 ^ w).wrapping_mul(0x100_0000_01b3).rotate_left(23);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn finish(self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
}

#[cfg(not(target_arch = "wasm32"))]
/// The files a model or adapter path consists of, sorted: the file itself, or a directory's
/// regular files (not its subdirectories: checkpoints or outputs that may sit next to them).
fn files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_at(path, "list"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            // Model and adapter files only: a README or a temporary file does not change the weights.
            name.ends_with(".json") || name.ends_with(".safetensors") || name.ends_with(".gguf") || name.ends_with(".model")
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(not(target_arch = "wasm32"))]
fn hash_file(h: &mut Hasher, path: &Path, full: bool) -> Result<u64> {
    let mut f = std::fs::File::open(path).map_err(io_at(path, "read"))?;
    let len = f.metadata().map_err(io_at(path, "read"))?.len();
    h.update(&len.to_le_bytes());
    let mut buf = Vec::new();
    if full || len <= 2 * EDGE {
        f.read_to_end(&mut buf).map_err(io_at(path, "read"))?;
        h.update(&buf);
    } else {
        buf.resize(EDGE as usize, 0);
        f.read_exact(&mut buf).map_err(io_at(path, "read"))?;
        h.update(&buf);
        f.seek(SeekFrom::Start(len - EDGE)).map_err(io_at(path, "read"))?;
        f.read_exact(&mut buf).map_err(io_at(path, "read"))?;
        h.update(&buf);
    }
    Ok(len)
}

#[cfg(not(target_arch = "wasm32"))]
fn fingerprint_with(path: &Path, full: bool) -> Result<String> {
    let mut h = Hasher::new();
    let mut total = 0;
    for f in files(path)? {
        h.update(f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default().as_bytes());
        total += hash_file(&mut h, &f, full)?;
    }
    Ok(format!("{total} bytes, {}:{:016x}", if full { "full" } else { "edges" }, h.finish()))
}

#[cfg(not(target_arch = "wasm32"))]
/// A model file's or directory's fingerprint: sizes and the first and last MiB of each file.
/// (`model_bytes` gives a single file's from its name and bytes.)
pub fn model(path: &Path) -> Result<String> {
    fingerprint_with(path, false)
}

#[cfg(not(target_arch = "wasm32"))]
/// An adapter directory's (or file's) fingerprint over every byte of its files.
pub fn adapter(path: &Path) -> Result<String> {
    fingerprint_with(path, true)
}

/// `model`'s fingerprint of a single model file named `file_name` (its name without the
/// directory) whose contents are `bytes`: what the browser build computes for a model it fetched,
/// so a checkpoint's model identity is the same on both sides.
pub fn model_bytes(file_name: &str, bytes: &[u8]) -> String {
    let mut h = Hasher::new();
    h.update(file_name.as_bytes());
    let len = bytes.len() as u64;
    h.update(&len.to_le_bytes());
    // The same pieces, in the same `update` calls, as `hash_file` reads them.
    if len <= 2 * EDGE {
        h.update(bytes);
    } else {
        h.update(&bytes[..EDGE as usize]);
        h.update(&bytes[(len - EDGE) as usize..]);
    }
    format!("{len} bytes, edges:{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    /// A single file's fingerprint from its bytes equals the one read from disk, for a file read
    /// whole (≤ 2 MiB) and one read by its edges, and changes with the name and the contents.
    #[test]
    fn bytes_fingerprint_equals_the_file_one() {
        let dir = std::env::temp_dir().join(format!("flexlora-fp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [1000usize, 2 << 20, (2 << 20) + 13, 5 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let path = dir.join(format!("m{len}.gguf"));
            std::fs::write(&path, &bytes).unwrap();
            let name = path.file_name().unwrap().to_str().unwrap();
            assert_eq!(super::model_bytes(name, &bytes), super::model(&path).unwrap(), "{len} bytes");
            assert_ne!(super::model_bytes("other.gguf", &bytes), super::model(&path).unwrap());
            let mut changed = bytes.clone();
            changed[len - 1] ^= 1;
            assert_ne!(super::model_bytes(name, &changed), super::model(&path).unwrap());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
