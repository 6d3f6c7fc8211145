//! Training you can watch, end to end through `flexlora train` on the real default model
//! (SmolLM2-135M, $FLEXLORA_MODEL_GGUF) and MBPP ($FLEXLORA_DATA): the validation loss in
//! `metrics.jsonl` at the right steps, `loss.svg` with its curves, progress lines on a stderr that
//! is not a terminal, the best validation in the summary, a resumed run without duplicated records
//! that still repeats an uninterrupted one bit for bit (validation takes nothing from training),
//! and `--eval-every` writing a pass@1 record. Without the model or the data the tests say so
//! loudly; under CI=true that is a failure.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn model() -> Option<PathBuf> {
    support::default_model("training watch")
}

/// `flexlora train` on MBPP with small, fast settings (a constant schedule: the learning rate of a
/// step does not depend on the run's length, so a run extended on resume equals a longer one).
/// stderr is a pipe, not a terminal.
fn train(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flexlora"));
    cmd.args(["train", "--device", "cpu", "--model"]).arg(model).arg("--data-dir").arg(data).arg("--out").arg(out);
    cmd.args(["--max-len", "64", "--batch-size", "1", "--lora-rank", "4", "--schedule", "constant", "--warmup-steps", "1"]);
    cmd.args(["--lora-dropout", "0.1", "--seed", "5"]); // dropout on: validation must switch it off without touching its seeds
    cmd.args(extra);
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "flexlora train {extra:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn records(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The records that have `field`, without their timings (which differ between runs).
fn kind(recs: &[Value], field: &str) -> Vec<Value> {
    recs.iter()
        .filter(|r| r.get(field).is_some())
        .map(|r| {
            let mut r = r.clone();
            r.as_object_mut().unwrap().remove("seconds");
            r
        })
        .collect()
}

/// A minimal XML well-formedness check for the SVG flexlora writes (no text nodes with markup, no
/// comments): every tag is closed in order, every attribute value quoted, one `<svg>` root.
/// Returns each element's name and attributes.
fn parse_svg(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut stack: Vec<String> = Vec::new();
    let mut elements = Vec::new();
    let mut rest = text.trim();
    assert!(rest.starts_with("<svg "), "the SVG does not start with <svg: {}", &rest[..rest.len().min(80)]);
    while let Some(open) = rest.find('<') {
        assert!(!stack.is_empty() || elements.is_empty(), "content after the root element: {rest:.80}");
        let close = rest[open..].find('>').map(|c| open + c).unwrap_or_else(|| panic!("unterminated tag: {:.80}", &rest[open..]));
        let tag = &rest[open + 1..close];
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name), "</{name}> closes the wrong element");
        } else {
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let (name, mut attrs_text) = body.split_once(' ').unwrap_or((body, ""));
            let mut attrs = Vec::new();
            loop {
                attrs_text = attrs_text.trim_start();
                if attrs_text.is_empty() {
                    break;
                }
                let (key, after) = attrs_text.split_once("=\"").unwrap_or_else(|| panic!("unquoted attribute in <{tag}>"));
                let (value, after) = after.split_once('"').unwrap_or_else(|| panic!("unterminated attribute in <{tag}>"));
                assert!(!key.contains(' ') && !value.contains('<'), "bad attribute {key}={value:?} in <{name}>");
                attrs.push((key.to_string(), value.to_string()));
                attrs_text = after;
            }
            elements.push((name.to_string(), attrs));
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        rest = &rest[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements: {stack:?}");
    assert!(rest.trim().is_empty(), "text after the root: {rest:?}");
    elements
}

/// The points of the polyline drawn in `color`, checked to lie on the page.
fn polyline(elements: &[(String, Vec<(String, String)>)], color: &str) -> Vec<(f64, f64)> {
    let attr = |e: &[(String, String)], k: &str| e.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    let lines: Vec<&Vec<(String, String)>> =
        elements.iter().filter(|(n, a)| n == "polyline" && attr(a, "stroke").as_deref() == Some(color)).map(|(_, a)| a).collect();
    assert_eq!(lines.len(), 1, "expected one {color} polyline, found {}", lines.len());
    let pts: Vec<(f64, f64)> = attr(lines[0], "points")
        .unwrap()
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    for &(x, y) in &pts {
        assert!((0.0..=720.0).contains(&x) && (0.0..=400.0).contains(&y), "{color}: point ({x}, {y}) is off the page");
    }
    pts
}

#[test]
fn validation_loss_is_logged_plotted_summarized_and_resumed_without_duplicates() {
    let Some(model) = model() else { return };
    let Some(data) = support::data_dir("mbpp.jsonl") else { return };
    let root = support::tmpdir("train-watch", "val");
    let watch = ["--val-every", "1", "--val-limit", "3", "--save-every", "1", "--log-every", "1"];

    // A: two steps, each validated.
    let a = root.join("a");
    let out = train(&model, &data, &a, &[&["--steps", "2"][..], &watch].concat());
    let recs = records(&a);
    let val = kind(&recs, "val_loss");
    assert_eq!(val.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2], "{val:?}");
    for v in &val {
        let l = v["val_loss"].as_f64().unwrap();
        assert!(l.is_finite() && l > 0.0 && l < 20.0, "{v}");
        assert_eq!(v["val_examples"], 3, "{v}");
        assert!(v["val_tokens"].as_u64().unwrap() > 0, "{v}");
    }
    // Each validation follows its step's record.
    let order: Vec<(u64, bool)> = recs.iter().map(|r| (r["step"].as_u64().unwrap(), r.get("val_loss").is_some())).collect();
    assert_eq!(order, [(1, false), (1, true), (2, false), (2, true)]);

    // Progress lines on a stderr that is not a terminal.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for step in 1..=2 {
        let line = stderr
            .lines()
            .find(|l| l.starts_with(&format!("step {step}/2 ")))
            .unwrap_or_else(|| panic!("no progress line for step {step}:\n{stderr}"));
        for part in ["loss ", "flex ", "tok/s", "elapsed ", "ETA "] {
            assert!(line.contains(part), "`{part}` missing from the progress line `{line}`");
        }
    }
    assert!(stderr.contains("validation: 3 examples of mbpp:validation every 1 steps"), "{stderr}");

    // The summary names the best validation.
    let best = val.iter().min_by(|x, y| x["val_loss"].as_f64().unwrap().total_cmp(&y["val_loss"].as_f64().unwrap())).unwrap();
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["best_val"]["step"], best["step"]);
    assert_eq!(summary["best_val"]["val_loss"], best["val_loss"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let want = format!("best validation loss {:.4} at step {} of 2", best["val_loss"].as_f64().unwrap(), best["step"]);
    assert!(stdout.contains(&want), "`{want}` missing from:\n{stdout}");

    // loss.svg: well formed, one curve per series, a point per step / validation.
    let svg = parse_svg(&std::fs::read_to_string(a.join("loss.svg")).unwrap());
    assert_eq!(svg[0].0, "svg");
    assert_eq!(polyline(&svg, "lightsteelblue").len(), 2, "training loss");
    assert_eq!(polyline(&svg, "darkorange").len(), 2, "its moving average");
    let v = polyline(&svg, "seagreen");
    assert_eq!(v.len(), 2, "validation loss");
    assert!(v[0].0 < v[1].0, "validation points out of step order: {v:?}");
    assert_eq!(polyline(&svg, "purple").len(), 2, "FLeX penalty");
    assert!(svg.iter().any(|(n, a)| n == "text" && a.iter().any(|(k, v)| k == "fill" && v == "purple")), "no right-axis labels");

    // B: one step without validation, a killed run's leftovers after its checkpoint (a step and
    // a validation past it, a line cut short), then resumed to two steps with validation.
    let b = root.join("b");
    train(&model, &data, &b, &["--steps", "1", "--save-every", "1", "--val-every", "0"]);
    assert!(kind(&records(&b), "val_loss").is_empty(), "--val-every 0 still validated");
    let mut text = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    text += r#"{"step":2,"loss":9.0,"lr":0.0002,"grad_norm":1.0,"flex_penalty":1.0,"tokens":64,"targets":9,"seconds":1.0}"#;
    text += "\n";
    text += r#"{"step":2,"val_loss":9.0,"val_tokens":5,"val_examples":3,"seconds":1.0}"#;
    text += "\n{\"step\":3,\"lo";
    std::fs::write(b.join("metrics.jsonl"), text).unwrap();
    let out = train(&model, &data, &b, &[&["--steps", "2", "--resume", b.to_str().unwrap()][..], &watch].concat());
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumed from"));
    let rb = records(&b);
    let steps: Vec<u64> = rb.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 2], "duplicated or stale records: {rb:?}");
    // Same updates as A although A validated at step 1 and B did not; same validation at step 2.
    assert_eq!(kind(&rb, "loss"), kind(&recs, "loss"), "validation changed the training trajectory, or resume is not exact");
    assert_eq!(kind(&rb, "val_loss"), val[1..], "the resumed run's validation differs");
    assert_eq!(
        std::fs::read(b.join("adapter/adapter_model.safetensors")).unwrap(),
        std::fs::read(a.join("adapter/adapter_model.safetensors")).unwrap(),
        "the resumed run's adapter differs from the uninterrupted one's"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn eval_every_writes_a_pass1_record() {
    let Some(model) = model() else { return };
    let Some(data) = support::data_dir("HumanEval.jsonl.gz") else { return };
    let root = support::tmpdir("train-watch", "eval");
    let out = root.join("run");
    let o = train(
        &model,
        &data,
        &out,
        &[
            "--steps",
            "2",
            "--val-every",
            "0",
            "--eval-every",
            "2",
            "--eval-task",
            "humaneval",
            "--eval-limit",
            "2",
            "--eval-max-new-tokens",
            "12",
        ],
    );
    let evals = kind(&records(&out), "pass1");
    assert_eq!(evals.len(), 1, "{evals:?}");
    let e = &evals[0];
    assert_eq!((e["step"].as_u64(), e["eval_task"].as_str(), e["tasks"].as_u64()), (Some(2), Some("humaneval"), Some(2)), "{e}");
    let (pass1, passed) = (e["pass1"].as_f64().unwrap(), e["passed"].as_f64().unwrap());
    assert_eq!(pass1, passed / 2.0, "{e}");
    // The check's own files: one greedy sample and one verdict per task.
    let results = std::fs::read_to_string(out.join("eval/step-0000002/results.jsonl")).unwrap();
    let verdicts: Vec<Value> = results.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(verdicts.iter().map(|v| v["task_id"].as_str().unwrap()).collect::<Vec<_>>(), ["HumanEval/0", "HumanEval/1"]);
    assert_eq!(verdicts.iter().filter(|v| v["outcome"] == "passed").count() as f64, passed);
    assert!(String::from_utf8_lossy(&o.stderr).contains("step 2: pass@1"), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(&root);
}
