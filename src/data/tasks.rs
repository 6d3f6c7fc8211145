//! Benchmark tasks: loading HumanEval, MBPP, MBJP and HumanEval-Java from a data directory (file
//! names and formats in shared/data/README.md), the prompts given to the model, the stop sequences
//! that end a completion, and the assembly of prompt + completion + tests into one program.
//!
//! Owns text only: it never runs a program (that is `sandbox`) and never generates.
//! Parsing works on strings and builds for the browser; reading files is native only.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    Python,
    Java,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dataset {
    HumanEval,
    Mbpp,
    Mbjp,
    HumanEvalJava,
}

impl Dataset {
    pub fn file_name(self) -> &'static str {
        match self {
            Dataset::HumanEval => "HumanEval.jsonl.gz",
            Dataset::Mbpp => "mbpp.jsonl",
            Dataset::Mbjp => "mbjp_release_v1.2.jsonl",
            Dataset::HumanEvalJava => "humaneval_java_v1.1.jsonl",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dataset::HumanEval => "HumanEval",
            Dataset::Mbpp => "MBPP",
            Dataset::Mbjp => "MBJP",
            Dataset::HumanEvalJava => "HumanEval-Java",
        }
    }
}

/// The standard MBPP split by task_id (Austin et al. 2021).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbppSplit {
    /// 1-10: reserved for few-shot prompts.
    FewShot,
    /// 11-510.
    Test,
    /// 511-600.
    Validation,
    /// 601-974.
    Train,
    All,
}

impl MbppSplit {
    pub fn contains(self, task_id: u32) -> bool {
        match self {
            MbppSplit::FewShot => (1..=10).contains(&task_id),
            MbppSplit::Test => (11..=510).contains(&task_id),
            MbppSplit::Validation => (511..=600).contains(&task_id),
            MbppSplit::Train => (601..=974).contains(&task_id),
            MbppSplit::All => true,
        }
    }
}

/// How an MBPP prompt is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbppPrompt {
    /// The paper's 3-shot prompt: tasks 2, 3, 4 as worked examples, each "You are an expert Python
    /// programmer, and here is your task: {text} Your code should pass these tests:\n\n{asserts}\n
    /// [BEGIN]\n{code}\n[DONE]", then the task itself up to "[BEGIN]\n".
    FewShot,
    /// The FLeX training template: the description, each test as a `# assert ...` line, then the
    /// code, which the model writes.
    Flex,
}

/// Task ids of the MBPP few-shot examples used by `MbppPrompt::FewShot` (those of the paper).
pub const MBPP_SHOTS: [u32; 3] = [2, 3, 4];

/// An inclusive range of task numbers, the number after the last `/` of a task id (`MBJP/12` is
/// 12). MBJP tasks carry the number of their MBPP twin, so MBPP's split ranges select the Java
/// twins of a split: `11-510` the test split, `511-600` validation, `601-974` train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdRange {
    pub first: u32,
    pub last: u32,
}

impl IdRange {
    /// `"11-510"` or a single number `"7"`.
    pub fn parse(s: &str) -> Result<IdRange> {
        let bad = || Error::InvalidArgument { flag: "ids", detail: format!("`{s}`: write a task-number range such as 11-510") };
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let (first, last) = (a.trim().parse::<u32>().map_err(|_| bad())?, b.trim().parse::<u32>().map_err(|_| bad())?);
        if first > last {
            return Err(bad());
        }
        Ok(IdRange { first, last })
    }

    pub fn contains(&self, task_id: &str) -> bool {
        task_number(task_id).is_some_and(|n| (self.first..=self.last).contains(&n))
    }

    pub fn overlaps(&self, other: &IdRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The number after the last `/` of a task id: `MBJP/12` -> 12, `HumanEval_java/0` -> 0.
pub fn task_number(task_id: &str) -> Option<u32> {
    task_id.rsplit('/').next()?.parse().ok()
}

/// One benchmark problem.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// As in the file: "HumanEval/0", "MBPP/11", "MBJP/1", "HumanEval_java/0".
    pub id: String,
    pub language: Language,
    /// What the model is asked to continue.
    pub prompt: String,
    /// Whitespace cut from the end of the dataset's prompt (see `trim_prompt`). Completions
    /// written by other tools continue the dataset's prompt, so `eval --samples` (`score`) puts
    /// this back in front of them. Completions from flexlora's own samples.jsonl work too: they
    /// start on a new line, and an extra blank line changes nothing in Python or Java.
    pub prompt_tail: String,
    /// A completion ends before the first of these (see `truncate_at_stop`).
    pub stop: Vec<String>,
    pub entry_point: String,
    /// A reference completion, in the same form a model's completion takes, when the set has one.
    pub canonical_solution: Option<String>,
    /// Program text placed before the completion (HumanEval and the Java sets: the prompt).
    pub program_prefix: String,
    /// Program text placed after the completion: the tests.
    pub program_suffix: String,
    /// Java: close the braces the completion left open before the tests (MBXP tests start outside
    /// the class). False where the tests close the method and class themselves (MultiPL-E).
    pub close_java_braces: bool,
}

/// A complete program ready for the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub language: Language,
    pub source: String,
}

/// Python stops: any new top-level statement ends the function the model was writing.
pub const PYTHON_FUNCTION_STOPS: [&str; 6] = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert"];
/// MBPP whole-program stops: helper functions may follow, so "\ndef " and "\nclass " do not stop.
pub const PYTHON_PROGRAM_STOPS: [&str; 4] = ["\nif __name__", "\nprint(", "\n#", "\nassert"];
/// MBPP few-shot stops: the end marker, or the start of another example.
pub const MBPP_FEW_SHOT_STOPS: [&str; 3] = ["[DONE]", "\n[BEGIN]", "\nYou are an expert"];
/// Java stop: the entry method's closing brace at class indentation (4 spaces in every MBXP
/// prompt), trailing blanks allowed (`find_stop`). The harness then closes the method and the
/// class (see `Task::program`).
pub const JAVA_STOPS: [&str; 1] = ["\n    }\n"];

/// Cuts a completion before the first stop sequence, as generation does (`find_stop`: a stop that
/// ends a line matches with trailing blanks too). Idempotent.
pub fn truncate_at_stop<'a>(completion: &'a str, stop: &[String]) -> &'a str {
    &completion[..crate::model::generate::find_stop(completion, stop).unwrap_or(completion.len())]
}

impl Task {
    /// Prefix + completion + tests. For Java, the braces the completion left open (normally the
    /// entry method's and the class's, as the stop cuts before them) are closed before the test
    /// class, so both a truncated completion and a canonical solution that closes the class work.
    pub fn program(&self, completion: &str) -> Program {
        let mut source = String::with_capacity(self.program_prefix.len() + completion.len() + self.program_suffix.len() + 8);
        source.push_str(&self.program_prefix);
        source.push_str(completion);
        if self.language == Language::Java && self.close_java_braces {
            for _ in 0..open_braces(&source) {
                source.push_str("\n}");
            }
        }
        source.push_str(&self.program_suffix);
        Program { language: self.language, source }
    }
}

/// Number of `{` not yet closed in Java source, ignoring comments, string, char and text-block
/// literals. Negative counts (a completion closing too much) give 0: javac reports that.
fn open_braces(java: &str) -> usize {
    let b = java.as_bytes();
    let (mut i, mut depth) = (0usize, 0i64);
    let skip_to = |from: usize, end: &[u8]| -> usize {
        b[from..].windows(end.len()).position(|w| w == end).map_or(b.len(), |p| from + p + end.len())
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => i = skip_to(i + 2, b"\n"),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_to(i + 2, b"*/"),
            b'"' if b[i..].starts_with(b"\"\"\"") => i = skip_to(i + 3, b"\"\"\""),
            q @ (b'"' | b'\'') => {
                i += 1;
                while i < b.len() && b[i] != q && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            c => {
                depth += match c {
                    b'{' => 1,
                    b'}' => -1,
                    _ => 0,
                };
                i += 1;
            }
        }
    }
    depth.max(0) as usize
}

#[derive(Deserialize)]
struct HumanEvalRecord {
    task_id: String,
    prompt: String,
    entry_point: String,
    canonical_solution: String,
    test: String,
}

#[derive(Deserialize)]
struct MbppRecord {
    task_id: u32,
    text: String,
    code: String,
    test_setup_code: String,
    test_list: Vec<String>,
}

/// MBJP and HumanEval-Java share this layout (MBXP).
#[derive(Deserialize)]
struct MbxpRecord {
    task_id: String,
    prompt: String,
    entry_point: String,
    test: String,
    canonical_solution: Option<String>,
}

/// One record per non-blank line; an error names the file and the line. Shared with
/// `train::data`.
pub(crate) fn parse_jsonl<T: for<'de> Deserialize<'de>>(text: &str, path: &str) -> Result<Vec<T>> {
    let rows = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    rows.map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::DataFormat { path: path.into(), line: i + 1, detail: e.to_string() }))
        .collect()
}

pub(crate) fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// The prompt the model continues, without its trailing whitespace (as bigcode's evaluation
/// harness does), and the canonical solution with that whitespace in front, so reference programs
/// stay byte for byte what the dataset gives. A prompt ending in "\n" splits the newline from the
/// next line's indentation, a token boundary the model has rarely seen: small models then start a
/// new top-level statement instead of the body (SmolLM2-135M did on 127 of 164 HumanEval tasks).
/// Returns the trimmed prompt, the canonical solution and the whitespace cut off.
pub(crate) fn trim_prompt(prompt: String, canonical: Option<String>) -> (String, Option<String>, String) {
    let trimmed = prompt.trim_end().to_string();
    let tail = prompt[trimmed.len()..].to_string();
    let canonical = canonical.map(|c| format!("{tail}{c}"));
    (trimmed, canonical, tail)
}

/// HumanEval: the model completes the function body after the prompt.
pub fn parse_humaneval(text: &str, path: &str) -> Result<Vec<Task>> {
    let records: Vec<HumanEvalRecord> = parse_jsonl(text, path)?;
    let tasks = records.into_iter().map(|r| {
        let (prompt, canonical_solution, prompt_tail) = trim_prompt(r.prompt, Some(r.canonical_solution));
        Task {
            prompt_tail,
            close_java_braces: true,
            program_suffix: format!("\n{}\ncheck({})\n", r.test, r.entry_point),
            program_prefix: prompt.clone(),
            id: r.task_id,
            language: Language::Python,
            prompt,
            stop: strings(&PYTHON_FUNCTION_STOPS),
            entry_point: r.entry_point,
            canonical_solution,
        }
    });
    Ok(tasks.collect())
}

/// MBJP or HumanEval-Java: the model completes the method body after the prompt.
pub fn parse_mbxp(text: &str, path: &str) -> Result<Vec<Task>> {
    let records: Vec<MbxpRecord> = parse_jsonl(text, path)?;
    let tasks = records.into_iter().map(|r| {
        let (prompt, canonical_solution, prompt_tail) = trim_prompt(r.prompt, r.canonical_solution);
        Task {
            prompt_tail,
            close_java_braces: true,
            program_prefix: prompt.clone(),
            program_suffix: r.test,
            id: r.task_id,
            language: Language::Java,
            prompt,
            stop: strings(&JAVA_STOPS),
            entry_point: r.entry_point,
            canonical_solution,
        }
    });
    Ok(tasks.collect())
}

/// MBPP (the full file): the model writes the whole program; the tests are test_setup_code and
/// the test_list asserts. Carriage returns in the file are dropped.
pub fn parse_mbpp(text: &str, path: &str, split: MbppSplit, style: MbppPrompt) -> Result<Vec<Task>> {
    let mut records: Vec<MbppRecord> = parse_jsonl(text, path)?;
    for r in &mut records {
        for s in [&mut r.text, &mut r.code, &mut r.test_setup_code].into_iter().chain(r.test_list.iter_mut()) {
            *s = s.replace('\r', "");
        }
    }
    let shots: String = match style {
        MbppPrompt::Flex => String::new(),
        MbppPrompt::FewShot => MBPP_SHOTS
            .iter()
            .map(|id| {
                let r = records.iter().find(|r| r.task_id == *id).ok_or_else(|| Error::DataFormat {
                    path: path.into(),
                    line: 0,
                    detail: format!("few-shot example task {id} is missing from the file"),
                })?;
                Ok(format!("{}{}\n[DONE]\n", few_shot_header(r), r.code))
            })
            .collect::<Result<_>>()?,
    };
    let tasks = records.iter().filter(|r| split.contains(r.task_id)).map(|r| {
        let (prompt, stop) = match style {
            MbppPrompt::FewShot => (format!("{shots}{}", few_shot_header(r)), strings(&MBPP_FEW_SHOT_STOPS)),
            MbppPrompt::Flex => {
                let asserts: String = r.test_list.iter().map(|t| format!("# {t}\n")).collect();
                (format!("{}\n{asserts}", r.text), strings(&PYTHON_PROGRAM_STOPS))
            }
        };
        Task {
            id: format!("MBPP/{}", r.task_id),
            language: Language::Python,
            prompt,
            prompt_tail: String::new(),
            close_java_braces: true,
            stop,
            entry_point: mbpp_entry_point(&r.test_list, &r.code),
            canonical_solution: Some(r.code.clone()),
            program_prefix: String::new(),
            program_suffix: format!("\n{}\n{}\n", r.test_setup_code, r.test_list.join("\n")),
        }
    });
    Ok(tasks.collect())
}

fn few_shot_header(r: &MbppRecord) -> String {
    format!(
        "You are an expert Python programmer, and here is your task: {} Your code should pass these tests:\n\n{}\n[BEGIN]\n",
        r.text,
        r.test_list.join("\n")
    )
}

/// MBPP has no entry_point field: the first name called in the first assert that the reference
/// code defines (`assert int(lobb_num(5, 3)) == 35` gives `lobb_num`), else the first name called.
fn mbpp_entry_point(tests: &[String], code: &str) -> String {
    let first = tests.first().map(String::as_str).unwrap_or("");
    let called: Vec<&str> = first
        .split('(')
        .filter_map(|before| before.trim_end().rsplit(|c: char| !(c.is_alphanumeric() || c == '_')).next())
        .filter(|name| !name.is_empty() && *name != "assert")
        .collect();
    let defined = |name: &&&str| code.contains(&format!("def {name}(")) || code.contains(&format!("class {name}"));
    called.iter().find(defined).or(called.first()).map_or_else(String::new, |s| s.to_string())
}

#[cfg(not(target_arch = "wasm32"))]
mod load {
    use std::io::Read;
    use std::path::Path;

    use super::*;

    fn read(dir: &Path, dataset: Dataset) -> Result<(String, String)> {
        let path = dir.join(dataset.file_name());
        let shown = path.display().to_string();
        let fail = |detail: String| Error::DataFile { dataset: dataset.name(), path: shown.clone(), detail };
        let bytes = std::fs::read(&path).map_err(|e| fail(e.to_string()))?;
        let text = if dataset.file_name().ends_with(".gz") {
            let mut s = String::new();
            flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut s).map_err(|e| fail(format!("gzip: {e}")))?;
            s
        } else {
            String::from_utf8(bytes).map_err(|e| fail(format!("not UTF-8: {e}")))?
        };
        Ok((text, shown))
    }

    /// HumanEval (164 Python tasks) from `dir/HumanEval.jsonl.gz`.
    pub fn load_humaneval(dir: &Path) -> Result<Vec<Task>> {
        let (text, path) = read(dir, Dataset::HumanEval)?;
        parse_humaneval(&text, &path)
    }

    /// MBPP from `dir/mbpp.jsonl`, one split, prompts in the given style.
    pub fn load_mbpp(dir: &Path, split: MbppSplit, style: MbppPrompt) -> Result<Vec<Task>> {
        let (text, path) = read(dir, Dataset::Mbpp)?;
        parse_mbpp(&text, &path, split, style)
    }

    /// MBJP (966 Java tasks, 874 with a canonical solution) from `dir/mbjp_release_v1.2.jsonl`.
    pub fn load_mbjp(dir: &Path) -> Result<Vec<Task>> {
        let (text, path) = read(dir, Dataset::Mbjp)?;
        parse_mbxp(&text, &path)
    }

    /// HumanEval-Java (161 tasks, no solutions) from `dir/humaneval_java_v1.1.jsonl`.
    pub fn load_humaneval_java(dir: &Path) -> Result<Vec<Task>> {
        let (text, path) = read(dir, Dataset::HumanEvalJava)?;
        parse_mbxp(&text, &path)
    }
}

#[cfg(not(target_arch = "wasm32"))]
pub use load::{load_humaneval, load_humaneval_java, load_mbjp, load_mbpp};
