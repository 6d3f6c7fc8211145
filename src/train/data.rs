#![allow(unused)]
use std::path::{Path, PathBuf};
use serde::{Serialize, Deserialize};
use crate::error::Result;
use crate::eval::tasks::MbppSplit;
use crate::model::tokenizer::Tokenizer;
pub enum Source { Mbpp { split: MbppSplit }, Jsonl(PathBuf) }
pub struct TextExample { pub prompt: String, pub completion: String }
pub fn load(source: &Source, data_dir: &Path) -> Result<Vec<TextExample>> { todo!() }
pub struct Example { pub ids: Vec<u32>, pub train_from: usize }
pub struct TokenStats { pub examples: usize, pub truncated: usize, pub tokens: usize, pub target_tokens: usize }
pub fn tokenize(tok: &Tokenizer, texts: &[TextExample], max_len: usize, mask_prompt: bool) -> Result<(Vec<Example>, TokenStats)> { todo!() }
pub struct Batch { pub ids: Vec<u32>, pub targets: Vec<u32>, pub b: usize, pub t: usize, pub n_targets: usize }
pub fn make_batch(examples: &[&Example], pad: u32) -> Batch { todo!() }
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)] pub struct Cursor { pub epoch: u64, pub index: usize }
pub struct Loader;
impl Loader { pub fn new(n_examples: usize, seed: u64, cursor: Cursor) -> Self { todo!() } pub fn next_indices(&mut self, batch_size: usize) -> Vec<usize> { todo!() } pub fn cursor(&self) -> Cursor { todo!() } }
