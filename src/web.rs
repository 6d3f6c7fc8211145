//! The browser API (wasm-bindgen). It holds no behaviour of its own: it opens the browser's WebGPU
//! adapter through `device::select` and calls the same ops the native build runs.

use wasm_bindgen::prelude::*;

use crate::device::{self, Device, DeviceChoice};
use crate::ops::matmul;
use crate::Tensor;

fn js(e: crate::Error) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// Deterministic inputs in [-1, 1), so the page needs no randomness of its own.
fn inputs(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(seed);
    (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()
}

/// Runs one [m, k] x [k, n] matmul on WebGPU and on the CPU backend (in wasm) and returns a JSON
/// report: the adapter, the largest absolute difference, and the GPU time in milliseconds.
#[wasm_bindgen]
pub async fn matmul_check(m: usize, n: usize, k: usize, seed: u64) -> Result<String, JsValue> {
    let (a, b) = (inputs(m * k, seed), inputs(k * n, seed + 1));
    let gpu = device::select(DeviceChoice::Gpu, None).await.map_err(js)?.device;
    let cpu = Device::cpu();
    let run = |dev: &Device| -> crate::Result<Tensor> {
        let at = Tensor::from_f32(dev, "a", &[m, k], &a)?;
        let bt = Tensor::from_f32(dev, "b", &[k, n], &b)?;
        matmul::forward(dev, &at, &bt, false, false)
    };
    let t0 = js_sys_now();
    let got = run(&gpu).map_err(js)?.to_vec_f32(&gpu).await.map_err(js)?;
    let gpu_ms = js_sys_now() - t0;
    let want = run(&cpu).map_err(js)?.to_vec_f32(&cpu).await.map_err(js)?;
    let max_diff = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
    let max_ref = want.iter().fold(0f32, |a, w| a.max(w.abs()));
    Ok(format!(
        "{{\"adapter\":{:?},\"m\":{m},\"n\":{n},\"k\":{k},\"max_abs_diff\":{max_diff},\"max_abs_ref\":{max_ref},\"gpu_ms\":{gpu_ms}}}",
        gpu.name()
    ))
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn js_sys_now() -> f64;
}
