//! Threads for the CPU backend in the browser: rayon's global pool, each of its threads a Web
//! Worker (`web/thread.js`) running this same module on the same shared memory. Only in the
//! threaded build (wasm32 with `+atomics`, built by `scripts/build-web.sh` with nightly's
//! `-Z build-std`), which the page loads when it is cross-origin isolated.
//!
//! The order matters, because a thread that blocks (rayon's caller waits on an atomic) must not
//! wait for a worker the browser has not started yet:
//! 1. `thread_pool_new(n)` makes the channel the pool's threads will arrive through;
//! 2. the engine worker starts n Web Workers, each loads the module with [`thread_init_data`]
//!    and calls [`thread_run`], which waits for its rayon thread on the channel;
//! 3. once every worker said it is running, `thread_pool_build` builds rayon's global pool,
//!    whose spawn handler hands each rayon thread to a waiting worker.
//!
//! The engine worker itself is not one of the n threads: it hands work to the pool and waits, as
//! a native caller outside rayon's pool does.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use wasm_bindgen::prelude::*;

/// The pool under construction: the channel between `thread_pool_build` and the waiting workers.
/// Leaked on purpose: rayon's global pool lives as long as the module.
pub struct PoolStart {
    threads: usize,
    send: Mutex<Option<Sender<rayon::ThreadBuilder>>>,
    recv: Mutex<Receiver<rayon::ThreadBuilder>>,
}

/// Step 1: returns a handle (an address in wasm memory) for `threads` workers to wait on.
#[wasm_bindgen]
pub fn thread_pool_new(threads: usize) -> Result<usize, JsValue> {
    if threads == 0 {
        return Err(JsValue::from_str("threads: at least one"));
    }
    let (send, recv) = channel();
    let start = Box::new(PoolStart { threads, send: Mutex::new(Some(send)), recv: Mutex::new(recv) });
    Ok(Box::leak(start) as *const PoolStart as usize)
}

/// What a thread's Web Worker needs to load this module on the shared memory: [module, memory].
#[wasm_bindgen]
pub fn thread_init_data() -> js_sys::Array {
    js_sys::Array::of2(&wasm_bindgen::module(), &wasm_bindgen::memory())
}

fn pool(handle: usize) -> &'static PoolStart {
    // SAFETY: `handle` comes from `thread_pool_new`, whose box is leaked and never freed.
    debug_assert!(handle != 0 && handle % std::mem::align_of::<PoolStart>() == 0, "thread pool handle {handle}");
    unsafe { &*(handle as *const PoolStart) }
}

/// Step 2, in each thread's Web Worker: waits for its rayon thread and runs it (for the life of
/// the pool, which is the life of the page).
#[wasm_bindgen]
pub fn thread_run(handle: usize) {
    let builder = pool(handle).recv.lock().unwrap_or_else(|p| p.into_inner()).recv();
    if let Ok(b) = builder {
        b.run();
    }
}

/// Step 3, in the engine worker once every thread's worker runs: builds rayon's global pool.
/// Returns the number of threads the CPU backend runs on.
#[wasm_bindgen]
pub fn thread_pool_build(handle: usize) -> Result<usize, JsValue> {
    let p = pool(handle);
    let send =
        p.send.lock().unwrap_or_else(|e| e.into_inner()).take().ok_or_else(|| JsValue::from_str("the thread pool was built already"))?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(p.threads)
        .thread_name(|i| format!("flexlora-{i}"))
        .spawn_handler(move |t| send.send(t).map_err(|_| std::io::Error::other("a thread's worker stopped before it started")))
        .build_global()
        .map_err(|e| JsValue::from_str(&format!("rayon's thread pool: {e}")))?;
    Ok(rayon::current_num_threads())
}
