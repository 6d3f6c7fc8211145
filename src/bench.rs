//! Benchmarks behind `flexlora bench` (native only). Speed targets live here and in the closing
//! notes, never in test assertions.

use std::io::Write;
use std::time::Instant;

use crate::device::{block_on, Device};
use crate::error::Result;
use crate::ops::matmul;
use crate::tensor::Tensor;

fn seeded(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) - 0.5
        })
        .collect()
}

/// Times `f` (which records work on `dev`) to completion; the best of `reps` after one warm-up.
fn time(dev: &Device, reps: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for rep in 0..=reps {
        let t0 = Instant::now();
        let out = f()?;
        // Reading one element back waits for the work without a blocking poll in the library.
        if let Device::Gpu(g) = dev {
            g.wait();
        }
        block_on(Some(dev), out.to_host(dev))?;
        if rep > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    Ok(best)
}

/// f32 matmul GFLOP/s on the CPU backend and (when given) a GPU, at 1024³ and SmolLM2's
/// training shapes (T=512 tokens by its MLP and vocabulary projections).
pub fn matmul(gpu: Option<&Device>, reps: usize, out: &mut impl Write) -> Result<()> {
    let cpu = Device::cpu();
    // (M, N, K, label, b transposed): x · Wᵀ is how every linear layer multiplies (W stored [out, in]).
    let shapes: [(usize, usize, usize, &str, bool); 5] = [
        (1024, 1024, 1024, "1024^3 a·b", false),
        (1024, 1024, 1024, "1024^3 a·bᵀ", true),
        (512, 1536, 576, "T=512, 576->1536 (gate/up)", true),
        (512, 576, 1536, "T=512, 1536->576 (down)", true),
        (512, 49152, 576, "T=512, 576->49152 (logits)", true),
    ];
    let mut devices = vec![&cpu];
    devices.extend(gpu);
    for dev in devices {
        let _ = writeln!(out, "{}", dev.name());
        for &(m, n, k, label, tb) in &shapes {
            let a = Tensor::from_f32(dev, "a", &[m, k], &seeded(m * k, 1))?;
            let b_shape = if tb { [n, k] } else { [k, n] };
            let b = Tensor::from_f32(dev, "b", &b_shape, &seeded(n * k, 2))?;
            let secs = time(dev, reps, || matmul::forward(dev, &a, &b, false, tb))?;
            let gflops = 2.0 * (m * n * k) as f64 / secs / 1e9;
            let _ = writeln!(out, "  matmul {label:<30} {m}x{n}x{k}: {:8.2} ms  {gflops:7.1} GFLOP/s", secs * 1e3);
        }
    }
    Ok(())
}

pub use crate::train::metrics::peak_rss;

/// Prefill and decode speed of `model` on `dev`: `prompt` tokens in one pass, then `decode`
/// single-token steps with the KV cache (greedy, no sampling cost); peak memory; and on the CPU
/// how close decode comes to the bound set by reading its weights at the measured bandwidth.
pub fn generate(dev: &Device, model: &crate::model::Model, prompt: usize, decode: usize, out: &mut impl Write) -> Result<()> {
    let v = model.cfg.vocab as u32;
    let ids: Vec<u32> = (0..prompt as u32).map(|i| (i * 7919 + 13) % v).collect();
    let mut cache = model.new_cache(dev, 1, prompt + decode);
    let t0 = Instant::now();
    let logits = model.forward(dev, &ids, &mut cache, false)?;
    block_on(Some(dev), logits.to_host(dev))?;
    let prefill = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut next = 0u32;
    for _ in 0..decode {
        let l = block_on(Some(dev), model.forward(dev, &[next], &mut cache, false)?.to_vec_f32(dev))?;
        next = l.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
    }
    let dec = t1.elapsed().as_secs_f64();
    let _ = writeln!(
        out,
        "  prefill {prompt} tokens: {:8.2} s {:8.1} tokens/s | decode {decode} tokens: {:6.2} s {:6.1} tokens/s",
        prefill,
        prompt as f64 / prefill,
        dec,
        decode as f64 / dec
    );
    // How far decode is from the memory-bandwidth bound.
    let c = &model.cfg;
    let kv_bytes = 4 * c.layers * (prompt + decode) * c.kv * c.d;
    let weights = model.decode_weight_bytes() as f64;
    let _ = writeln!(
        out,
        "  one decode step reads {:.1} MB of weights (+ {:.1} MB of KV cache at the last position; {} layers)",
        weights / 1e6,
        2.0 * kv_bytes as f64 / 1e6,
        c.layers
    );
    if let Some(rss) = peak_rss() {
        let _ = writeln!(out, "  peak resident memory: {:.0} MiB", rss as f64 / (1 << 20) as f64);
    }
    // After the peak-memory reading: this allocates 512 MiB.
    if matches!(dev, Device::Cpu(_)) {
        let bw = read_bandwidth();
        let bound = bw / weights;
        let _ = writeln!(
            out,
            "  memory read bandwidth {:.1} GB/s ({} threads): weights alone bound decode at {bound:.0} tokens/s; measured is {:.0}% of that",
            bw / 1e9,
            crate::device::cpu::threads(),
            100.0 * decode as f64 / dec / bound
        );
    }
    Ok(())
}

/// Read bandwidth of main memory in bytes/s: every thread summing its share of a 512 MiB buffer
/// (far larger than any cache) with 64 partial sums (16 reach only about two thirds of the
/// bandwidth here), best of three passes after a warm-up.
fn read_bandwidth() -> f64 {
    use crate::device::cpu;
    let buf = vec![1f32; 1 << 27];
    let tasks = 4 * cpu::threads();
    let per = buf.len() / tasks;
    let mut sums = vec![0f32; tasks];
    let mut best = f64::INFINITY;
    for rep in 0..4 {
        let t0 = Instant::now();
        cpu::for_each_chunk(&mut sums, 1, |i, s| s[0] = cpu::sum_lanes::<64>(&buf[i * per..(i + 1) * per]));
        if rep > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    assert_eq!(sums.iter().sum::<f32>(), (tasks * per) as f32, "bandwidth pass summed wrongly");
    (tasks * per * 4) as f64 / best
}

/// Fused NF4 matmul (x · deq(W)ᵀ) against the f32 matmul on the same shapes and device: the
/// training/prefill shape T=512 and the decode shape T=1, for SmolLM2's MLP and a 7B layer
/// (4096 x 11008); plus weight bytes read per token in decode.
pub fn nf4(devices: &[&Device], reps: usize, out: &mut impl Write) -> Result<()> {
    let shapes: [(usize, usize, &str); 3] =
        [(1536, 576, "SmolLM2 up 576->1536"), (576, 1536, "SmolLM2 down 1536->576"), (11008, 4096, "7B up 4096->11008")];
    for &dev in devices {
        let _ = writeln!(out, "{}", dev.name());
        for &(n, k, label) in &shapes {
            // A shape this device cannot hold (e.g. a 180 MB f32 weight above lavapipe's 128 MiB
            // binding limit) is reported and skipped.
            if let Err(e) = nf4_shape(dev, n, k, label, reps, out) {
                let _ = writeln!(out, "  {label:<24} not measured: {e}");
            }
        }
    }
    Ok(())
}

fn nf4_shape(dev: &Device, n: usize, k: usize, label: &str, reps: usize, out: &mut impl Write) -> Result<()> {
    use crate::ops::{matmul_nf4, quant_nf4};
    let w = Tensor::from_f32(dev, "w", &[n, k], &seeded(n * k, 3))?;
    let q = quant_nf4::quantize(dev, &w, 64)?;
    let f32_bytes = (n * k * 4) as f64;
    let nf4_bytes = (q.packed.bytes() + q.absmax.bytes()) as f64;
    for t in [512usize, 1] {
        if t == 512 && n * k > 20_000_000 && dev.gpu().is_some_and(|g| g.is_software()) {
            let _ = writeln!(out, "  {label:<24} T={t:<4} skipped on a software adapter (minutes per run)");
            continue;
        }
        let x = Tensor::from_f32(dev, "x", &[t, k], &seeded(t * k, 4))?;
        let s32 = time(dev, reps, || matmul::forward(dev, &x, &w, false, true))?;
        let s4 = time(dev, reps, || matmul_nf4::forward(dev, &x, &q))?;
        let gf = |s: f64| 2.0 * (t * n * k) as f64 / s / 1e9;
        let _ = writeln!(
            out,
            "  {label:<24} T={t:<4} f32 {:8.2} ms {:7.1} GFLOP/s | nf4 {:8.2} ms {:7.1} GFLOP/s | nf4/f32 speed {:.2}x",
            s32 * 1e3,
            gf(s32),
            s4 * 1e3,
            gf(s4),
            s32 / s4
        );
    }
    let _ = writeln!(
        out,
        "  {label:<24} weight bytes per decoded token: f32 {:.1} MB, nf4 {:.1} MB ({:.2}x less)",
        f32_bytes / 1e6,
        nf4_bytes / 1e6,
        f32_bytes / nf4_bytes
    );
    Ok(())
}

/// Seeded random weights for any config, generated tensor by tensor (norm weights near 1, others
/// small): a model of real shapes without a file, for training benchmarks.
pub struct RandomSource {
    pub cfg: crate::model::Config,
    pub seed: u32,
}

impl crate::model::WeightSource for RandomSource {
    fn origin(&self) -> String {
        "random weights".into()
    }
    fn contains(&self, name: &str) -> bool {
        crate::model::weights::tensor_names(&self.cfg).iter().any(|(n, _)| n == name)
    }
    fn get(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (_, shape) = crate::model::weights::tensor_names(&self.cfg).into_iter().find(|(n, _)| n == name).ok_or_else(|| {
            crate::Error::Weights { file: self.origin(), tensor: name.into(), detail: "not a tensor of this config".into() }
        })?;
        self.seed = self.seed.wrapping_add(1);
        let n: usize = shape.iter().product();
        let scale = 1.0 / (*shape.last().unwrap_or(&1) as f32).sqrt();
        let data = seeded(n, self.seed);
        let data = if name.ends_with("norm.weight") {
            data.iter().map(|x| 1.0 + 0.1 * x).collect()
        } else {
            data.iter().map(|x| x * scale).collect()
        };
        Ok((shape, data))
    }
}

/// Code Llama 7B's shapes (Llama 2 7B with a 16k context and RoPE base 1e6).
pub fn codellama_7b() -> crate::model::Config {
    crate::model::Config {
        arch: crate::model::Arch::Llama,
        c: 4096,
        f: 11008,
        h: 32,
        kv: 32,
        d: 128,
        layers: 32,
        vocab: 32016,
        eps: 1e-5,
        rope_base: 1e6,
        rope_scaling: None,
        max_pos: 16384,
        tied: false,
        qkv_bias: false,
        bos: Some(1),
        eos: vec![2],
    }
}

/// Tokens/s and memory of LoRA training steps on one sequence of `t` random tokens, every target
/// trained: the trainer's own step (`train::step::step`: forward, backward to the adapter, global
/// norm, AdamW; no FLeX, no clipping). Returns the mean seconds per step after one warm-up step.
pub fn train(dev: &Device, model: &mut crate::model::Model, t: usize, steps: usize, recompute: bool, out: &mut impl Write) -> Result<f64> {
    use crate::ops::cross_entropy::IGNORE;
    use crate::train::{adapter::AdapterStore, config::FlexConfig, config::FlexMode, data::Batch, optimizer, step};
    let v = model.cfg.vocab as u32;
    let ids: Vec<u32> = (0..t as u32).map(|i| (i.wrapping_mul(7919) + 13) % v).collect();
    let mut targets: Vec<u32> = ids[1..].to_vec();
    targets.push(IGNORE);
    let batch = [Batch { n_targets: t - 1, ids, targets, b: 1, t }];
    let opt = optimizer::AdamW(crate::ops::optim::AdamW::default());
    let mut store = AdapterStore::new(dev, model, &opt);
    let flex = FlexConfig { mode: FlexMode::Off, ..FlexConfig::default() };
    let mut total = 0.0;
    let mut log = step::StepLog::new(dev, 1)?;
    for step in 0..=steps {
        let t0 = Instant::now();
        let settings = step::StepSettings { step, seed: 0, lr: 1e-4, clip: 0.0, recompute, flex: &flex };
        step::step(dev, model, &mut store, &opt, &batch, &settings, &mut log)?;
        // The read-back waits for the step (a trainer reads once per log interval).
        let logged = block_on(Some(dev), log.read(dev))?;
        if let Some(e) = logged.error {
            return Err(e);
        }
        let r = logged.steps[0];
        let secs = t0.elapsed().as_secs_f64();
        let what = if step == 0 { "warm-up" } else { "step" };
        let _ = writeln!(out, "  {what} {step}: {secs:.2} s ({:.1} tokens/s), loss {:.4}, |g| {:.4}", t as f64 / secs, r.loss, r.grad_norm);
        if step > 0 {
            total += secs;
        }
    }
    Ok(total / steps.max(1) as f64)
}

/// FLeX spectral penalty + gradient per training step over every LoRA matrix of a model with
/// config `cfg` and rank `r` on its MLP (L layers x gate, up, down, A and B each), whole-matrix;
/// the best of `reps` after a warm-up. Returns the seconds per step of the batched call the loop uses.
pub fn flex(dev: &Device, cfg: &crate::model::Config, r: usize, reps: usize, out: &mut impl Write) -> Result<f64> {
    use crate::ops::spectral::{self, Spectral};
    let (c, f) = (cfg.c, cfg.f);
    // [R, C_in] A and [C_out, R] B of gate, up (C -> F) and down (F -> C).
    let shapes = [[r, c], [f, r], [r, c], [f, r], [r, f], [c, r]];
    let mats: Vec<Tensor> = (0..cfg.layers * shapes.len())
        .map(|i| Tensor::from_f32(dev, "lora", &shapes[i % 6], &seeded(shapes[i % 6].iter().product(), i as u32 + 5)))
        .collect::<Result<_>>()?;
    let mut grads: Vec<Tensor> = mats.iter().map(|m| Tensor::zeros(dev, "dlora", m.shape(), crate::tensor::DType::F32)).collect();
    let sp = Spectral::default();
    let coef = 0.02 / mats.len() as f32;
    let secs = time(dev, reps, || {
        let refs: Vec<&Tensor> = mats.iter().collect();
        let mut grefs: Vec<&mut Tensor> = grads.iter_mut().collect();
        spectral::penalty_batch(dev, &refs, Some(&mut grefs), coef, &sp)
    })?;
    let lengths: Vec<usize> = shapes.iter().map(|s| s[0] * s[1]).collect();
    let _ =
        writeln!(out, "  FLeX penalty + gradient, {} matrices (flattened lengths {lengths:?}): {:.2} ms per step", mats.len(), secs * 1e3);
    Ok(secs)
}

/// The model a training benchmark runs.
pub enum BenchModel {
    /// A model file (GGUF or a Hugging Face directory).
    File(std::path::PathBuf),
    /// Seeded random weights with Code Llama 7B's shapes (`codellama_7b`).
    RandomCodeLlama7b,
}

impl BenchModel {
    fn name(&self) -> String {
        match self {
            BenchModel::File(p) => p.display().to_string(),
            BenchModel::RandomCodeLlama7b => "random Code Llama 7B shapes".into(),
        }
    }

    fn load(&self, dev: &Device, format: crate::model::WeightFormat) -> Result<crate::model::Model> {
        match self {
            BenchModel::File(p) => Ok(crate::model::load::open(dev, p, format)?.0),
            BenchModel::RandomCodeLlama7b => {
                let cfg = codellama_7b();
                let mut src = RandomSource { cfg: cfg.clone(), seed: 1 };
                crate::model::Model::load(dev, cfg, &mut src, format)
            }
        }
    }
}

/// `--model` or `--random-7b`: the model of `bench train` and `bench flex`.
#[derive(clap::Args)]
pub struct ModelArgs {
    /// A .gguf file or a Hugging Face model directory.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: std::path::PathBuf,
    /// Random weights with Code Llama 7B's shapes instead of --model.
    #[arg(long)]
    pub random_7b: bool,
}

impl ModelArgs {
    pub fn source(&self) -> BenchModel {
        if self.random_7b {
            BenchModel::RandomCodeLlama7b
        } else {
            BenchModel::File(self.model.clone())
        }
    }
}

/// What `flexlora bench train` measures (its flags).
#[derive(clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Tokens in the one training sequence.
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// LoRA rank r.
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// The modules to adapt, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "gate_proj,up_proj,down_proj")]
    pub lora_targets: Vec<crate::model::Target>,
    /// Recompute activations per layer during backward (less memory).
    #[arg(long)]
    pub recompute: bool,
}

/// `flexlora bench train`: loads the model (its linear weights in `format`), attaches a fresh
/// adapter, reports the setup, every step (`train`), the mean and the peak memory.
pub fn train_run(dev: &Device, run: &TrainArgs, format: crate::model::WeightFormat, out: &mut impl Write) -> Result<()> {
    let t0 = Instant::now();
    let source = run.model.source();
    let lora = crate::model::LoraConfig { rank: run.lora_rank, targets: run.lora_targets.clone(), ..Default::default() };
    let mut m = source.load(dev, format)?;
    m.attach_lora(dev, &lora, 0)?;
    let (trainable, total) = m.trainable_params();
    let targets: Vec<&str> = lora.targets.iter().map(|t| t.name()).collect();
    let format = match format {
        crate::model::WeightFormat::Nf4 { .. } => "NF4",
        crate::model::WeightFormat::F32 => "f32",
        crate::model::WeightFormat::Auto => "auto (GGUF blocks or NF4)",
    };
    let _ = writeln!(
        out,
        "{} on {} ({format} base weights, loaded in {:.1} s): LoRA r={} on {}, {trainable} of {total} parameters, T={}{}",
        source.name(),
        dev.name(),
        t0.elapsed().as_secs_f64(),
        lora.rank,
        targets.join(","),
        run.seq,
        if run.recompute { ", recomputing activations" } else { "" }
    );
    let secs = train(dev, &mut m, run.seq, run.steps, run.recompute, out)?;
    let _ = writeln!(out, "  mean step {secs:.2} s: {:.1} tokens/s", run.seq as f64 / secs);
    if let Some(rss) = peak_rss() {
        let _ = writeln!(out, "  peak resident memory: {:.0} MiB", rss as f64 / (1 << 20) as f64);
    }
    Ok(())
}

/// What `flexlora bench flex` measures (its flags).
#[derive(clap::Args)]
pub struct FlexArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// LoRA rank r (MLP targets).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// Repetitions (the best time is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Also time one training step (of --seq tokens) on the same device for the penalty's share.
    #[arg(long)]
    pub with_step: bool,
    /// Tokens in the training step of --with-step.
    #[arg(long, default_value_t = 512)]
    pub seq: usize,
}

/// `flexlora bench flex`: the FLeX penalty's time per step (`flex`) and, with `--with-step`, one
/// training step of the model (its linear weights in `format`) for the penalty's share.
pub fn flex_run(dev: &Device, run: &FlexArgs, format: crate::model::WeightFormat, out: &mut impl Write) -> Result<()> {
    let source = run.model.source();
    let cfg = match &source {
        BenchModel::RandomCodeLlama7b => codellama_7b(),
        BenchModel::File(p) => crate::model::load::open_config(p)?,
    };
    let name = match &source {
        BenchModel::RandomCodeLlama7b => "Code Llama 7B shapes".to_string(),
        BenchModel::File(p) => p.display().to_string(),
    };
    let _ = writeln!(out, "{name} on {}", dev.name());
    let penalty = flex(dev, &cfg, run.lora_rank, run.reps, out)?;
    if run.with_step {
        let seq = run.seq;
        let mut m = source.load(dev, format)?;
        m.attach_lora(dev, &crate::model::LoraConfig { rank: run.lora_rank, ..Default::default() }, 0)?;
        let step = train(dev, &mut m, seq, 1, false, out)?;
        let _ = writeln!(out, "  training step (T={seq}) {step:.2} s: the penalty adds {:.2}%", 100.0 * penalty / step);
    }
    Ok(())
}

/// What `flexlora bench generate` measures (its flags).
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A .gguf file or a Hugging Face model directory.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: std::path::PathBuf,
    /// Tokens of the prompt, run in one pass (prefill).
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// Tokens decoded one at a time after it.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
}

/// `flexlora bench generate` on `model` (loaded from `run.model` by the front end, which reports
/// the loading): the heading, then `generate`.
pub fn generate_run(dev: &Device, model: &crate::model::Model, run: &GenerateArgs, out: &mut impl Write) -> Result<()> {
    let _ = writeln!(out, "{} on {}", run.model.display(), dev.name());
    generate(dev, model, run.prompt_tokens, run.decode_tokens, out)
}
