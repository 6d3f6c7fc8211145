//! The experiment spec (`SPEC.toml`): arms x seeds, a training config per arm, evaluation sets, a
//! reference arm. Read with unknown keys refused, then validated once into a `Spec` whose arms
//! carry complete `TrainConfig`s, so the runner never meets a half-checked setting.
//!
//! Layout (every key below; anything else is an error naming the key):
//!
//! ```toml
//! model = "models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"   # relative to the working directory
//! out = "runs/main-job"      # default: the spec's own directory
//! data_dir = "../shared/data" # default: FLEXLORA_DATA, else ../shared/data
//! weights = "auto"           # frozen base: auto (a GGUF's own blocks), nf4 or f32
//! reference = "base"         # the arm every other arm is compared with
//! seeds = [0, 1, 2]          # default seeds of trained arms (an untrained arm runs the first)
//! batch = 8                  # sequences decoded together during evaluation (speed only)
//! bootstrap = 10000          # bootstrap replicates, and their RNG seed
//! bootstrap_seed = 0
//!
//! [train]                    # training settings shared by all arms: any `flexlora train --config` key
//! steps = 60                 #   except model, out, seed and data_dir, which the runner sets
//!
//! [[eval]]
//! name = "mbjp-test"
//! task = "mbjp"              # humaneval, mbpp (test split), mbjp, humaneval-java
//! ids = "11-510"             # task numbers (MBJP: its MBPP twin's); refused if it overlaps training
//! role = "test"              # or "validation": only validation sets may choose a setting
//! limit = 100                # first N tasks after the id filter
//! max_new_tokens = 384       # also samples, temperature, top_p, seed, flex_template
//!
//! [[arm]]
//! name = "base"
//! kind = "base"              # untrained; "train" (default); "published" (see below)
//! [[arm]]
//! name = "flex"
//! train = { flex = { mode = "train", lambda = 1e-4 } }   # merged over [train]
//! seeds = [0, 1, 2]          # default: the top-level seeds
//! evals = ["mbjp-test"]      # default: every eval set
//! select = { arms = ["lam-1e-5", "lam-1e-4"], eval = "mbjp-val" }  # take flex.lambda of the best
//! [[arm]]
//! name = "flex-published"
//! kind = "published"         # FLeX as the paper's code ran it: the penalty is logged, no gradient,
//! same_as = "lora"           # so training is that arm's exactly; its runs are reused, not redone
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::data::text::Source;
use crate::error::{Error, Result};
use crate::eval::job::{EvalConfig, TaskSet, PROTOCOL};
use crate::eval::tasks::{IdRange, MbppSplit};
use crate::model::Weights;
use crate::train::config::{FlexMode, TrainConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    model: PathBuf,
    out: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default = "default_weights")]
    weights: Weights,
    reference: String,
    #[serde(default = "default_seeds")]
    seeds: Vec<u64>,
    #[serde(default = "default_batch")]
    batch: usize,
    #[serde(default = "default_bootstrap")]
    bootstrap: usize,
    #[serde(default)]
    bootstrap_seed: u64,
    #[serde(default)]
    train: toml::Table,
    #[serde(default, rename = "eval")]
    evals: Vec<EvalFile>,
    #[serde(default, rename = "arm")]
    arms: Vec<ArmFile>,
}

fn default_weights() -> Weights {
    Weights::Auto
}
fn default_seeds() -> Vec<u64> {
    vec![0]
}
fn default_batch() -> usize {
    8
}
fn default_bootstrap() -> usize {
    10_000
}
fn default_samples() -> usize {
    1
}
fn default_top_p() -> f32 {
    0.95
}
fn default_max_new_tokens() -> usize {
    384
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalFile {
    name: String,
    task: TaskSet,
    ids: Option<String>,
    #[serde(default)]
    role: Role,
    limit: Option<usize>,
    #[serde(default = "default_samples")]
    samples: usize,
    #[serde(default)]
    temperature: f32,
    #[serde(default = "default_top_p")]
    top_p: f32,
    #[serde(default = "default_max_new_tokens")]
    max_new_tokens: usize,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    flex_template: bool,
}

/// What an evaluation set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reported as the result; never used to choose anything.
    #[default]
    Test,
    /// Used to choose settings (`select`); disjoint from every test set.
    Validation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArmKind {
    /// The untouched model.
    Base,
    /// LoRA training, then evaluation of the adapter.
    #[default]
    Train,
    /// FLeX in `published` mode: identical to `same_as` by construction; that arm's runs are reused.
    Published,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArmFile {
    name: String,
    #[serde(default)]
    kind: ArmKind,
    #[serde(default)]
    train: toml::Table,
    seeds: Option<Vec<u64>>,
    evals: Option<Vec<String>>,
    same_as: Option<String>,
    select: Option<SelectFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectFile {
    arms: Vec<String>,
    eval: String,
}

/// One evaluation set, validated.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub name: String,
    pub role: Role,
    /// Everything but `model`, which the runner fills in per run.
    pub config: EvalConfig,
}

/// Choose `flex.lambda` from the candidate arm with the best pooled pass@1 on a validation set
/// (ties: the first listed).
#[derive(Debug, Clone)]
pub struct Select {
    pub arms: Vec<String>,
    pub eval: String,
}

#[derive(Debug, Clone)]
pub struct Arm {
    pub name: String,
    pub kind: ArmKind,
    /// Complete training settings (model, data_dir, weights and seed 0 filled in; the runner sets
    /// `seed` and `out` per run). None for `base`.
    pub train: Option<TrainConfig>,
    pub seeds: Vec<u64>,
    /// Names of the evaluation sets this arm runs.
    pub evals: Vec<String>,
    pub same_as: Option<String>,
    pub select: Option<Select>,
}

/// A validated experiment.
#[derive(Debug, Clone)]
pub struct Spec {
    pub file: PathBuf,
    pub model: PathBuf,
    pub out: PathBuf,
    pub data_dir: PathBuf,
    pub weights: Weights,
    pub reference: String,
    pub batch: usize,
    pub bootstrap: usize,
    pub bootstrap_seed: u64,
    pub evals: Vec<EvalSet>,
    pub arms: Vec<Arm>,
}

impl Spec {
    pub fn arm(&self, name: &str) -> Option<&Arm> {
        self.arms.iter().find(|a| a.name == name)
    }

    pub fn eval(&self, name: &str) -> Option<&EvalSet> {
        self.evals.iter().find(|e| e.name == name)
    }
}

/// Reads and validates a spec file.
pub fn load(path: &Path) -> Result<Spec> {
    let text = std::fs::read_to_string(path).map_err(crate::error::io_at(path, "read"))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, path, &base)
}

/// Parses and validates spec text; `file` names it in errors, `spec_dir` is the default `out`.
pub fn parse(text: &str, file: &Path, spec_dir: &Path) -> Result<Spec> {
    let shown = file.display().to_string();
    let err = |detail: String| Error::Config { file: shown.clone(), detail };
    let f: SpecFile = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;

    if f.seeds.is_empty() {
        return Err(err("`seeds` is empty; give at least one seed".into()));
    }
    if f.batch == 0 {
        return Err(err("`batch` must be at least 1".into()));
    }
    if f.bootstrap < 100 {
        return Err(err(format!("`bootstrap` = {}: use at least 100 replicates (10000 is usual)", f.bootstrap)));
    }
    check_train_table(&f.train, "train").map_err(err)?;

    // Evaluation sets.
    let mut evals: Vec<EvalSet> = Vec::new();
    for e in &f.evals {
        let key = format!("eval `{}`", e.name);
        check_name(&e.name, "eval").map_err(err)?;
        if evals.iter().any(|x| x.name == e.name) {
            return Err(err(format!("two [[eval]] sets are named `{}`", e.name)));
        }
        if e.samples == 0 {
            return Err(err(format!("{key}: `samples` must be at least 1")));
        }
        if e.task == TaskSet::File {
            return Err(err(format!("{key}: task `file` is not supported in experiments; use humaneval, mbpp, mbjp or humaneval-java")));
        }
        let ids = e.ids.as_deref().map(IdRange::parse).transpose().map_err(|x| err(format!("{key}: `ids`: {x}")))?;
        evals.push(EvalSet {
            name: e.name.clone(),
            role: e.role,
            config: EvalConfig {
                model: String::new(),
                task: e.task,
                limit: e.limit,
                ids,
                samples: e.samples,
                temperature: e.temperature,
                top_p: e.top_p,
                max_new_tokens: e.max_new_tokens,
                seed: e.seed,
                flex_template: e.flex_template,
                protocol: PROTOCOL,
                provenance: None, // set by the runner, which knows the model and adapter files
                task_file: None,
                shard: None,
            },
        });
    }
    if evals.is_empty() {
        return Err(err("no [[eval]] set: give at least one evaluation set".into()));
    }
    // Arms.
    if f.arms.is_empty() {
        return Err(err("no [[arm]]: give at least the reference arm and one other".into()));
    }
    let names: Vec<&str> = f.arms.iter().map(|a| a.name.as_str()).collect();
    let data_dir = crate::eval::job::data_dir(f.data_dir.clone());
    let mut arms: Vec<Arm> = Vec::new();
    for (i, a) in f.arms.iter().enumerate() {
        let key = format!("arm `{}`", a.name);
        check_name(&a.name, "arm").map_err(err)?;
        if names[..i].contains(&a.name.as_str()) {
            return Err(err(format!("two [[arm]]s are named `{}`", a.name)));
        }
        let earlier = &names[..i];
        let need_earlier = |what: &str, other: &str| -> Result<()> {
            if earlier.contains(&other) {
                Ok(())
            } else if names.contains(&other) {
                Err(err(format!("{key}: {what} = `{other}` names a later arm; list `{other}` first")))
            } else {
                Err(err(format!("{key}: {what} = `{other}`: no arm has that name (arms: {})", names.join(", "))))
            }
        };
        let evals_of = match &a.evals {
            Some(list) => {
                for n in list {
                    if !evals.iter().any(|e| &e.name == n) {
                        return Err(err(format!(
                            "{key}: evals: no eval set named `{n}` (sets: {})",
                            evals.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
                        )));
                    }
                }
                list.clone()
            }
            None => evals.iter().map(|e| e.name.clone()).collect(),
        };
        let seeds = a.seeds.clone().unwrap_or_else(|| if a.kind == ArmKind::Base { vec![f.seeds[0]] } else { f.seeds.clone() });
        if seeds.is_empty() || seeds.iter().collect::<BTreeSet<_>>().len() != seeds.len() {
            return Err(err(format!("{key}: `seeds` must be non-empty and distinct")));
        }
        let train = match a.kind {
            ArmKind::Base => {
                if !a.train.is_empty() || a.same_as.is_some() || a.select.is_some() {
                    return Err(err(format!("{key}: kind = \"base\" is never trained; remove its train, same_as and select")));
                }
                None
            }
            ArmKind::Train | ArmKind::Published => {
                check_train_table(&a.train, &format!("arm `{}`.train", a.name)).map_err(err)?;
                let mut table = f.train.clone();
                merge(&mut table, &a.train);
                let mut cfg: TrainConfig = toml::Value::Table(table)
                    .try_into()
                    .map_err(|e: toml::de::Error| err(format!("{key}: training settings: {}", e.to_string().trim_end())))?;
                cfg.model = f.model.clone();
                cfg.data_dir = Some(data_dir.clone());
                cfg.weights = f.weights;
                cfg.validate().map_err(|e| err(format!("{key}: {e}")))?;
                Some(cfg)
            }
        };
        if a.kind != ArmKind::Published && a.same_as.is_some() {
            return Err(err(format!("{key}: `same_as` is for kind = \"published\" arms only")));
        }
        if a.kind == ArmKind::Published {
            let Some(other) = &a.same_as else {
                return Err(err(format!("{key}: kind = \"published\" needs same_as = \"<the plain LoRA arm>\"")));
            };
            need_earlier("same_as", other)?;
            let o = arms.iter().find(|x| &x.name == other).expect("checked above");
            let (Some(mine), Some(theirs)) = (&train, &o.train) else {
                return Err(err(format!("{key}: same_as = `{other}` is not a trained arm")));
            };
            published_identical(mine, theirs).map_err(|d| err(format!("{key}: not identical to `{other}` by construction: {d}")))?;
            if a.select.is_some() {
                return Err(err(format!("{key}: a published arm cannot select")));
            }
        }
        let select = match &a.select {
            None => None,
            Some(s) => {
                if a.kind != ArmKind::Train {
                    return Err(err(format!("{key}: select is for trained arms")));
                }
                if s.arms.is_empty() {
                    return Err(err(format!("{key}: select.arms is empty")));
                }
                for c in &s.arms {
                    need_earlier("select.arms", c)?;
                    if !arms.iter().any(|x| &x.name == c && x.kind == ArmKind::Train && x.evals.contains(&s.eval)) {
                        return Err(err(format!("{key}: select.arms: `{c}` must be a trained arm evaluated on `{}`", s.eval)));
                    }
                }
                match evals.iter().find(|e| e.name == s.eval) {
                    None => return Err(err(format!("{key}: select.eval: no eval set named `{}`", s.eval))),
                    Some(e) if e.role != Role::Validation => {
                        return Err(err(format!(
                            "{key}: select.eval = `{}` is a test set; settings are chosen on role = \"validation\" sets only",
                            s.eval
                        )))
                    }
                    Some(_) => {}
                }
                Some(Select { arms: s.arms.clone(), eval: s.eval.clone() })
            }
        };
        // The honest protocol: no evaluated task may be a training task or its Java twin.
        if let Some(cfg) = &train {
            if let Some(trained) = training_range(cfg) {
                for e in evals.iter().filter(|e| evals_of.contains(&e.name)) {
                    if let Some(r) = mbpp_range(&e.config) {
                        if r.overlaps(&trained) {
                            return Err(err(format!(
                                "eval `{}` ({} tasks numbered {r}) overlaps the training data of arm `{}` (`{}`: MBPP tasks {trained}); \
                                 set its ids to \"11-510\" (test split) or \"511-600\" (validation split)",
                                e.name,
                                task_name(e.config.task),
                                a.name,
                                cfg.data
                            )));
                        }
                    }
                }
            }
        }
        arms.push(Arm { name: a.name.clone(), kind: a.kind, train, seeds, evals: evals_of, same_as: a.same_as.clone(), select });
    }
    // Test sets must not share MBPP task numbers with validation sets (MBJP twins included).
    for t in evals.iter().filter(|e| e.role == Role::Test) {
        for v in evals.iter().filter(|e| e.role == Role::Validation) {
            if let (Some(a), Some(b)) = (mbpp_range(&t.config), mbpp_range(&v.config)) {
                if a.overlaps(&b) {
                    return Err(err(format!(
                        "test set eval `{}` (MBPP task numbers {a}) overlaps validation set eval `{}` ({b}); \
                         a setting chosen on validation would then be judged on the same tasks",
                        t.name, v.name
                    )));
                }
            }
        }
    }

    if !names.contains(&f.reference.as_str()) {
        return Err(err(format!("reference = `{}`: no arm has that name (arms: {})", f.reference, names.join(", "))));
    }
    Ok(Spec {
        file: file.to_path_buf(),
        model: f.model,
        out: f.out.unwrap_or_else(|| spec_dir.to_path_buf()),
        data_dir,
        weights: f.weights,
        reference: f.reference,
        batch: f.batch,
        bootstrap: f.bootstrap,
        bootstrap_seed: f.bootstrap_seed,
        evals,
        arms,
    })
}

/// Names become directory names.
fn check_name(name: &str, what: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} name `{name}`: use letters, digits, `-`, `_` and `.` (it names a directory)"))
    }
}

/// The runner owns these per run; a spec setting them would be silently overridden.
fn check_train_table(t: &toml::Table, key: &str) -> std::result::Result<(), String> {
    for k in ["model", "out", "seed", "data_dir", "weights"] {
        if t.contains_key(k) {
            return Err(format!(
                "`{key}.{k}`: set by the experiment (model, data_dir and weights at the top level, seed from `seeds`, out per run); remove it"
            ));
        }
    }
    Ok(())
}

/// `over` merged into `base`, tables recursively.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// A `published` arm trains exactly as its `same_as` arm when the configs differ only in the
/// FLeX settings and neither puts the penalty's gradient into the update (`published` logs the
/// penalty without a gradient; `off` skips it; `train` with λ = 0 adds zero).
/// `tests/model/train_*` checks that published mode is bit-identical to λ = 0.
fn published_identical(mine: &TrainConfig, theirs: &TrainConfig) -> std::result::Result<(), String> {
    if mine.flex.mode != FlexMode::Published {
        return Err(format!("its train.flex.mode is `{:?}`, must be published", mine.flex.mode).to_lowercase());
    }
    let no_gradient = theirs.flex.mode != FlexMode::Train || theirs.flex.lambda == 0.0;
    if !no_gradient {
        return Err(format!("the other arm trains with the penalty's gradient (λ = {})", theirs.flex.lambda));
    }
    let mut a = mine.clone();
    a.flex = theirs.flex.clone();
    if &a != theirs {
        let (x, y) = (a.to_toml(), theirs.to_toml());
        let diff: Vec<String> = x.lines().zip(y.lines()).filter(|(p, q)| p != q).map(|(p, q)| format!("`{p}` vs `{q}`")).collect();
        return Err(format!("the training settings differ outside flex: {}", diff.join(", ")));
    }
    Ok(())
}

/// The MBPP task numbers a training config trains on; None for a JSONL file (unknown).
fn training_range(cfg: &TrainConfig) -> Option<IdRange> {
    let split = match Source::parse(&cfg.data).ok()? {
        Source::Mbpp { split } => split,
        Source::Jsonl(_) => return None,
    };
    Some(split_range(split))
}

fn split_range(split: MbppSplit) -> IdRange {
    let (first, last) = match split {
        MbppSplit::FewShot => (1, 10),
        MbppSplit::Test => (11, 510),
        MbppSplit::Validation => (511, 600),
        MbppSplit::Train => (601, 974),
        MbppSplit::All => (1, 974),
    };
    IdRange { first, last }
}

/// The MBPP task numbers an evaluation set covers (MBJP tasks carry their twin's); None for sets
/// unrelated to MBPP (HumanEval, HumanEval-Java).
pub fn mbpp_range(cfg: &EvalConfig) -> Option<IdRange> {
    let all = match cfg.task {
        TaskSet::Mbpp => split_range(MbppSplit::Test),
        TaskSet::Mbjp => split_range(MbppSplit::All),
        TaskSet::Humaneval | TaskSet::HumanevalJava | TaskSet::File => return None,
    };
    Some(match cfg.ids {
        None => all,
        Some(r) => IdRange { first: r.first.max(all.first), last: r.last.min(all.last) },
    })
}

pub fn task_name(t: TaskSet) -> &'static str {
    match t {
        TaskSet::Humaneval => "HumanEval",
        TaskSet::Mbpp => "MBPP",
        TaskSet::Mbjp => "MBJP",
        TaskSet::HumanevalJava => "HumanEval-Java",
        TaskSet::File => "task file",
    }
}
