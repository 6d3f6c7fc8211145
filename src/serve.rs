//! `flexlora web`: serves the browser page (`web/`, with the wasm build in `web/pkg`), the model
//! and adapters named on the command line, and the evaluation datasets, on 127.0.0.1.
//!
//! Routes (GET and HEAD only):
//! - `/files/manifest.json`: what was given, as `{model: {name, url, size}, adapters: [{name,
//!   files: [{name, url}]}], data: bool}`; the page offers these to load.
//! - `/files/model/NAME`, `/files/adapters/I/FILE`: exactly those files, nothing else on disk.
//! - `/data/FILE`: a file directly inside the data directory (the tasks for the Pyodide runner).
//! - `/files/train/mbpp-train.jsonl`: MBPP's train split as training examples (`{"prompt",
//!   "completion"}` lines in the template `flexlora train --data mbpp` uses), for the page's
//!   fine-tuning panel.
//! - anything else: a file under the page's directory.
//!
//! Every response carries the cross-origin isolation headers (COOP/COEP) that WebAssembly threads
//! and `SharedArrayBuffer` need, so the page gets them here; any static host can serve the page
//! without them, at one thread. A plain std::net server, one thread per connection: it listens on
//! loopback only and serves one person's browser.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::error::{Error, Result};
use crate::model::load::peft::{CONFIG_FILE, WEIGHTS_FILE};

/// What `flexlora web` serves.
#[derive(Debug, Clone)]
pub struct Site {
    /// The page: `index.html`, `main.js`, `worker.js`, `pkg/` (wasm), `node_modules/` (Pyodide).
    pub web_dir: PathBuf,
    pub model: Option<PathBuf>,
    /// Adapter directories (PEFT layout).
    pub adapters: Vec<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

/// Where the page finds MBPP's train split as training examples.
const TRAIN_MBPP: &str = "files/train/mbpp-train.jsonl";

fn bad_arg(flag: &'static str, detail: String) -> Error {
    Error::InvalidArgument { flag, detail }
}

impl Site {
    /// Checks every path before the server starts, so a typo is an error now rather than a 404
    /// in the page later.
    pub fn validate(&self) -> Result<()> {
        let wasm = self.web_dir.join("pkg/flexlora_bg.wasm");
        if !wasm.is_file() {
            return Err(bad_arg(
                "--web-dir",
                format!("{} is missing: build the page first with `bash scripts/build-web.sh`", wasm.display()),
            ));
        }
        if let Some(m) = &self.model {
            let mut magic = [0u8; 4];
            let ok = std::fs::File::open(m).and_then(|mut f| f.read_exact(&mut magic)).is_ok();
            if !ok || &magic != b"GGUF" {
                return Err(bad_arg(
                    "--model",
                    format!("{} is not a readable GGUF file; the browser loads .gguf models (convert others with llama.cpp)", m.display()),
                ));
            }
        }
        for a in &self.adapters {
            for f in [CONFIG_FILE, WEIGHTS_FILE] {
                if !a.join(f).is_file() {
                    return Err(bad_arg(
                        "--adapter",
                        format!("{} has no {f}; an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}", a.display()),
                    ));
                }
            }
        }
        Ok(())
    }

    fn manifest(&self) -> String {
        let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let model = self.model.as_ref().map(|m| {
            let n = name(m);
            json!({ "name": n, "url": format!("files/model/{n}"), "size": std::fs::metadata(m).map(|x| x.len()).unwrap_or(0) })
        });
        let adapters: Vec<_> = (self.adapters.iter().enumerate())
            .map(|(i, a)| {
                let files: Vec<_> =
                    [CONFIG_FILE, WEIGHTS_FILE].iter().map(|f| json!({ "name": f, "url": format!("files/adapters/{i}/{f}") })).collect();
                // `flexlora train` writes RUN/adapter: the run's name says more than "adapter".
                let label = match (name(a).as_str(), a.parent()) {
                    ("adapter", Some(run)) if !name(run).is_empty() => format!("{}/adapter", name(run)),
                    (n, _) => n.to_string(),
                };
                json!({ "name": label, "files": files })
            })
            .collect();
        let train_data: Vec<_> = self
            .data_dir
            .iter()
            .map(|_| json!({ "name": "MBPP train split (as flexlora train --data mbpp)", "url": TRAIN_MBPP }))
            .collect();
        json!({ "model": model, "adapters": adapters, "data": self.data_dir.is_some(), "train_data": train_data }).to_string()
    }

    /// MBPP's train split as JSONL training examples: the same examples `flexlora train --data
    /// mbpp` tokenizes, so a run in the page trains on what a native run does.
    fn mbpp_train_jsonl(&self) -> Result<String> {
        let dir = self.data_dir.as_ref().ok_or_else(|| bad_arg("--data-dir", "no data directory was given".into()))?;
        let texts = crate::data::text::load(&crate::data::text::Source::Mbpp { split: crate::data::tasks::MbppSplit::Train }, dir)?;
        Ok(texts.iter().map(|t| json!({ "prompt": t.prompt, "completion": t.completion }).to_string() + "\n").collect())
    }

    /// The file a request path names, or None (404). Never a path outside what was given.
    fn resolve(&self, path: &str) -> Option<PathBuf> {
        let rel = safe_relative(path.trim_start_matches('/'))?;
        let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
        match parts.as_slice() {
            ["files", "model", n] => self.model.clone().filter(|m| m.file_name().is_some_and(|f| f == *n)),
            ["files", "adapters", i, f] if *f == CONFIG_FILE || *f == WEIGHTS_FILE => {
                self.adapters.get(i.parse::<usize>().ok()?).map(|a| a.join(f))
            }
            ["files", ..] => None,
            ["data", f] => self.data_dir.as_ref().map(|d| d.join(f)),
            ["data", ..] => None,
            [] => Some(self.web_dir.join("index.html")),
            _ => Some(self.web_dir.join(&rel)),
        }
        .filter(|p| p.is_file())
    }
}

/// `path` as a relative path with no `..`, root or prefix components.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)).then(|| p.to_path_buf())
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "txt" | "md" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Binds 127.0.0.1:`port` (0 picks a free port) and returns the listener and its URL.
pub fn bind(port: u16) -> Result<(TcpListener, String)> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| bad_arg("--port", format!("cannot listen on 127.0.0.1:{port}: {e}; choose another port (0 picks a free one)")))?;
    let addr = listener.local_addr().map_err(|e| bad_arg("--port", e.to_string()))?;
    Ok((listener, format!("http://{addr}/")))
}

/// Serves `site` on `listener` until the process ends.
pub fn serve(listener: TcpListener, site: Site) -> Result<()> {
    let site = Arc::new(site);
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let site = Arc::clone(&site);
        std::thread::spawn(move || {
            let _ = handle(stream, &site);
        });
    }
    Ok(())
}

fn handle(stream: TcpStream, site: &Site) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut it = line.split_whitespace();
        let (method, target) = (it.next().unwrap_or(""), it.next().unwrap_or("/"));
        let mut keep_alive = true;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if h.to_ascii_lowercase().starts_with("connection:") && h.to_ascii_lowercase().contains("close") {
                keep_alive = false;
            }
        }
        let path = percent_decode(target.split(['?', '#']).next().unwrap_or("/"));
        respond(&mut out, site, method, &path)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn respond(out: &mut TcpStream, site: &Site, method: &str, path: &str) -> std::io::Result<()> {
    let head = |status: &str, ctype: &str, len: u64| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\n\
             Cross-Origin-Opener-Policy: same-origin\r\nCross-Origin-Embedder-Policy: require-corp\r\n\
             Cross-Origin-Resource-Policy: same-origin\r\nX-Content-Type-Options: nosniff\r\n\r\n"
        )
    };
    if method != "GET" && method != "HEAD" {
        let body = "only GET and HEAD are served\n";
        out.write_all(head("405 Method Not Allowed", "text/plain", body.len() as u64).as_bytes())?;
        return out.write_all(body.as_bytes());
    }
    if path == "/files/manifest.json" {
        let body = site.manifest();
        out.write_all(head("200 OK", "application/json", body.len() as u64).as_bytes())?;
        return if method == "GET" { out.write_all(body.as_bytes()) } else { Ok(()) };
    }
    if path == format!("/{TRAIN_MBPP}") {
        let (status, body) = match site.mbpp_train_jsonl() {
            Ok(body) => ("200 OK", body),
            Err(e) => ("404 Not Found", format!("{e}\n")),
        };
        out.write_all(head(status, "application/jsonl", body.len() as u64).as_bytes())?;
        return if method == "GET" { out.write_all(body.as_bytes()) } else { Ok(()) };
    }
    let Some(file) = site.resolve(path) else {
        let body = format!("not found: {path}\n");
        out.write_all(head("404 Not Found", "text/plain", body.len() as u64).as_bytes())?;
        return out.write_all(body.as_bytes());
    };
    let mut f = std::fs::File::open(&file)?;
    let len = f.metadata()?.len();
    out.write_all(head("200 OK", content_type(&file), len).as_bytes())?;
    if method == "GET" {
        std::io::copy(&mut f, out)?;
    }
    out.flush()
}

/// Decodes `%XX` escapes in a URL path (invalid escapes are kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(dir: &Path) -> Site {
        Site { web_dir: dir.join("web"), model: Some(dir.join("m.gguf")), adapters: vec![dir.join("ad")], data_dir: Some(dir.join("data")) }
    }

    #[test]
    fn resolves_only_what_was_given() {
        let dir = std::env::temp_dir().join(format!("flexlora-serve-{}", std::process::id()));
        for d in ["web/pkg", "ad", "data", "secret"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        for f in ["web/index.html", "web/pkg/x.js", "m.gguf", "ad/adapter_config.json", "ad/notes.txt", "data/mbpp.jsonl", "secret/key"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let s = site(&dir);
        assert_eq!(s.resolve("/"), Some(dir.join("web/index.html")));
        assert_eq!(s.resolve("/pkg/x.js"), Some(dir.join("web/pkg/x.js")));
        assert_eq!(s.resolve("/files/model/m.gguf"), Some(dir.join("m.gguf")));
        assert_eq!(s.resolve("/files/model/other.gguf"), None);
        assert_eq!(s.resolve("/files/adapters/0/adapter_config.json"), Some(dir.join("ad/adapter_config.json")));
        assert_eq!(s.resolve("/files/adapters/0/notes.txt"), None, "only the two adapter files are served");
        assert_eq!(s.resolve("/files/adapters/1/adapter_config.json"), None);
        assert_eq!(s.resolve("/data/mbpp.jsonl"), Some(dir.join("data/mbpp.jsonl")));
        for evil in ["/../secret/key", "/data/../secret/key", "/pkg/../../secret/key", "//etc/passwd", "/data/"] {
            assert_eq!(s.resolve(&percent_decode(evil)), None, "{evil}");
        }
        assert_eq!(s.resolve(&percent_decode("/%2e%2e/secret/key")), None);
        let m: serde_json::Value = serde_json::from_str(&s.manifest()).unwrap();
        assert_eq!(m["model"]["url"], "files/model/m.gguf");
        assert_eq!(m["adapters"][0]["files"][1]["url"], "files/adapters/0/adapter_model.safetensors");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
