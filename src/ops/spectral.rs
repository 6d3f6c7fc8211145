#![allow(unused)]
use crate::device::Device;
use crate::error::Result;
use crate::tensor::Tensor;
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, Default)]
pub struct Spectral {
    pub threshold: f32,
    pub phi_low: f32,
    pub phi_high: f32,
    pub per_row: bool,
}
pub fn penalty(dev: &Device, w: &Tensor, grad: Option<&mut Tensor>, coef: f32, sp: &Spectral) -> Result<Tensor> {
    todo!()
}
