//! Output that appears whole or not at all: written under a temporary name beside the final path
//! (same directory, so the rename is atomic), renamed into place when complete, and removed if
//! anything fails first. An existing output is refused unless the caller forces its replacement
//! (an empty directory counts as absent).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct Staging {
    pub out: PathBuf,
    /// Where to write; renamed to `out` by `finish`.
    pub tmp: PathBuf,
    done: bool,
}

fn err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Config { file: path.display().to_string(), detail: detail.into() }
}

impl Staging {
    /// Prepares to write `out` (a directory when `dir`, else a file); `flag` names the option
    /// that replaces an existing output.
    pub fn begin(out: &Path, dir: bool, force: bool, flag: &str) -> Result<Staging> {
        let name = out.file_name().ok_or_else(|| err(out, "the output needs a file or directory name"))?;
        if out.is_dir() {
            let empty = std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false);
            if !empty && !force {
                return Err(err(out, format!("exists and is not empty; choose a new path or pass {flag} to replace it")));
            }
            if !dir && !force {
                return Err(err(out, format!("is a directory; give a file path, or pass {flag} to replace it")));
            }
        } else if out.exists() && !force {
            return Err(err(out, format!("already exists; choose a new path or pass {flag} to replace it")));
        }
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !parent.is_dir() {
            return Err(err(&parent, "the directory to write into does not exist; create it first"));
        }
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = parent.join(tmp_name);
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_file(&tmp);
        // Probe that the place is writable now rather than after minutes of work.
        let probe = if dir { std::fs::create_dir(&tmp) } else { std::fs::File::create(&tmp).map(|_| ()) };
        probe.map_err(|e| err(&parent, format!("cannot write here ({e}); choose a writable output path")))?;
        Ok(Staging { out: out.to_path_buf(), tmp, done: false })
    }

    /// Moves the finished output into place, replacing what was there (only possible when forced).
    pub fn finish(mut self) -> Result<()> {
        let fail = |e: std::io::Error| err(&self.out, format!("cannot move the finished output into place: {e}"));
        if self.out.is_dir() {
            let mut old = self.tmp.clone().into_os_string();
            old.push(".old");
            let old = PathBuf::from(old);
            std::fs::rename(&self.out, &old).map_err(fail)?;
            std::fs::rename(&self.tmp, &self.out).map_err(fail)?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&self.tmp, &self.out).map_err(fail)?;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
