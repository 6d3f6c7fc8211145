//! Model tests on tiny random Llama/Qwen2 models built in memory.

#[path = "../ops/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../support/mod.rs"]
mod support;

mod eval_job;
mod eval_ppl;
mod formats;
mod forward;
mod generate;
mod load_7b;
mod lora_oracle;
mod merge_tiny;
mod rope_scaling;
mod tokenizer_spm;
mod train_flex;
mod train_grad;
mod train_loop;
mod train_state;
