//! One training state in one file (`train::state`, `checkpoint.safetensors`): a checkpoint of an
//! earlier version (`state.json` + `optimizer.safetensors`) still resumes bit for bit, and a
//! checkpoint file outside any run (as the browser page downloads it) resumes into `--out`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::train_loop::{config, fixture};
use flexlora::model::load::safetensors;
use flexlora::train::checkpoint;
use flexlora::train::config::TrainConfig;
use flexlora::train::run::{self, Trainer};
use flexlora::Device;

fn trainer(cfg: &TrainConfig, resume: Option<&Path>) -> flexlora::Result<Trainer> {
    let dev = Device::cpu();
    let (model, tok) = run::load_model(&dev, cfg)?;
    Trainer::new(dev, model, &tok, cfg.clone(), resume)
}

fn adapter(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter/adapter_model.safetensors")).unwrap()
}

/// A 4-step run to the end, and the step-2 checkpoint of a second run of the same settings.
fn full_and_step2(dir: &Path, data: &Path, tag: &str) -> (TrainConfig, Vec<u8>, PathBuf) {
    let mut cfg = config(dir, data, &dir.join(format!("{tag}-full")));
    cfg.steps = 4;
    cfg.save_every = 2;
    cfg.optimizer = flexlora::train::config::OptimizerKind::Sophia; // m and h, h refreshed at step 0 and 2
    cfg.hessian_every = 2;
    flexlora::device::block_on(None, run::run(trainer(&cfg, None).unwrap(), &mut |_| {})).unwrap();
    let want = adapter(&cfg.out);
    cfg.out = dir.join(format!("{tag}-cut"));
    let mut tr = trainer(&cfg, None).unwrap();
    flexlora::device::block_on(None, tr.step()).unwrap();
    flexlora::device::block_on(None, tr.step()).unwrap();
    let step2 = flexlora::device::block_on(None, tr.save()).unwrap();
    (cfg, want, step2)
}

#[test]
fn checkpoint_of_an_earlier_version_resumes_bit_for_bit() {
    let (dir, data) = fixture("state-legacy");
    let (cfg, want, step2) = full_and_step2(&dir, &data, "legacy");
    // Rewrite the step-2 checkpoint as earlier versions wrote it.
    let (st, ck) = checkpoint::read(&step2).unwrap();
    std::fs::write(step2.join(checkpoint::STATE_FILE), serde_json::to_string_pretty(&st).unwrap()).unwrap();
    safetensors::write(&step2.join(checkpoint::OPTIMIZER_FILE), &ck.optimizer, None).unwrap();
    std::fs::remove_file(step2.join(checkpoint::FILE)).unwrap();
    assert_eq!(checkpoint::list(&cfg.out.join("checkpoints")).unwrap(), vec![(2, step2.clone())]);
    // It reads into the same state as the file it replaced, tensor for tensor (the settings
    // compared typed: JSON text may round an f64 in its last bit, never an f32 setting).
    let (_, mut legacy) = checkpoint::read_legacy(&step2).unwrap();
    assert_eq!(serde_json::from_value::<TrainConfig>(legacy.config.clone()).unwrap(), st.config);
    legacy.config = ck.config.clone();
    assert_eq!(legacy, ck);
    let tr = trainer(&cfg, Some(&cfg.out)).unwrap();
    assert_eq!((tr.session.step, tr.resumed_from.as_deref()), (2, Some(step2.as_path())));
    flexlora::device::block_on(None, run::run(tr, &mut |_| {})).unwrap();
    assert!(adapter(&cfg.out) == want, "the run resumed from the old-format checkpoint differs from the uninterrupted one");
    assert!(cfg.out.join("checkpoints/step-0000004").join(checkpoint::FILE).exists(), "the resumed run writes the new format");
}

#[test]
fn checkpoint_file_outside_a_run_resumes_into_out() {
    let (dir, data) = fixture("state-lone");
    let (cfg, want, step2) = full_and_step2(&dir, &data, "lone");
    let lone = dir.join("downloads/checkpoint.safetensors");
    std::fs::create_dir_all(lone.parent().unwrap()).unwrap();
    std::fs::copy(step2.join(checkpoint::FILE), &lone).unwrap();
    let bin = env!("CARGO_BIN_EXE_flexlora");
    let resume = |out: Option<&Path>| {
        let mut cmd = Command::new(bin);
        cmd.args(["train", "--device", "cpu", "--model"]).arg(&dir).arg("--resume").arg(&lone);
        if let Some(o) = out {
            cmd.arg("--out").arg(o);
        }
        cmd.output().unwrap()
    };
    // Without --out, or into a directory holding another run: refused, naming the file and --out.
    for out in [None, Some(cfg.out.as_path())] {
        let o = resume(out);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && e.contains("downloads/checkpoint.safetensors") && e.contains("--out"), "{out:?}: {e}");
    }
    let out = dir.join("continued");
    let o = resume(Some(&out));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("at step 2") && log.contains(&format!("writing to {}", out.display())), "{log}");
    assert!(log.contains("memory: about") && log.contains("activations"), "the memory estimate is not printed: {log}");
    assert!(adapter(&out) == want, "the run resumed from the lone checkpoint file differs from the uninterrupted one");
    // It continued the checkpoint's run (its settings), in its own directory.
    let (st, _) = checkpoint::read(&checkpoint::resolve(&out).unwrap()).unwrap();
    assert_eq!((st.step, st.config.seed, st.config.out), (4, cfg.seed, out));
}
