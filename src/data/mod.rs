//! Datasets on disk, shared by training and evaluation: where they are (`data_dir`) and the
//! benchmark readers (`tasks`: HumanEval, MBPP with its splits and prompt styles, MBJP,
//! HumanEval-Java; `task_file`: task files in the human-eval, MBXP and MultiPL-E formats) and
//! training text (`text`: MBPP in the FLeX template or a JSONL file, for `train` and `eval --task
//! ppl`). Tokenizing and batching training text is `train::data`, which never reads files.

use std::path::PathBuf;

pub mod task_file;
pub mod tasks;
pub mod text;

/// Where the datasets are: the flag, else FLEXLORA_DATA, else ../shared/data.
pub fn data_dir(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("FLEXLORA_DATA").map(PathBuf::from)).unwrap_or_else(|| PathBuf::from("../shared/data"))
}
