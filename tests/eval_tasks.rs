//! The datasets load, their prompts have the documented shape, and their canonical solutions pass
//! in the sandbox while wrong ones fail. Reads the data directory from FLEXLORA_DATA (default
//! `../shared/data` beside the crate); a missing file fails under CI=true and is skipped loudly
//! otherwise.
#![cfg(target_os = "linux")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use flexlora::eval::passk::TaskCount;
use flexlora::eval::sandbox::{Outcome, RunResult, Sandbox, SandboxConfig};
use flexlora::eval::tasks::{self, MbppPrompt, MbppSplit, Program, Task};
use flexlora::eval::{counts, run_samples};

/// MBPP tasks whose canonical solution fails its own test_list, with the reason found by reading
/// them. The test asserts that exactly these fail, so a changed dataset or harness shows up.
/// Empty: all 974 pass (also checked outside the harness with PYTHONHASHSEED 0, 1, 2, 3 and
/// random, so no solution depends on set order). challenge_test_list is not run.
const KNOWN_BAD_MBPP: &[(u32, &str)] = &[];

const EXITS: &str = "the canonical solution calls System.exit(0) on a test input, so the tests never finish \
     (a harness that took exit status 0 as a pass would count this wrong solution as correct)";
const RETURNS_INT_AS_DOUBLE: &str = "does not compile: returns an int literal or variable where the signature says Double";

/// MBJP tasks (of the 874 with a canonical solution) whose canonical solution fails, and why.
const KNOWN_BAD_MBJP: &[(&str, &str)] = &[
    ("MBJP/106", EXITS),
    ("MBJP/180", "does not compile: Math.sin/cos applied to the Number parameters"),
    ("MBJP/198", RETURNS_INT_AS_DOUBLE),
    ("MBJP/214", RETURNS_INT_AS_DOUBLE),
    ("MBJP/300", RETURNS_INT_AS_DOUBLE),
    ("MBJP/325", EXITS),
    ("MBJP/397", RETURNS_INT_AS_DOUBLE),
    ("MBJP/432", "does not compile: assigns the Number result of medianTrapezium to a double"),
    ("MBJP/519", RETURNS_INT_AS_DOUBLE),
    ("MBJP/535", RETURNS_INT_AS_DOUBLE),
    ("MBJP/553", EXITS),
    ("MBJP/579", EXITS),
    ("MBJP/622", "does not compile: returns an Integer list element where the signature says Double"),
    ("MBJP/738", RETURNS_INT_AS_DOUBLE),
    ("MBJP/835", EXITS),
    ("MBJP/871", EXITS),
    ("MBJP/904", "does not compile: applies % to the Number parameter"),
];

fn data_dir(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("FLEXLORA_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join(file).is_file() {
        return Some(dir);
    }
    let msg = format!("dataset file {} is missing; set FLEXLORA_DATA to the folder with the datasets", dir.join(file).display());
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("\n!!! SKIPPED: {msg}\n");
    None
}

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig::default()).expect("sandbox")
}

/// Runs the programs and returns the failures as id -> result, with the time taken.
fn failures(sandbox: &Sandbox, tasks: &[&Task], programs: Vec<Program>) -> BTreeMap<String, RunResult> {
    let started = Instant::now();
    let results = sandbox.run_all(&programs);
    eprintln!("ran {} programs in {:.1} s", programs.len(), started.elapsed().as_secs_f64());
    tasks.iter().zip(results).filter(|(_, r)| r.outcome != Outcome::Passed).map(|(t, r)| (t.id.clone(), r)).collect()
}

fn report(failed: &BTreeMap<String, RunResult>) -> String {
    failed.iter().map(|(id, r)| format!("{id}: {:?}: {}\n", r.outcome, r.reason)).collect()
}

#[test]
fn mbpp_canonical_solutions_pass() {
    let Some(dir) = data_dir("mbpp.jsonl") else { return };
    let all = tasks::load_mbpp(&dir, MbppSplit::All, MbppPrompt::FewShot).expect("mbpp");
    assert_eq!(all.len(), 974);
    let tasks: Vec<&Task> = all.iter().collect();
    let programs = tasks.iter().map(|t| t.program(t.canonical_solution.as_deref().unwrap_or(""))).collect();
    let failed = failures(&sandbox(), &tasks, programs);
    let known: Vec<String> = KNOWN_BAD_MBPP.iter().map(|(id, _)| format!("MBPP/{id}")).collect();
    let found: Vec<String> = failed.keys().cloned().collect();
    assert_eq!(found, known, "canonical MBPP solutions that fail:\n{}", report(&failed));
}

#[test]
fn mbpp_wrong_solutions_fail() {
    let Some(dir) = data_dir("mbpp.jsonl") else { return };
    let all = tasks::load_mbpp(&dir, MbppSplit::Test, MbppPrompt::FewShot).expect("mbpp");
    assert_eq!(all.len(), 500);
    let tasks: Vec<&Task> = all.iter().take(40).collect();
    // The right code, then the entry point replaced by a function that returns None.
    let programs: Vec<Program> = tasks
        .iter()
        .map(|t| {
            t.program(&format!("{}\n{} = lambda *args, **kwargs: None\n", t.canonical_solution.as_deref().unwrap_or(""), t.entry_point))
        })
        .collect();
    let failed = failures(&sandbox(), &tasks, programs);
    assert_eq!(
        failed.len(),
        tasks.len(),
        "wrong solutions that passed: {:?}",
        tasks.iter().filter(|t| !failed.contains_key(&t.id)).map(|t| &t.id).collect::<Vec<_>>()
    );
    let asserted = failed.values().filter(|r| r.outcome == Outcome::FailedAssertion).count();
    // A None result fails an `==` assert; a few tests do arithmetic on it first (TypeError).
    assert!(asserted * 10 >= tasks.len() * 8, "only {asserted} of {} failed an assertion:\n{}", tasks.len(), report(&failed));
}

#[test]
fn humaneval_canonical_solutions_pass() {
    let Some(dir) = data_dir("HumanEval.jsonl.gz") else { return };
    let all = tasks::load_humaneval(&dir).expect("humaneval");
    assert_eq!(all.len(), 164);
    let tasks: Vec<&Task> = all.iter().collect();
    let programs = tasks.iter().map(|t| t.program(t.canonical_solution.as_deref().unwrap_or(""))).collect();
    let failed = failures(&sandbox(), &tasks, programs);
    assert!(failed.is_empty(), "canonical HumanEval solutions that fail:\n{}", report(&failed));
}

/// Every `step`-th MBJP task that has a canonical solution.
fn mbjp_canonical(step: usize) {
    let Some(dir) = data_dir("mbjp_release_v1.2.jsonl") else { return };
    let all = tasks::load_mbjp(&dir).expect("mbjp");
    assert_eq!(all.len(), 966);
    let solved: Vec<&Task> = all.iter().filter(|t| t.canonical_solution.is_some()).collect();
    assert_eq!(solved.len(), 874);
    let tasks: Vec<&Task> = solved.into_iter().step_by(step).collect();
    let programs = tasks.iter().map(|t| t.program(t.canonical_solution.as_deref().unwrap_or(""))).collect();
    let failed = failures(&sandbox(), &tasks, programs);
    let known: Vec<String> = KNOWN_BAD_MBJP.iter().map(|(id, _)| id.to_string()).filter(|id| tasks.iter().any(|t| t.id == *id)).collect();
    let found: Vec<String> = failed.keys().cloned().collect();
    assert_eq!(found, known, "canonical MBJP solutions that fail:\n{}", report(&failed));
}

/// A fixed subset (every 8th solved task, 110 of 874) keeps this within the CI budget.
#[test]
fn mbjp_canonical_solutions_pass_subset() {
    mbjp_canonical(8);
}

/// All 874: about 874 compiles at ~1 s of CPU each. Run with `cargo test --test eval_tasks -- --ignored`.
#[test]
#[ignore]
fn mbjp_canonical_solutions_pass_all() {
    mbjp_canonical(1);
}

/// Every MBJP canonical solution cut at the Java stop sequence, then closed by the harness, still
/// passes: the stop ends the entry method and `Task::program` closes method and class.
#[test]
fn java_stop_and_brace_closing() {
    let Some(dir) = data_dir("mbjp_release_v1.2.jsonl") else { return };
    let all = tasks::load_mbjp(&dir).expect("mbjp");
    let tasks: Vec<&Task> = all.iter().filter(|t| t.canonical_solution.is_some()).take(6).collect();
    let programs: Vec<Program> = tasks
        .iter()
        .map(|t| {
            let full = t.canonical_solution.as_deref().unwrap_or("");
            let cut = tasks::truncate_at_stop(full, &t.stop);
            assert!(cut.len() < full.len() && !cut.contains("\n    }\n"), "{}: stop not found in the canonical solution", t.id);
            // A model that ends its lines with a blank (as MBPP's solutions do) stops there too.
            let spaced = full.replace('\n', " \n");
            let spaced_cut = tasks::truncate_at_stop(&spaced, &t.stop).replace(" \n", "\n");
            assert_eq!(spaced_cut.trim_end_matches(' '), cut.trim_end_matches(' '), "{}", t.id);
            t.program(cut)
        })
        .collect();
    let failed = failures(&sandbox(), &tasks, programs);
    assert!(failed.is_empty(), "{}", report(&failed));
}

#[test]
fn prompts_stops_and_entry_points() {
    let Some(dir) = data_dir("mbpp.jsonl") else { return };
    let few = tasks::load_mbpp(&dir, MbppSplit::Test, MbppPrompt::FewShot).expect("mbpp");
    let t = &few[0];
    assert_eq!(t.id, "MBPP/11");
    assert!(t
        .prompt
        .starts_with("You are an expert Python programmer, and here is your task: Write a function to find the similar elements"));
    assert_eq!(t.prompt.matches("[DONE]").count(), 3);
    assert_eq!(t.prompt.matches("You are an expert Python programmer").count(), 4);
    assert!(t.prompt.ends_with("assert remove_Occ(\"PHP\",\"P\") == \"H\"\n[BEGIN]\n"), "{}", t.prompt);
    assert!(!t.prompt.contains('\r'));
    assert_eq!(tasks::truncate_at_stop("def f():\n    return 1\n[DONE]\nYou are", &t.stop), "def f():\n    return 1\n");

    let flex = tasks::load_mbpp(&dir, MbppSplit::Test, MbppPrompt::Flex).expect("mbpp");
    let expected = "Write a python function to remove first and last occurrence of a given character from the string.\n\
        # assert remove_Occ(\"hello\",\"l\") == \"heo\"\n\
        # assert remove_Occ(\"abcda\",\"a\") == \"bcd\"\n\
        # assert remove_Occ(\"PHP\",\"P\") == \"H\"\n";
    assert_eq!(flex[0].prompt, expected);
    let helper = "def f(x):\n    return g(x)\n\ndef g(x):\n    return x\n\nassert f(1) == 1\n";
    assert_eq!(tasks::truncate_at_stop(helper, &flex[0].stop), "def f(x):\n    return g(x)\n\ndef g(x):\n    return x\n");

    let splits = [(MbppSplit::FewShot, 10), (MbppSplit::Test, 500), (MbppSplit::Validation, 90), (MbppSplit::Train, 374)];
    for (split, n) in splits {
        assert_eq!(tasks::load_mbpp(&dir, split, MbppPrompt::Flex).expect("mbpp").len(), n, "{split:?}");
    }
    let all = tasks::load_mbpp(&dir, MbppSplit::All, MbppPrompt::Flex).expect("mbpp");
    for t in &all {
        let code = t.canonical_solution.as_deref().unwrap_or("");
        assert!(
            code.contains(&format!("def {}", t.entry_point)) || code.contains(&format!("class {}", t.entry_point)),
            "{}: {}",
            t.id,
            t.entry_point
        );
    }

    if let Some(dir) = data_dir("HumanEval.jsonl.gz") {
        let he = tasks::load_humaneval(&dir).expect("humaneval");
        assert_eq!(tasks::truncate_at_stop("    return 1\n\ndef extra():\n    pass\n", &he[0].stop), "    return 1\n");
        assert!(he[0].program("\n    return True\n").source.ends_with("check(has_close_elements)\n"));
        // The model continues the prompt without its trailing newline; the canonical solution
        // carries it, so the reference program is the file's prompt + solution, byte for byte.
        assert!(he.iter().all(|t| !t.prompt.ends_with(char::is_whitespace)));
        let reference = he[0].program(he[0].canonical_solution.as_deref().unwrap()).source;
        assert!(reference.contains("    \"\"\"\n    for idx, elem in enumerate(numbers):"), "{reference}");
    }
    if let Some(dir) = data_dir("humaneval_java_v1.1.jsonl") {
        let hj = tasks::load_humaneval_java(&dir).expect("humaneval-java");
        assert_eq!(hj.len(), 161);
        assert!(hj.iter().all(|t| t.canonical_solution.is_none() && t.prompt.ends_with('{') && t.program_suffix.contains("class Main")));
    }
}

#[test]
fn missing_file_names_the_file_and_the_setting() {
    let err = tasks::load_mbpp(Path::new("/nonexistent-flexlora-data"), MbppSplit::Test, MbppPrompt::FewShot).expect_err("missing file");
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent-flexlora-data/mbpp.jsonl") && msg.contains("FLEXLORA_DATA"), "{msg}");
    let err = tasks::load_humaneval(Path::new("/nonexistent-flexlora-data")).expect_err("missing file").to_string();
    assert!(err.contains("HumanEval.jsonl.gz"), "{err}");
}

/// The sample runner keeps task and sample order, and its records serialize to one JSON line each.
#[test]
fn run_samples_records() {
    let Some(dir) = data_dir("HumanEval.jsonl.gz") else { return };
    let all = tasks::load_humaneval(&dir).expect("humaneval");
    let tasks = &all[..2];
    let completions: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| vec![t.canonical_solution.clone().unwrap_or_default(), "\n    return None\n".into(), "\n    exit(0)\n".into()])
        .collect();
    let results = run_samples(&sandbox(), tasks, &completions).expect("run");
    let got: Vec<(String, usize, bool)> = results.iter().map(|r| (r.task_id.clone(), r.sample, r.passed())).collect();
    let want = ["HumanEval/0", "HumanEval/1"].iter().flat_map(|id| (0..3).map(move |s| (id.to_string(), s, s == 0))).collect::<Vec<_>>();
    assert_eq!(got, want);
    assert_eq!(results[1].outcome, Outcome::FailedAssertion);
    assert_eq!(results[2].outcome, Outcome::RuntimeError);
    let line = serde_json::to_string(&results[1]).expect("json");
    assert!(
        line.starts_with(
            r#"{"task_id":"HumanEval/0","sample":1,"completion":"\n    return None\n","outcome":"failed_assertion","reason":"#
        ),
        "{line}"
    );
    let c = counts(&results);
    assert_eq!(c, vec![("HumanEval/0".to_string(), TaskCount { n: 3, c: 1 }), ("HumanEval/1".to_string(), TaskCount { n: 3, c: 1 })]);
    assert!(run_samples(&sandbox(), tasks, &completions[..1]).is_err(), "one completion list per task");
}
