//! 4-bit quantization of the frozen base weights, bit-compatible with bitsandbytes (QLoRA).
//!
//! This module owns the CPU reference of NF4: the codebook and block quantizer (`nf4`), QLoRA's
//! double quantization of the block scales (`double`), and the bitsandbytes 4-bit safetensors
//! format (`bnb`), so `*-bnb-4bit` checkpoints load without re-quantizing and what flexlora writes
//! loads in bitsandbytes. The functions take and return plain slices: they are the ground truth
//! the GPU kernels (`ops/matmul_nf4.rs`, `shaders/matmul_nf4.wgsl`) are tested against. It holds
//! no GPU code and touches no files outside `bnb::fs` (native only).
//!
//! Shapes: N is the number of weights of one tensor, flattened row-major ([C_out, C_in] for a
//! linear); blocks of `blocksize` (64 in QLoRA) run over that flat order, the last may be partial.
//!
//! Storage, block 64 with double quantization: 4 bits of code + 8/64 bits of absmax code +
//! 32/(64*256) bits of nested absmax = 4.127 bits per weight ([`nf4::bits_per_param`]).
//!
//! Which bitsandbytes: 0.50.2's CPU path with torch 2.15 (see `scripts/fixtures/make_nf4_fixture.py`
//! and the fixtures in `tests/fixtures/`). Where its CUDA kernels would produce other bytes, the
//! docs of `nf4` and `double` say so.

pub mod bnb;
pub mod double;
pub mod nf4;

pub use double::{double_quantize, dynamic_map_signed, Absmax, DoubleQuant, Nf4State, NESTED_BLOCKSIZE};
pub use nf4::{
    bits_per_param, bytes_per_param, dequantize_into, quantize, quantize_into, round_trip_stats, Nf4, RoundTripStats, DEFAULT_BLOCKSIZE,
    NF4_CODE,
};
