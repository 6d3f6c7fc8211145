//! Op tests: CPU backward vs finite differences first, then GPU vs CPU on seeded odd shapes.
//! One file per op family, named like its `src/ops/` file.

mod common;

mod attention;
mod cross_entropy;
mod elementwise;
mod embedding;
mod matmul;
mod matmul_gguf;
mod matmul_nf4;
mod matmul_q8;
mod optim;
mod quant_nf4;
mod rmsnorm;
mod rope;
mod spectral;
mod swiglu;
