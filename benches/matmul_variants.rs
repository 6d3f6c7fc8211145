//! Experiment harness for WGSL matmul variants (not a test, not shipped): loads a WGSL file given
//! on the command line at run time, so a variant can be edited and re-timed without rebuilding.
//!   cargo bench --bench matmul_variants -- FILE.wgsl ENTRY RX RY ROWS_PER_GROUP COLS_PER_GROUP [M N K] [tb]
//! The file must declare the `Params`/bindings of shaders/matmul.wgsl.

use std::time::Instant;

use flexlora::device::{block_on, select, DeviceChoice, Kernel};
use flexlora::shaders::Shader;
use flexlora::{DType, Tensor};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    m: u32,
    n: u32,
    k: u32,
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    accumulate: u32,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let path = &args[0];
    let entry: &'static str = Box::leak(args[1].clone().into_boxed_str());
    let num = |i: usize, d: usize| args.get(i).map(|s| s.parse().unwrap()).unwrap_or(d);
    let (rx, ry, rows_pg, cols_pg) = (num(2, 16) as u32, num(3, 8) as u32, num(4, 32), num(5, 64));
    let (m, n, k) = (num(6, 1024), num(7, 1024), num(8, 1024));
    let tb = args.get(9).is_some_and(|s| s == "tb");
    let source: &'static str = Box::leak(std::fs::read_to_string(path).unwrap().into_boxed_str());
    let shader: &'static Shader = Box::leak(Box::new(Shader { name: "experiment", source }));
    let dev = block_on(None, select(DeviceChoice::Gpu, None)).unwrap().device;
    let g = dev.gpu().unwrap();
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0).collect();
    let at = Tensor::from_f32(&dev, "a", &[m, k], &a).unwrap();
    let bt = Tensor::from_f32(&dev, "b", &[k, n], &b).unwrap();
    let c = Tensor::zeros(&dev, "c", &[m, n], DType::F32);
    let (b_rs, b_cs) = if tb { (1, k) } else { (n, 1) };
    let p = Params { m: m as u32, n: n as u32, k: k as u32, a_rs: k as u32, a_cs: 1, b_rs: b_rs as u32, b_cs: b_cs as u32, accumulate: 0 };
    let groups = [n.div_ceil(cols_pg) as u32, m.div_ceil(rows_pg) as u32, 1];
    let bufs = [(1, at.bind("x").unwrap()), (2, bt.bind("x").unwrap()), (3, c.bind("x").unwrap())];
    let mut best = f64::INFINITY;
    for rep in 0..4 {
        let t0 = Instant::now();
        g.dispatch(Kernel { shader, entry }, &[("RX", rx), ("RY", ry)], &p, &bufs, groups).unwrap();
        g.wait();
        if rep > 0 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    let got = block_on(Some(&dev), c.to_vec_f32(&dev)).unwrap();
    // Spot-check a few entries against a direct dot product.
    for &(i, j) in &[(0, 0), (m - 1, n - 1), (m / 2, n / 3)] {
        let want: f32 = (0..k).map(|p| a[i * k + p] * if tb { b[j * k + p] } else { b[p * n + j] }).sum();
        assert!((got[i * n + j] - want).abs() < 1e-3 * (1.0 + want.abs()), "({i},{j}): {} vs {want}", got[i * n + j]);
    }
    println!("{entry} RX={rx} RY={ry} {m}x{n}x{k} tb={tb}: {:.1} ms, {:.2} GFLOP/s", best * 1e3, 2.0 * (m * n * k) as f64 / best / 1e9);
}
