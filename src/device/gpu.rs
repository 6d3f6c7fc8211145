//! A wgpu device: buffers, the pipeline cache, kernel dispatch and asynchronous read-back.
//!
//! Dispatches are recorded into one pending command encoder and submitted together when results
//! are read back (or on `flush`), so a chain of ops costs one submit. Nothing here blocks on the
//! GPU: read-back returns a future that resolves from wgpu's `map_async` callback, which is what the
//! browser requires. Natively the future waits for the GPU itself when first polled (wgpu runs
//! callbacks only from `poll` there), so async library code needs no device-aware executor: the
//! front end drives it with `device::block_on`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::shaders::Shader;

/// A compute entry point: a shader file and the name of one of its `@compute` functions.
#[derive(Debug, Clone, Copy)]
pub struct Kernel {
    pub shader: &'static Shader,
    pub entry: &'static str,
}

type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u32)>);

/// One opened adapter. Drive it from one thread at a time on the GL backend: wgpu's GL context lock
/// panics ("Could not lock adapter context") after a 6 s wait, which one slow llvmpipe compile or
/// dispatch on another thread exceeds (the op tests serialize GL work for this reason).
pub struct GpuDevice {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    pending: Mutex<Option<wgpu::CommandEncoder>>,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuDevice({} on {:?})", self.info.name, self.info.backend)
    }
}

impl GpuDevice {
    /// Opens `adapter` with the largest limits it offers (the engine binds big weight buffers).
    /// No optional feature is requested: no kernel uses shader-f16 or subgroups, so every adapter
    /// (GL and the browser's included) runs the same WGSL.
    pub async fn open(adapter: &wgpu::Adapter) -> Result<Self> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("flexlora"),
                required_features: wgpu::Features::empty(),
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|source| Error::RequestDevice { adapter: info.name.clone(), source })?;
        Ok(GpuDevice {
            device,
            queue,
            info,
            limits,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(None),
        })
    }

    /// True for software rasterizers (lavapipe, SwiftShader): correct, but slower than the CPU backend.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    pub fn create_buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            // Storage buffers must be at least 4 bytes and a multiple of 4.
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A new buffer holding `data`. Always a fresh buffer, so an upload can never race with
    /// pending dispatches that read an older one.
    pub fn upload(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        let mut padded;
        let contents = if data.len() % 4 != 0 || data.is_empty() {
            padded = data.to_vec();
            padded.resize(data.len().max(4).next_multiple_of(4), 0);
            &padded[..]
        } else {
            data
        };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
    }

    fn pipeline(&self, kernel: Kernel, constants: &[(&'static str, u32)]) -> wgpu::ComputePipeline {
        let key: PipelineKey = (kernel.shader.name, kernel.entry, constants.to_vec());
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return p.clone();
        }
        let module = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry(kernel.shader.name)
                .or_insert_with(|| {
                    self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(kernel.shader.name),
                        source: wgpu::ShaderSource::Wgsl(kernel.shader.source.into()),
                    })
                })
                .clone()
        };
        let consts: Vec<(&str, f64)> = constants.iter().map(|&(k, v)| (k, v as f64)).collect();
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&format!("{}:{}", kernel.shader.name, kernel.entry)),
            layout: None,
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &consts, ..Default::default() },
            cache: None,
        });
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        pipeline
    }

    /// Records one dispatch of `kernel`. Binding 0 is the uniform `params`; `buffers` lists the
    /// storage bindings the entry point uses as (binding number, (label, buffer)), numbered as the
    /// WGSL declares them.
    pub fn dispatch<P: bytemuck::Pod>(
        &self,
        kernel: Kernel,
        constants: &[(&'static str, u32)],
        params: &P,
        buffers: &[(u32, (&str, &wgpu::Buffer))],
        groups: [u32; 3],
    ) -> Result<()> {
        let max_bind = self.limits.max_storage_buffer_binding_size as u64;
        for (_, (label, buf)) in buffers {
            if buf.size() > max_bind {
                return Err(Error::BufferTooLarge {
                    tensor: label.to_string(),
                    bytes: buf.size(),
                    limit_name: "max_storage_buffer_binding_size",
                    limit: max_bind,
                });
            }
        }
        // OpenGL ES/GL adapters allow as few as 4-16 storage buffers per stage (llvmpipe's GL: 16).
        // Refuse here, naming the limit, instead of letting pipeline creation fail on a validation
        // error (which wgpu turns into a panic).
        let max_storage = self.limits.max_storage_buffers_per_shader_stage;
        if buffers.len() as u32 > max_storage {
            return Err(Error::Limit {
                op: kernel.entry,
                detail: format!(
                    "{}:{} binds {} storage buffers, above this adapter's max_storage_buffers_per_shader_stage ({:?} backend)",
                    kernel.shader.name,
                    kernel.entry,
                    buffers.len(),
                    self.info.backend
                ),
                limit: max_storage as u64,
                hint: "run this op on another backend (--backend vulkan|metal|dx12) or --device cpu",
            });
        }
        let max_groups = self.limits.max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::Limit {
                op: kernel.entry,
                detail: format!("{}:{} needs {:?} workgroups", kernel.shader.name, kernel.entry, groups),
                limit: max_groups as u64,
                hint: "this shape is too large for one dispatch on this adapter; use --device cpu",
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let pipeline = self.pipeline(kernel, constants);
        let mut bytes = bytemuck::bytes_of(params).to_vec();
        bytes.resize(bytes.len().max(16).next_multiple_of(16), 0);
        let uniform = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: &bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        });
        let mut entries = vec![wgpu::BindGroupEntry { binding: 0, resource: uniform.as_entire_binding() }];
        for &(binding, (_, buf)) in buffers {
            entries.push(wgpu::BindGroupEntry { binding, resource: buf.as_entire_binding() });
        }
        let bind_group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let mut pending = self.pending.lock().unwrap();
        let encoder = pending.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(kernel.entry), timestamp_writes: None });
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        Ok(())
    }

    /// Records a buffer-to-buffer copy behind the pending dispatches (offsets and size in bytes,
    /// multiples of 4).
    pub fn copy(&self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, bytes: u64) {
        let mut pending = self.pending.lock().unwrap();
        let encoder = pending.get_or_insert_with(|| self.device.create_command_encoder(&Default::default()));
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes.next_multiple_of(4));
    }

    /// Submits everything recorded so far.
    pub fn flush(&self) {
        if let Some(encoder) = self.pending.lock().unwrap().take() {
            self.queue.submit([encoder.finish()]);
        }
    }

    /// Reads the first `bytes` bytes of `buffer` back to the host, after all pending work.
    pub fn read(&self, label: &str, buffer: &wgpu::Buffer, bytes: u64) -> impl Future<Output = Result<Vec<u8>>> + use<> {
        let padded = bytes.max(4).next_multiple_of(4);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(buffer, 0, &staging, 0, padded);
        self.flush();
        let state = Arc::new(Mutex::new(MapState::default()));
        let cb_state = state.clone();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let mut s = cb_state.lock().unwrap();
            s.result = Some(r.map_err(|e| e.to_string()));
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        });
        let label = label.to_string();
        #[cfg(not(target_arch = "wasm32"))]
        let device = self.device.clone();
        async move {
            MapFuture {
                state,
                #[cfg(not(target_arch = "wasm32"))]
                device,
            }
            .await
            .map_err(|detail| Error::Readback { tensor: label.clone(), detail })?;
            let view = staging.get_mapped_range(..).map_err(|e| Error::Readback { tensor: label, detail: e.to_string() })?;
            let out = view[..bytes as usize].to_vec();
            drop(view);
            staging.unmap();
            Ok(out)
        }
    }

    /// Non-blocking poll: lets wgpu run finished callbacks (no-op in the browser).
    pub fn poll(&self) {
        let _ = self.device.poll(wgpu::PollType::Poll);
    }

    /// Blocks until submitted work finishes. Native front ends only; the library never calls it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) {
        self.flush();
        let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
    }
}

#[derive(Default)]
struct MapState {
    result: Option<std::result::Result<(), String>>,
    waker: Option<Waker>,
}

struct MapFuture {
    state: Arc<Mutex<MapState>>,
    /// Natively, what to wait on: the map callback runs only inside `poll` on this device.
    #[cfg(not(target_arch = "wasm32"))]
    device: wgpu::Device,
}

impl Future for MapFuture {
    type Output = std::result::Result<(), String>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.state.lock().unwrap().result.is_none() {
            // Not under the lock: the callback takes it.
            let _ = self.device.poll(wgpu::PollType::wait_indefinitely());
        }
        let mut s = self.state.lock().unwrap();
        match s.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Splits `n` workgroups over x and y so neither exceeds the per-dimension limit. Kernels that use
/// it rebuild the linear index as `(wid.y * nwg.x + wid.x)`.
pub fn groups_1d(n: u32, max_per_dim: u32) -> [u32; 3] {
    if n <= max_per_dim {
        [n, 1, 1]
    } else {
        let y = n.div_ceil(max_per_dim);
        [n.div_ceil(y), y, 1]
    }
}
