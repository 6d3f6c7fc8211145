//! Evaluation without a model: `flexlora eval --samples FILE.jsonl` scores anyone's completions,
//! `--task file:PATH` reads task files in the human-eval, MBXP/mxeval and MultiPL-E formats, and
//! sharded scoring merges into the one-machine result. Runs the real sandbox (python3, javac).
#![cfg(target_os = "linux")]

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use flexlora::eval::task_file::{parse_task_file, TaskFormat};
use flexlora::eval::tasks;

fn flexlora(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flexlora")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn write_lines(path: &Path, lines: &[serde_json::Value]) {
    std::fs::write(path, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
}

fn summary(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

fn pass1(out: &Path) -> f64 {
    summary(out)["report"]["summary"]["pass_at"][0]["value"].as_f64().unwrap()
}

/// HumanEval's canonical solutions, written as human-eval samples (continuing the dataset's
/// prompt, as other tools write them), pass; empty completions fail; both mixed give 1/2.
#[test]
fn samples_file_scores_canonical_solutions_and_empty_ones() {
    let Some(data) = support::data_dir("HumanEval.jsonl.gz") else { return };
    let dir = support::tmpdir("evalfiles", "samples");
    let all = tasks::load_humaneval(&data).unwrap();
    let tasks = &all[..12];
    let canonical = |t: &tasks::Task| t.canonical_solution.clone().unwrap()[t.prompt_tail.len()..].to_string();
    let line = |t: &tasks::Task, c: &str| serde_json::json!({"task_id": t.id, "completion": c, "model": "any"});
    let d = data.to_str().unwrap();
    // `eval --task humaneval --limit 12 --samples FILE --out DIR`: (success, stdout, stderr).
    let score = |samples: &Path, out: &Path| {
        let (samples, out) = (samples.to_str().unwrap(), out.to_str().unwrap());
        flexlora(&["eval", "--task", "humaneval", "--limit", "12", "--samples", samples, "--data", d, "--out", out])
    };
    let run = |name: &str, lines: Vec<serde_json::Value>| -> PathBuf {
        let samples = dir.join(format!("{name}.jsonl"));
        write_lines(&samples, &lines);
        let out = dir.join(name);
        let (ok, stdout, stderr) = score(&samples, &out);
        assert!(ok, "{stdout}\n{stderr}");
        out
    };
    let good = run("canonical", tasks.iter().map(|t| line(t, &canonical(t))).collect());
    assert_eq!(pass1(&good), 1.0);
    assert_eq!(summary(&good)["report"]["passed"], 12);
    let empty = run("empty", tasks.iter().map(|t| line(t, "")).collect());
    assert_eq!(pass1(&empty), 0.0);
    let mixed = run("mixed", tasks.iter().flat_map(|t| [line(t, &canonical(t)), line(t, "    return None\n")]).collect());
    assert_eq!(pass1(&mixed), 0.5);
    assert_eq!(summary(&mixed)["report"]["samples"], 24);
    // The completions are recorded as given.
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(good.join("results.jsonl")).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["completion"].as_str().unwrap(), canonical(&tasks[0]));

    // A task without samples, samples of an unselected task, a damaged line: each a clear error.
    let cases: [(&str, Vec<serde_json::Value>, &str); 3] = [
        ("missing", tasks[1..].iter().map(|t| line(t, "")).collect(), "no samples for 1 of the 12 selected tasks (first: HumanEval/0)"),
        ("stray", all[..13].iter().map(|t| line(t, "")).collect(), "not among the selected tasks (first: HumanEval/12)"),
        ("damaged", vec![serde_json::json!({"task": "HumanEval/0"})], "line 1"),
    ];
    for (name, lines, expected) in cases {
        let samples = dir.join(format!("{name}.jsonl"));
        write_lines(&samples, &lines);
        let out = dir.join(name);
        let (ok, _, stderr) = score(&samples, &out);
        assert!(!ok && stderr.contains(expected) && stderr.contains(samples.to_str().unwrap()), "{name}: {stderr}");
        assert!(!out.join("results.jsonl").exists(), "{name}");
    }
    // Another run's directory is not overwritten.
    let (ok, _, stderr) = score(&dir.join("empty.jsonl"), &good);
    assert!(!ok && stderr.contains("another run"), "{stderr}");
    assert_eq!(pass1(&good), 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sharded scoring merged equals the one-machine scoring.
#[test]
fn sharded_samples_merge_to_the_one_machine_result() {
    let Some(data) = support::data_dir("HumanEval.jsonl.gz") else { return };
    let dir = support::tmpdir("evalfiles", "shards");
    let all = tasks::load_humaneval(&data).unwrap();
    // Even tasks solved, odd ones not: the pass pattern shows whether results stay in order.
    let lines: Vec<serde_json::Value> = all[..7]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let c = if i % 2 == 0 { t.canonical_solution.clone().unwrap()[t.prompt_tail.len()..].to_string() } else { String::new() };
            serde_json::json!({"task_id": t.id, "completion": c})
        })
        .collect();
    let samples = dir.join("s.jsonl");
    write_lines(&samples, &lines);
    let d = data.to_str().unwrap();
    let score = |out: &str, shard: Option<&str>| {
        let out = dir.join(out);
        let mut args = vec!["eval", "--task", "humaneval", "--limit", "7", "--samples", samples.to_str().unwrap(), "--data", d];
        args.extend(["--out", out.to_str().unwrap()]);
        if let Some(s) = shard {
            args.extend(["--shard", s]);
        }
        let (ok, stdout, stderr) =
            flexlora(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>().iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{stdout}\n{stderr}");
        out
    };
    let one = score("one", None);
    let shards: Vec<PathBuf> = ["2/2", "1/2"].iter().map(|s| score(&format!("shard{}", &s[..1]), Some(s))).collect();
    let merged = dir.join("merged");
    let (ok, stdout, stderr) =
        flexlora(&["eval", "merge", "--out", merged.to_str().unwrap(), shards[0].to_str().unwrap(), shards[1].to_str().unwrap()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("merged 2 shards: 7 tasks"), "{stdout}");
    let outcomes = |d: &Path| -> Vec<(String, String)> {
        std::fs::read_to_string(d.join("results.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| (v["task_id"].as_str().unwrap().to_string(), v["outcome"].as_str().unwrap().to_string()))
            .collect()
    };
    assert_eq!(outcomes(&merged), outcomes(&one));
    assert_eq!(outcomes(&one).iter().filter(|(_, o)| o == "passed").count(), 4);
    assert_eq!(summary(&merged)["report"]["summary"], summary(&one)["report"]["summary"]);
    assert_eq!(summary(&merged)["config"], summary(&one)["config"]);
    // Merging into a directory with files in it is refused.
    let (ok, _, stderr) =
        flexlora(&["eval", "merge", "--out", one.to_str().unwrap(), shards[0].to_str().unwrap(), shards[1].to_str().unwrap()]);
    assert!(!ok && stderr.contains("not empty"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

const HUMAN_EVAL: &str = r#"{"task_id": "t/add", "prompt": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n", "canonical_solution": "    return a + b\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}"#;
const MBXP: &str = r#"{"task_id": "MBJP/x", "language": "java", "description": "Sum.", "prompt": "class Add {\n    public static int add(int a, int b) {\n", "canonical_solution": "        return a + b;\n    }\n}\n", "test": "class Main {\n    public static void main(String[] args) throws Exception {\n        if (Add.add(2, 3) != 5) throw new RuntimeException(\"wrong\");\n    }\n}\n", "entry_point": "add"}
{"task_id": "MBPP/x", "language": "python", "description": "Sum.", "prompt": "def add(a, b):\n", "canonical_solution": "    return a + b\n", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n", "entry_point": "add"}"#;
const MULTIPL_E: &str = r#"{"name": "HumanEval_53_add", "language": "java", "prompt": "import java.util.*;\nclass Problem {\n    public static long add(long x, long y) {\n", "doctests": "transform", "original": "x", "prompt_terminology": "reworded", "tests": "    }\n    public static void main(String[] args) {\n    assert(add((2l), (3l)) == (5l));\n    }\n\n}\n", "stop_tokens": ["\n    }\n"]}
{"name": "HumanEval_53_add_py", "language": "py", "prompt": "def add(x: int, y: int) -> int:\n", "doctests": "transform", "original": "x", "prompt_terminology": "reworded", "tests": "def check(candidate):\n    assert candidate(2, 3) == 5\n\ndef test_check():\n    check(add)\n\ntest_check()\n", "stop_tokens": ["\ndef", "\n#"]}"#;

/// Each task-file format is detected and named, and its programs judge right and wrong
/// completions correctly. The MultiPL-E Java test uses `assert`, which passes vacuously unless
/// assertions are on: the wrong completion failing shows they are.
#[test]
fn task_files_in_each_format_judge_right_and_wrong_completions() {
    let dir = support::tmpdir("evalfiles", "formats");
    let cases: [(&str, &str, TaskFormat, Vec<(&str, &str, &str)>); 3] = [
        ("he.jsonl", HUMAN_EVAL, TaskFormat::HumanEval, vec![("t/add", "    return a + b\n", "    return a - b\n")]),
        (
            "mbxp.jsonl",
            MBXP,
            TaskFormat::Mbxp,
            vec![
                ("MBJP/x", "        return a + b;\n    }\n}\n", "        return a - b;"),
                ("MBPP/x", "    return a + b\n", "    return a * b\n"),
            ],
        ),
        (
            "multiple.jsonl",
            MULTIPL_E,
            TaskFormat::MultiplE,
            vec![
                ("HumanEval_53_add", "        return x + y;", "        return x - y;"),
                ("HumanEval_53_add_py", "    return x + y\n", "    return x - y\n"),
            ],
        ),
    ];
    for (file, text, format, samples) in cases {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let (found, parsed) = parse_task_file(text, file).unwrap();
        assert_eq!(found, format, "{file}");
        assert_eq!(parsed.len(), samples.len(), "{file}");
        let lines: Vec<serde_json::Value> = samples
            .iter()
            .flat_map(|(id, right, wrong)| {
                [serde_json::json!({"task_id": id, "completion": right}), serde_json::json!({"task_id": id, "completion": wrong})]
            })
            .collect();
        let samples_path = dir.join(format!("{file}.samples.jsonl"));
        write_lines(&samples_path, &lines);
        let out = dir.join(format!("{file}.out"));
        let task = format!("file:{}", path.display());
        let (ok, stdout, stderr) =
            flexlora(&["eval", "--task", &task, "--samples", samples_path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(ok, "{file}: {stdout}\n{stderr}");
        let results: Vec<serde_json::Value> =
            std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let verdicts: Vec<&str> = results.iter().map(|r| r["outcome"].as_str().unwrap()).collect();
        let expected: Vec<&str> = samples.iter().flat_map(|_| ["passed", "failed_assertion"]).collect();
        assert_eq!(verdicts, expected, "{file}: {results:#?}");
        assert_eq!(summary(&out)["config"]["task_file"]["format"], format.name(), "{file}");
    }

    // Formats it cannot read, and languages the sandbox cannot run, are named.
    let err = parse_task_file(r#"{"id": 1, "question": "?"}"#, "q.jsonl").unwrap_err().to_string();
    assert!(err.contains("q.jsonl") && err.contains("unknown task format") && err.contains("MultiPL-E"), "{err}");
    let cpp = MULTIPL_E.lines().next().unwrap().replace("\"java\"", "\"cpp\"");
    let err = parse_task_file(&cpp, "cpp.jsonl").unwrap_err().to_string();
    assert!(err.contains("cpp.jsonl") && err.contains("line 1") && err.contains("`cpp`"), "{err}");
    let dup = format!("{HUMAN_EVAL}\n{HUMAN_EVAL}\n");
    assert!(parse_task_file(&dup, "d.jsonl").unwrap_err().to_string().contains("appears twice"));
    let (ok, _, stderr) =
        flexlora(&["eval", "--task", "file:/nonexistent/tasks.jsonl", "--samples", "1", "--out", dir.join("x").to_str().unwrap()]);
    assert!(!ok && stderr.contains("/nonexistent/tasks.jsonl"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
