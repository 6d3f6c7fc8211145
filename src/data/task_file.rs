//! Custom task files (`flexlora eval --task file:PATH`): JSONL benchmarks in the formats other
//! harnesses use, turned into the same [`Task`]s as the built-in sets. The format is detected from
//! the keys of the first record and named in the results:
//!
//! - **human-eval** (OpenAI): `task_id, prompt, canonical_solution, test, entry_point`; Python.
//!   Program: prompt + completion + test + `check(entry_point)`.
//! - **MBXP / mxeval** (Amazon): the human-eval keys plus `language` (and `description`).
//!   Python programs as human-eval; Java: prompt + completion, the braces it left open closed,
//!   then the test class, as for the built-in MBJP set.
//! - **MultiPL-E** (Northeastern): `name, language, prompt, tests, stop_tokens`; `py` or `java`.
//!   Program: prompt + completion + "\n" + tests (the tests close the Java method and class
//!   themselves) run as MultiPL-E runs them: Java with assertions enabled (`java -ea`).
//!
//! The sandbox runs Python and Java only; a record in another language is an error naming it.
//! Plain text: builds for the browser too.

use serde::Deserialize;

use super::tasks::{parse_jsonl, strings, trim_prompt, Language, Task, JAVA_STOPS, PYTHON_FUNCTION_STOPS};
use crate::error::{Error, Result};

/// A detected task-file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFormat {
    HumanEval,
    Mbxp,
    MultiplE,
}

impl TaskFormat {
    pub fn name(self) -> &'static str {
        match self {
            TaskFormat::HumanEval => "human-eval",
            TaskFormat::Mbxp => "MBXP/mxeval",
            TaskFormat::MultiplE => "MultiPL-E",
        }
    }

    /// The format a record with these keys is in, or None.
    fn detect(keys: &serde_json::Map<String, serde_json::Value>) -> Option<TaskFormat> {
        let has = |k: &str| keys.contains_key(k);
        if has("name") && has("prompt") && has("tests") && has("language") {
            Some(TaskFormat::MultiplE)
        } else if has("task_id") && has("prompt") && has("test") && has("entry_point") {
            Some(if has("language") { TaskFormat::Mbxp } else { TaskFormat::HumanEval })
        } else {
            None
        }
    }
}

#[derive(Deserialize)]
struct HumanEvalLike {
    task_id: String,
    prompt: String,
    test: String,
    entry_point: String,
    #[serde(default)]
    canonical_solution: Option<String>,
    #[serde(default)]
    language: Option<String>,
}

#[derive(Deserialize)]
struct MultiplERecord {
    name: String,
    language: String,
    prompt: String,
    tests: String,
    #[serde(default)]
    stop_tokens: Vec<String>,
}

fn language_of(name: &str, path: &str, line: usize) -> Result<Language> {
    match name.to_ascii_lowercase().as_str() {
        "python" | "py" | "python3" => Ok(Language::Python),
        "java" => Ok(Language::Java),
        other => Err(Error::DataFormat {
            path: path.into(),
            line,
            detail: format!("language `{other}`: the sandbox runs Python and Java programs only; remove these tasks from the file"),
        }),
    }
}

/// Parses a task file, detecting its format from the first record.
pub fn parse_task_file(text: &str, path: &str) -> Result<(TaskFormat, Vec<Task>)> {
    let first = text.lines().enumerate().find(|(_, l)| !l.trim().is_empty());
    let Some((first_line, first)) = first else {
        return Err(Error::DataFormat { path: path.into(), line: 0, detail: "the file has no tasks".into() });
    };
    let keys: serde_json::Map<String, serde_json::Value> = serde_json::from_str(first).map_err(|e| Error::DataFormat {
        path: path.into(),
        line: first_line + 1,
        detail: format!("not a JSON object: {e}"),
    })?;
    let format = TaskFormat::detect(&keys).ok_or_else(|| Error::DataFormat {
        path: path.into(),
        line: first_line + 1,
        detail: format!(
            "unknown task format (keys: {}); expected human-eval (task_id, prompt, test, entry_point), \
             MBXP/mxeval (the same plus language) or MultiPL-E (name, language, prompt, tests, stop_tokens)",
            keys.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    })?;
    let tasks = match format {
        TaskFormat::HumanEval | TaskFormat::Mbxp => {
            let records: Vec<HumanEvalLike> = parse_jsonl(text, path)?;
            records.into_iter().enumerate().map(|(i, r)| human_eval_like(r, format, path, i + 1)).collect::<Result<Vec<_>>>()?
        }
        TaskFormat::MultiplE => {
            let records: Vec<MultiplERecord> = parse_jsonl(text, path)?;
            records.into_iter().enumerate().map(|(i, r)| multipl_e(r, path, i + 1)).collect::<Result<Vec<_>>>()?
        }
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = tasks.iter().find(|t| !seen.insert(t.id.as_str())) {
        return Err(Error::DataFormat { path: path.into(), line: 0, detail: format!("task id `{}` appears twice", dup.id) });
    }
    Ok((format, tasks))
}

fn human_eval_like(r: HumanEvalLike, format: TaskFormat, path: &str, line: usize) -> Result<Task> {
    let language = match (&r.language, format) {
        (Some(l), TaskFormat::Mbxp) => language_of(l, path, line)?,
        _ => Language::Python,
    };
    let (prompt, canonical_solution, prompt_tail) = trim_prompt(r.prompt, r.canonical_solution);
    let (stop, program_suffix) = match language {
        Language::Python => (strings(&PYTHON_FUNCTION_STOPS), format!("\n{}\ncheck({})\n", r.test, r.entry_point)),
        Language::Java => (strings(&JAVA_STOPS), format!("\n{}", r.test)),
    };
    Ok(Task {
        id: r.task_id,
        language,
        program_prefix: prompt.clone(),
        prompt,
        prompt_tail,
        stop,
        entry_point: r.entry_point,
        canonical_solution,
        program_suffix,
        close_java_braces: true,
    })
}

fn multipl_e(r: MultiplERecord, path: &str, line: usize) -> Result<Task> {
    let language = language_of(&r.language, path, line)?;
    let mut suffix = format!("\n{}", r.tests);
    if language == Language::Java {
        // The sandbox starts `Main.main`; MultiPL-E's class (`Problem`) has the tests' main.
        // Assertions are switched on before that class loads, as `java -ea` would; a failed
        // `assert` is re-thrown from Main.main, where the sandbox counts it as a failed test.
        let class = java_class_name(&r.prompt).ok_or_else(|| Error::DataFormat {
            path: path.into(),
            line,
            detail: format!("task {}: no `class NAME` in the Java prompt", r.name),
        })?;
        suffix += &format!(
            "\nclass Main {{\n    public static void main(String[] args) throws Throwable {{\n        \
             ClassLoader.getSystemClassLoader().setDefaultAssertionStatus(true);\n        \
             try {{\n            Class.forName(\"{class}\").getMethod(\"main\", String[].class).invoke(null, (Object) args);\n        \
             }} catch (java.lang.reflect.InvocationTargetException e) {{\n            \
             if (e.getCause() instanceof AssertionError) throw new AssertionError(e.getCause().toString());\n            \
             throw e.getCause();\n        }}\n    }}\n}}\n"
        );
    }
    let (prompt, _, prompt_tail) = trim_prompt(r.prompt, None);
    Ok(Task {
        id: r.name,
        language,
        program_prefix: prompt.clone(),
        prompt,
        prompt_tail,
        stop: if r.stop_tokens.is_empty() { strings(&PYTHON_FUNCTION_STOPS) } else { r.stop_tokens },
        entry_point: String::new(),
        canonical_solution: None,
        program_suffix: suffix,
        close_java_braces: false,
    })
}

/// The first `class NAME` of Java source.
fn java_class_name(source: &str) -> Option<String> {
    let mut words = source.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'));
    while let Some(w) = words.next() {
        if w == "class" {
            return words.find(|w| !w.is_empty()).map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_name_is_the_first_declared_class() {
        assert_eq!(java_class_name("import java.util.*;\nclass Problem {\n").as_deref(), Some("Problem"));
        assert_eq!(java_class_name("public class  Main{"), Some("Main".into()));
        assert_eq!(java_class_name("int x;"), None);
    }
}
