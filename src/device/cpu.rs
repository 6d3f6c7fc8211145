//! The CPU backend: plain Rust ops, multi-threaded with rayon natively and in the threaded browser
//! build (wasm32 with `+atomics`, rayon's pool on Web Workers: `src/web/threads.rs`), and
//! single-threaded in the plain browser build. Matrix products go through the `gemm` crate.
//!
//! SIMD tiers: every hand-vectorized kernel of the CPU twins asks `tier()` which code to run
//! (`Tier::Portable`: plain Rust, the only tier on wasm32 and aarch64, where the compiler
//! vectorizes it for SIMD128/NEON; `Avx2`: AVX2 + FMA; `Avx512`: AVX-512F). The tier is the best
//! this CPU runs unless `FLEXLORA_CPU=portable|avx2|avx512` forces one; tests force each in turn
//! with `with_tier`. The `gemm` crate detects CPU features itself and ignores the tier: products
//! it computes (training, prefill) use the widest SIMD the CPU has whatever FLEXLORA_CPU says.
//! The tier picks hand-written kernels; code the compiler vectorizes on its own (portable loops,
//! and the tier functions that are plain Rust compiled with `target_feature`) also follows the
//! build's target CPU, which `.cargo/config.toml` sets to the build machine's: to measure a true
//! AVX2-only machine on an AVX-512 one, also build with `RUSTFLAGS="-C target-cpu=x86-64-v3"`.

/// The CPU backend. It holds no state beyond its thread count; tensors on it are host vectors.
#[derive(Debug, Clone)]
pub struct CpuDevice {
    pub threads: usize,
}

impl CpuDevice {
    /// The CPU backend. Panics if FLEXLORA_CPU names a tier this CPU cannot run (see `tier`), so a
    /// bad setting fails when the device is made, not inside the first kernel.
    pub fn new() -> Self {
        let _ = tier();
        CpuDevice { threads: threads() }
    }
}

/// A family of SIMD kernels: see the module docs. Ordered: a tier runs wherever a later one does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Portable,
    Avx2,
    Avx512,
}

/// The environment variable that forces a tier.
pub const TIER_VAR: &str = "FLEXLORA_CPU";

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Portable, Tier::Avx2, Tier::Avx512];

    /// The name FLEXLORA_CPU takes.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
        }
    }

    /// Whether this CPU executes the tier's instructions (`Avx2` also needs FMA).
    pub fn runs_here(self) -> bool {
        match self {
            Tier::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => Tier::Avx2.runs_here() && std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// Every tier this CPU runs, portable first.
    pub fn supported() -> Vec<Tier> {
        Tier::ALL.into_iter().filter(|t| t.runs_here()).collect()
    }

    /// The best tier this CPU runs.
    pub fn best() -> Tier {
        Tier::ALL.into_iter().rev().find(|t| t.runs_here()).unwrap_or(Tier::Portable)
    }

    /// The tier FLEXLORA_CPU asks for (`None` when unset or empty), or an error naming the
    /// variable, the value and what this CPU supports.
    pub fn from_env() -> Result<Option<Tier>, String> {
        std::env::var(TIER_VAR).map_or(Ok(None), |v| Tier::parse(&v))
    }

    /// A FLEXLORA_CPU value: `None` when empty, else the tier or an error as for `from_env`.
    pub fn parse(value: &str) -> Result<Option<Tier>, String> {
        let value = value.trim().to_ascii_lowercase();
        if value.is_empty() {
            return Ok(None);
        }
        let supported = || Tier::supported().iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
        let tier = Tier::ALL.into_iter().find(|t| t.name() == value).ok_or_else(|| {
            format!("{TIER_VAR}={value} is not a CPU tier: choose portable, avx2 or avx512 (this CPU runs {}), or unset it", supported())
        })?;
        if !tier.runs_here() {
            return Err(format!(
                "{TIER_VAR}={value}: this CPU cannot run that tier (it runs {}); unset {TIER_VAR} or choose one of those",
                supported()
            ));
        }
        Ok(Some(tier))
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Sentinel for "no `with_tier` override" in `FORCED`.
const NOT_FORCED: u8 = u8::MAX;
static FORCED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(NOT_FORCED);

/// The SIMD tier kernels run now: `with_tier`'s while one is active, else FLEXLORA_CPU's (read
/// once), else `Tier::best()`. Panics with `Tier::from_env`'s message on a bad FLEXLORA_CPU.
#[inline]
pub fn tier() -> Tier {
    use std::sync::atomic::Ordering;
    static CHOSEN: std::sync::OnceLock<Tier> = std::sync::OnceLock::new();
    match FORCED.load(Ordering::Relaxed) {
        NOT_FORCED => *CHOSEN.get_or_init(|| match Tier::from_env() {
            Ok(t) => t.unwrap_or_else(Tier::best),
            Err(e) => panic!("{e}"),
        }),
        i => Tier::ALL[i as usize],
    }
}

/// The debug assertion behind the SAFETY argument of every call into a SIMD kernel ("`tier()`
/// only returns tiers this CPU runs"): this CPU executes tier `t`'s instructions.
#[inline]
pub fn debug_assert_runs(t: Tier) {
    debug_assert!(t.runs_here(), "a {t} kernel was called on a CPU that runs only {:?}", Tier::supported());
}

/// Runs `f` with every kernel on tier `t` (for tests and benchmarks). The override is process-wide,
/// not per thread, because the kernels run on rayon's workers: calls take a lock, so they run one
/// at a time (do not nest them), and kernels other threads run meanwhile use `t` too, which only
/// changes their rounding. Panics if this CPU cannot run `t`.
pub fn with_tier<R>(t: Tier, f: impl FnOnce() -> R) -> R {
    use std::sync::atomic::Ordering;
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    assert!(t.runs_here(), "with_tier({t}): this CPU runs only {:?}", Tier::supported());
    // A panicking test poisons the lock; the override is reset below either way.
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FORCED.store(NOT_FORCED, Ordering::Relaxed);
        }
    }
    let _reset = Reset;
    FORCED.store(t as u8, Ordering::Relaxed);
    f()
}

impl Default for CpuDevice {
    fn default() -> Self {
        Self::new()
    }
}

/// What decides the CPU backend's rounding besides the code, for records that must not mix two
/// kinds (`flexlora experiment`'s runs): the architecture, the tier its kernels run, the best tier
/// the CPU has (the `gemm` crate picks its microkernels by that, whatever the tier says) and the
/// widest SIMD the binary was compiled for (`.cargo/config.toml` builds for the build machine).
/// Not the thread count: reductions do not split by thread (greedy completions are the same bits
/// on 1, 2 and 4 threads). E.g. "CPU x86_64, avx512 kernels, avx512 CPU, built for avx512f".
pub fn numerics() -> String {
    let built_for = if cfg!(target_feature = "avx512f") {
        "avx512f"
    } else if cfg!(target_feature = "avx2") {
        "avx2"
    } else if cfg!(target_feature = "simd128") {
        "simd128"
    } else if cfg!(target_feature = "neon") {
        "neon"
    } else {
        "baseline"
    };
    format!("CPU {}, {} kernels, {} CPU, built for {built_for}", std::env::consts::ARCH, tier(), Tier::best())
}

/// Threads the CPU twins run on (1 in the single-threaded browser build).
pub fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    return rayon::current_num_threads();
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    return 1;
}

/// Runs `f` (a whole forward pass) on one of the pool's threads while the pool's other threads
/// stay awake, when called from outside the pool with more than one thread; else runs it here.
///
/// Why: a decoded token is hundreds of small parallel ops. Called from outside the pool, each op is
/// a round trip (the caller hands it to a pool thread and sleeps until it is done); and an idle
/// pool thread goes to sleep within microseconds, so each op also waits for a sleeping thread to
/// wake up. In the browser a wake-up costs tens of microseconds, which kept the second thread from
/// speeding decode up. Here `f` runs on a pool thread, which does its own share of every op and
/// takes back any share no other thread has picked up, and each other thread runs a spinner that
/// keeps taking the pool's pending work until `f` returns (as llama.cpp's threads spin during a
/// graph), so no op waits for a wake-up.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
        use std::sync::atomic::{AtomicBool, Ordering};
        /// Sets the flag when `f` returns or unwinds, so the spinners stop either way.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let done = AtomicBool::new(false);
        return rayon::scope(|s| {
            let owner = rayon::current_thread_index();
            let done = &done;
            for _ in 1..rayon::current_num_threads() {
                s.spawn(move |_| {
                    // The thread running `f` may pick a spinner up while it waits inside `f`: it
                    // must not spin there, since `f` (below it on the stack) sets the flag.
                    if rayon::current_thread_index() == owner {
                        return;
                    }
                    while !done.load(Ordering::Acquire) {
                        if rayon::yield_now() != Some(rayon::Yield::Executed) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            let _done = Done(done);
            f()
        });
    }
    f()
}

/// A pointer into an output that parallel tasks write in disjoint parts, for tasks that call
/// `gemm_ptr` on their own block of a shared matrix.
#[derive(Clone, Copy)]
pub struct SharedOut {
    ptr: *mut f32,
    len: usize,
}
// SAFETY (Send and Sync): only used where every task writes its own elements (see the callers,
// whose SAFETY comments and debug assertions bound each task's block); the wrapped slice stays
// mutably borrowed by the caller for as long as the tasks run.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}
impl SharedOut {
    pub fn new(out: &mut [f32]) -> SharedOut {
        SharedOut { ptr: out.as_mut_ptr(), len: out.len() }
    }

    /// The pointer `i` floats on (a method, so closures capture the `Sync` wrapper, not the field).
    /// Panics past the end of the wrapped slice.
    pub fn at(self, i: usize) -> *mut f32 {
        assert!(i <= self.len, "SharedOut::at({i}) past the end of its {} floats", self.len);
        // SAFETY: i <= len (asserted), so the pointer stays inside (or one past) the allocation.
        unsafe { self.ptr.add(i) }
    }
}

/// Runs `f(i, buffer)` for i in 0..tasks in parallel, each thread reusing one `len`-float buffer.
pub fn for_each_with_buffer(tasks: usize, len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().with_max_len(1).for_each_init(|| vec![0f32; len], |buf, i| f(i, buf));
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    {
        let mut buf = vec![0f32; len];
        (0..tasks).for_each(|i| f(i, &mut buf));
    }
}

/// Runs `f(i, chunk)` over `data.chunks_mut(chunk)`, in parallel where threads exist.
pub fn for_each_chunk<T: Send>(data: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if chunk == 0 || data.is_empty() {
        return;
    }
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    data.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
}

/// Like `for_each_chunk` over two outputs chunked in step (`a` by `ca`, `b` by `cb`).
pub fn for_each_chunk2<T: Send, U: Send>(
    a: &mut [T],
    ca: usize,
    b: &mut [U],
    cb: usize,
    f: impl Fn(usize, &mut [T], &mut [U]) + Sync + Send,
) {
    if ca == 0 || cb == 0 || a.is_empty() {
        return;
    }
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    {
        use rayon::prelude::*;
        a.par_chunks_mut(ca).zip(b.par_chunks_mut(cb)).enumerate().for_each(|(i, (x, y))| f(i, x, y));
    }
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    a.chunks_mut(ca).zip(b.chunks_mut(cb)).enumerate().for_each(|(i, (x, y))| f(i, x, y));
}

/// Strided single-precision GEMM: `c (+)= a · b` where `a` is [m, k] read as
/// `a[i*a_rs + p*a_cs]`, `b` is [k, n] read as `b[p*b_rs + j*b_cs]`, and `c` is row-major [m, n].
/// Strides express transposes for free, which is all matmul's backward needs.
#[allow(clippy::too_many_arguments)]
pub fn gemm(m: usize, n: usize, k: usize, a: &[f32], a_s: (usize, usize), b: &[f32], b_s: (usize, usize), c: &mut [f32], accumulate: bool) {
    gemm_strided(m, n, k, a, a_s, b, b_s, c, n, accumulate)
}

/// `gemm` writing row i of the product at `c[i * c_rs..]` (a column block of a wider matrix).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    c: &mut [f32],
    c_rs: usize,
    accumulate: bool,
) {
    assert!(c_rs >= n && (m == 0 || c.len() >= (m - 1) * c_rs + n), "gemm: output too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * c_rs..i * c_rs + n].fill(0.0);
            }
        }
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, cc: usize| (r - 1) * rs + (cc - 1) * cs;
    assert!(a.len() > last(a_rs, a_cs, m, k) && b.len() > last(b_rs, b_cs, k, n), "gemm: input too small");
    // Decode-sized products x · Wᵀ (a few rows against weight rows, both contiguous along k): the
    // GEMM crate would pack all of W for a handful of dot products, so take them directly,
    // streaming W once.
    if m <= 4 && a_cs == 1 && b_rs == 1 {
        rows_dot(m, n, k, a, a_rs, b, b_cs, c, c_rs, accumulate);
        return;
    }
    let threads = if (m * n * k) as f64 > 64.0 * 64.0 * 64.0 { usize::MAX } else { 1 };
    // SAFETY: the asserts above keep every strided access inside the slices; `c` is exclusively
    // borrowed, and `a`/`b` are shared borrows that cannot alias it.
    unsafe { gemm_ptr(m, n, k, a.as_ptr(), (a_rs, a_cs), b.as_ptr(), (b_rs, b_cs), c.as_mut_ptr(), c_rs, accumulate, threads) }
}

/// `c (+)= a · b` like `gemm`, with every row of `c` computed alone (one `dot` per element: the
/// same sums whatever m is), for a's rows and b's columns contiguous along k (`a_cs == b_rs == 1`,
/// i.e. x · Wᵀ). For inference products whose rows are the sequences sharing a decode step (a LoRA
/// adapter's), so that a sequence's output does not depend on which others are batched with it;
/// `gemm` hands more than 4 rows to the GEMM crate, whose blocking sums in another order.
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_s: (usize, usize),
    b: &[f32],
    b_s: (usize, usize),
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(a_s.1 == 1 && b_s.0 == 1, "gemm_rows: a's rows and b's columns must be contiguous along k");
    if m == 0 || n == 0 {
        return;
    }
    let last = |rs: usize, cs: usize, r: usize, cc: usize| (r - 1) * rs + (cc - 1) * cs;
    assert!(k == 0 || (a.len() > last(a_s.0, 1, m, k) && b.len() > last(1, b_s.1, k, n)), "gemm_rows: input too small");
    assert!(c.len() >= m * n, "gemm_rows: output too small");
    rows_dot(m, n, k, a, a_s.0, b, b_s.1, c, n, accumulate)
}

#[allow(clippy::too_many_arguments)]
fn rows_dot(m: usize, n: usize, k: usize, a: &[f32], a_rs: usize, b: &[f32], b_cs: usize, c: &mut [f32], c_rs: usize, accumulate: bool) {
    for_each_chunk(&mut c[..(m - 1) * c_rs + n], c_rs, |i, row| {
        let row = &mut row[..n];
        let x = &a[i * a_rs..i * a_rs + k];
        for_each_chunk(row, 256, |jc, out| {
            for (jj, o) in out.iter_mut().enumerate() {
                let j = jc * 256 + jj;
                let d = dot(x, &b[j * b_cs..j * b_cs + k]);
                *o = if accumulate { *o + d } else { d };
            }
        });
    });
}

/// The GEMM of `gemm_strided` on raw pointers, on at most `threads` threads (1: the calling thread
/// only). For callers that split one output between their own parallel tasks.
///
/// # Safety
/// Every strided access must be in bounds of its allocation, and no other thread may read or
/// write the elements of `c` this call writes while it runs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_ptr(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
    c: *mut f32,
    c_rs: usize,
    accumulate: bool,
    threads: usize,
) {
    // The part of the contract checkable here (the callers check the extents against their slices).
    debug_assert!(m == 0 || n == 0 || (c_rs >= n && !c.is_null() && (k == 0 || (!a.is_null() && !b.is_null()))));
    #[cfg(any(not(target_arch = "wasm32"), target_feature = "atomics"))]
    let par = match threads.min(rayon::current_num_threads()) {
        0 | 1 => gemm::Parallelism::None,
        t => gemm::Parallelism::Rayon(t),
    };
    #[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
    let par = {
        let _ = threads;
        gemm::Parallelism::None
    };
    // SAFETY: this function's contract (every access in bounds, `c`'s elements ours alone); gemm
    // reads a and b and writes c only at the strided positions of an [m, k]·[k, n] product.
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs as isize,
        accumulate,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

/// Dot product of two equal-length slices, vectorized with AVX2/FMA from the `Avx2` tier up (the
/// AVX-512 tier keeps this 8-wide form: see the history of `dot_avx2`).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if tier() >= Tier::Avx2 {
        // SAFETY: `tier()` only returns tiers this CPU runs, and Avx2 and up include AVX2 + FMA;
        // the body indexes slices only.
        debug_assert_runs(Tier::Avx2);
        return unsafe { dot_avx2(a, b) };
    }
    dot_with::<false>(a, b)
}

/// Sum of a slice in 16 running partial sums (so it vectorizes).
#[inline]
pub fn sum(a: &[f32]) -> f32 {
    sum_lanes::<16>(a)
}

/// Sum of a slice in L running partial sums: more lanes, more independent adds in flight (64 keep
/// up with main memory, see `bench::read_bandwidth`).
#[inline]
pub fn sum_lanes<const L: usize>(a: &[f32]) -> f32 {
    let mut acc = [0f32; L];
    let chunks = a.chunks_exact(L);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..L {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// dst [m, n] = srcᵀ for src [n, m] (row-major): the per-weight-row results of the decode kernels
/// back into token-major order.
pub fn transpose_into(src: &[f32], n: usize, m: usize, dst: &mut [f32]) {
    for nn in 0..n {
        for ti in 0..m {
            dst[ti * n + nn] = src[nn * m + ti];
        }
    }
}

/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    // Compiled for AVX2 + FMA, the 16 accumulators become two 8-wide registers and mul_add one
    // instruction (without FMA hardware mul_add would be a slow library call, hence FUSED).
    dot_with::<true>(a, b)
}

#[inline(always)]
fn dot_with<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] = if FUSED { x[i].mul_add(y[i], acc[i]) } else { acc[i] + x[i] * y[i] };
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// e^x in f32 for the CPU twins' softmax loops, written so the compiler vectorizes it (libm's
/// `expf` is a call per element): 2^k·e^r with k = round(x·log₂e) by the 1.5·2²³ trick, r = x - k·ln2
/// in two parts (Cody-Waite), e^r by its degree-7 Taylor polynomial on |r| ≤ ln2/2. Relative error
/// below 3e-7 (a few ulp); inputs are clamped to [-87, 88], so tiny results are ~1e-38, not 0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let rounded = x * LOG2E + ROUND;
    let k = rounded - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // k as an integer, read from the low bits of `rounded` (whose ulp is 1): unlike `k as i32`,
    // which saturates element by element, this vectorizes.
    let ki = rounded.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    p * f32::from_bits(((ki + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::{tier, with_tier, Tier, TIER_VAR};

    #[test]
    fn tiers_parse_and_force() {
        assert_eq!(Tier::parse(" "), Ok(None));
        assert_eq!(Tier::parse("Portable"), Ok(Some(Tier::Portable)));
        let err = Tier::parse("sse9").unwrap_err();
        assert!(err.contains(TIER_VAR) && err.contains("portable"), "{err}");
        for t in Tier::ALL.into_iter().filter(|t| !t.runs_here()) {
            let err = Tier::parse(t.name()).unwrap_err();
            assert!(err.contains("cannot run") && err.contains(TIER_VAR), "{err}");
        }
        assert_eq!(Tier::supported()[0], Tier::Portable);
        for t in Tier::supported() {
            assert_eq!(with_tier(t, tier), t);
        }
    }

    #[test]
    fn exp_matches_libm() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
    }
}
