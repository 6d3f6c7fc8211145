//! Training text: prompt/completion examples from MBPP (the FLeX template) or a JSONL file, named
//! by the `data` and `val_data` settings (`Source::parse`). Reading files is native only;
//! `parse_jsonl` works on text already in memory (the browser's).

use std::path::PathBuf;

use serde::Deserialize;

use crate::data::tasks::{self, MbppSplit};
use crate::error::{Error, Result};

/// Where training text comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `mbpp.jsonl` in the data directory, one split, in the FLeX template.
    Mbpp { split: MbppSplit },
    /// A JSONL file: `{"prompt": ..., "completion": ...}` or `{"text": ...}` per line.
    Jsonl(PathBuf),
}

impl Source {
    /// The source a `data` setting names: `mbpp` (the train split), `mbpp:SPLIT` (train,
    /// validation, test, all), anything else a JSONL file.
    pub fn parse(data: &str) -> Result<Source> {
        let split = |s: &str| match s {
            "train" => Ok(MbppSplit::Train),
            "validation" => Ok(MbppSplit::Validation),
            "test" => Ok(MbppSplit::Test),
            "all" => Ok(MbppSplit::All),
            _ => Err(Error::InvalidArgument { flag: "--data", detail: format!("unknown MBPP split `{s}` (train, validation, test, all)") }),
        };
        match data.split_once(':') {
            None if data == "mbpp" => Ok(Source::Mbpp { split: MbppSplit::Train }),
            Some(("mbpp", s)) => Ok(Source::Mbpp { split: split(s)? }),
            _ => Ok(Source::Jsonl(PathBuf::from(data))),
        }
    }
}

/// One example before tokenization. `{"text": ...}` lines have an empty prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextExample {
    pub prompt: String,
    pub completion: String,
}

/// A generic JSONL line; exactly one of the two layouts (other fields are ignored).
#[derive(Deserialize)]
#[serde(try_from = "RawLine")]
struct Line(TextExample);

#[derive(Deserialize)]
struct RawLine {
    prompt: Option<String>,
    completion: Option<String>,
    text: Option<String>,
}

impl TryFrom<RawLine> for Line {
    type Error = String;
    fn try_from(r: RawLine) -> std::result::Result<Self, String> {
        match (r.prompt, r.completion, r.text) {
            (Some(prompt), Some(completion), None) => Ok(Line(TextExample { prompt, completion })),
            (None, None, Some(text)) => Ok(Line(TextExample { prompt: String::new(), completion: text })),
            _ => Err("expected {\"prompt\": string, \"completion\": string} or {\"text\": string}".into()),
        }
    }
}

/// Parses generic JSONL text; `path` names the file in errors (with the line number).
pub fn parse_jsonl(text: &str, path: &str) -> Result<Vec<TextExample>> {
    let lines: Vec<Line> = tasks::parse_jsonl(text, path)?;
    Ok(lines.into_iter().map(|l| l.0).collect())
}

/// The examples of `source`. MBPP reads `data_dir/mbpp.jsonl` through the eval loader, so training
/// and `eval --flex-template` see the same prompt text: the description, "\n", one
/// "# <assert>\n" line per test; the completion is the reference code.
#[cfg(not(target_arch = "wasm32"))]
pub fn load(source: &Source, data_dir: &std::path::Path) -> Result<Vec<TextExample>> {
    match source {
        Source::Mbpp { split } => {
            let tasks = tasks::load_mbpp(data_dir, *split, tasks::MbppPrompt::Flex)?;
            Ok(tasks.into_iter().map(|t| TextExample { prompt: t.prompt, completion: t.canonical_solution.unwrap_or_default() }).collect())
        }
        Source::Jsonl(path) => {
            let text = std::fs::read_to_string(path).map_err(crate::error::io_at(path, "read"))?;
            parse_jsonl(&text, &path.display().to_string())
        }
    }
}
