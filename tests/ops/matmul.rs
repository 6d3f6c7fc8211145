use crate::common::*;
use flexlora::ops::matmul::{self, gemm_into, Variant, View};
use flexlora::{DType, Device, Tensor};

fn naive(m: usize, n: usize, k: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>() as f32;
        }
    }
    c
}

fn transpose(r: usize, c: usize, x: &[f32]) -> Vec<f32> {
    let mut t = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = x[i * c + j];
        }
    }
    t
}

#[test]
fn cpu_forward_matches_naive_in_every_layout() {
    // m = 3 takes the CPU's decode path (dot products against weight rows) when b is transposed.
    for (m, n, k) in [(37, 29, 53), (3, 300, 45)] {
        cpu_forward_matches_naive(m, n, k);
    }
}

fn cpu_forward_matches_naive(m: usize, n: usize, k: usize) {
    let mut rng = Rng::new(1);
    let (a, b) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
    let want = naive(m, n, k, &a, &b);
    let dev = cpu();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let (ad, ash) = if ta { (transpose(m, k, &a), [k, m]) } else { (a.clone(), [m, k]) };
        let (bd, bsh) = if tb { (transpose(k, n, &b), [n, k]) } else { (b.clone(), [k, n]) };
        let c = matmul::forward(&dev, &up(&dev, &ash, &ad), &up(&dev, &bsh, &bd), ta, tb).unwrap();
        assert_close(&format!("matmul ta={ta} tb={tb}"), &read(&dev, &c), &want, 1e-4, 1e-4);
    }
}

#[test]
fn cpu_backward_matches_finite_differences() {
    let (m, n, k) = (5, 7, 6);
    let mut rng = Rng::new(2);
    let dev = cpu();
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        let ash = if ta { [k, m] } else { [m, k] };
        let bsh = if tb { [n, k] } else { [k, n] };
        let (a, b, dc) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0), rng.vec(m * n, 1.0));
        let fwd = |a: &[f32], b: &[f32]| read(&dev, &matmul::forward(&dev, &up(&dev, &ash, a), &up(&dev, &bsh, b), ta, tb).unwrap());
        let (da, db) = matmul::backward(&dev, &up(&dev, &ash, &a), &up(&dev, &bsh, &b), ta, tb, &up(&dev, &[m, n], &dc)).unwrap();
        check_grad("matmul da", &a, &read(&dev, &da), 100, |x| dot(&fwd(x, &b), &dc));
        check_grad("matmul db", &b, &read(&dev, &db), 100, |x| dot(&fwd(&a, x), &dc));
    }
}

#[test]
fn gpu_matches_cpu_forward_backward_both_kernels() {
    // Odd sizes that are not multiples of any tile, and one K=1 edge.
    for &(m, n, k) in &[(67, 45, 131), (1, 77, 33), (130, 3, 1)] {
        for (ta, tb) in [(false, false), (false, true), (true, false)] {
            let mut rng = Rng::new((m * n * k) as u64);
            let (a, b, dc) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0), rng.vec(m * n, 1.0));
            let ash = if ta { [k, m] } else { [m, k] };
            let bsh = if tb { [n, k] } else { [k, n] };
            cpu_vs_gpu(&format!("matmul {m}x{n}x{k} ta={ta} tb={tb}"), 1e-4, 1e-4, |dev| {
                let (at, bt) = (up(dev, &ash, &a), up(dev, &bsh, &b));
                let c = matmul::forward(dev, &at, &bt, ta, tb).unwrap();
                let (da, db) = matmul::backward(dev, &at, &bt, ta, tb, &up(dev, &[m, n], &dc)).unwrap();
                vec![read(dev, &c), read(dev, &da), read(dev, &db)]
            });
        }
    }
}

/// Every GPU kernel in every layout it serves, accumulating into a non-zero output. Sizes are
/// multiples of 4 (so the vec4 kernels run) except M, which no kernel needs aligned for nn/nt.
#[test]
fn gpu_kernels_agree_and_accumulate() {
    each_gpu(|g| {
        for &(m, n, k) in &[(70, 68, 36), (12, 20, 8), (3, 4, 4)] {
            let mut rng = Rng::new((m + n + k) as u64);
            let (a, b, c0) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0), rng.vec(m * n, 1.0));
            let mut want = naive(m, n, k, &a, &b);
            want.iter_mut().zip(&c0).for_each(|(w, c)| *w += c);
            let (a_t, b_t) = (transpose(m, k, &a), transpose(k, n, &b));
            for variant in [Variant::Tiled, Variant::Vec4, Variant::Registers] {
                for (ta, tb) in [(false, false), (false, true), (true, false)] {
                    if ta && m % 4 != 0 {
                        continue;
                    }
                    let at = if ta { up(g, &[k, m], &a_t) } else { up(g, &[m, k], &a) };
                    let bt = if tb { up(g, &[n, k], &b_t) } else { up(g, &[k, n], &b) };
                    let av = if ta { View { t: &at, rs: 1, cs: m } } else { View { t: &at, rs: k, cs: 1 } };
                    let bv = if tb { View { t: &bt, rs: 1, cs: k } } else { View { t: &bt, rs: n, cs: 1 } };
                    let mut c = up(g, &[m, n], &c0);
                    gemm_into(g, m, n, k, av, bv, &mut c, true, variant).unwrap();
                    assert_close(&format!("{variant:?} {m}x{n}x{k} ta={ta} tb={tb} accumulate"), &read(g, &c), &want, 1e-4, 1e-4);
                }
            }
        }
    });
}

#[test]
fn mismatched_inner_sizes_are_an_error() {
    let dev = cpu();
    let a = Tensor::zeros(&dev, "a", &[3, 4], DType::F32);
    let b = Tensor::zeros(&dev, "b", &[5, 2], DType::F32);
    let err = matmul::forward(&dev, &a, &b, false, false).unwrap_err().to_string();
    assert!(err.contains("inner sizes differ") && err.contains("`a`"), "{err}");
    let _ = Device::cpu();
}

/// The shared output the parallel GEMM tasks write through (`cpu::SharedOut`) hands out pointers
/// only inside (or one past) the slice it wraps.
#[test]
fn cpu_shared_out_stays_inside_its_slice() {
    let mut out = [0f32; 4];
    let shared = flexlora::device::cpu::SharedOut::new(&mut out);
    assert_eq!(shared.at(4) as usize - shared.at(0) as usize, 16);
    let past = std::panic::catch_unwind(|| shared.at(5)).unwrap_err();
    let msg = past.downcast_ref::<String>().map(String::as_str).unwrap_or("");
    assert!(msg.contains("past the end of its 4 floats"), "{msg}");
}
