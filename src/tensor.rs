//! Tensors: a shape, a dtype, a label for error messages, and data on the host (CPU backend) or
//! in a wgpu buffer. Ops check shapes and placement; read-back is asynchronous.

use crate::device::Device;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    U32,
    U8,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::U8 => 1,
        }
    }
}

#[derive(Debug, Clone)]
pub enum HostData {
    F32(Vec<f32>),
    U32(Vec<u32>),
    U8(Vec<u8>),
}

#[derive(Debug)]
pub enum Data {
    Host(HostData),
    Gpu(wgpu::Buffer),
}

#[derive(Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    label: String,
    data: Data,
}

impl Tensor {
    fn new(device: &Device, label: &str, shape: &[usize], host: HostData) -> Tensor {
        let dtype = match &host {
            HostData::F32(_) => DType::F32,
            HostData::U32(_) => DType::U32,
            HostData::U8(_) => DType::U8,
        };
        let data = match device {
            Device::Cpu(_) => Data::Host(host),
            Device::Gpu(g) => Data::Gpu(g.upload(label, host_bytes(&host))),
        };
        Tensor { shape: shape.to_vec(), dtype, label: label.to_string(), data }
    }

    fn check_len(label: &str, shape: &[usize], len: usize) -> Result<()> {
        let n: usize = shape.iter().product();
        if n != len {
            return Err(Error::shape("tensor", format!("`{label}`: shape {shape:?} holds {n} elements but {len} were given")));
        }
        Ok(())
    }

    pub fn from_f32(device: &Device, label: &str, shape: &[usize], data: &[f32]) -> Result<Tensor> {
        Self::check_len(label, shape, data.len())?;
        Ok(Self::new(device, label, shape, HostData::F32(data.to_vec())))
    }

    pub fn from_u32(device: &Device, label: &str, shape: &[usize], data: &[u32]) -> Result<Tensor> {
        Self::check_len(label, shape, data.len())?;
        Ok(Self::new(device, label, shape, HostData::U32(data.to_vec())))
    }

    /// As `from_u32`, taking the words: on the CPU they become the tensor without a copy (large
    /// frozen weights, loaded one after another, are never held twice).
    pub fn from_u32_vec(device: &Device, label: &str, shape: &[usize], data: Vec<u32>) -> Result<Tensor> {
        Self::check_len(label, shape, data.len())?;
        Ok(Self::new(device, label, shape, HostData::U32(data)))
    }

    pub fn from_u8(device: &Device, label: &str, shape: &[usize], data: &[u8]) -> Result<Tensor> {
        Self::check_len(label, shape, data.len())?;
        Ok(Self::new(device, label, shape, HostData::U8(data.to_vec())))
    }

    /// A zero-filled tensor (wgpu zero-initializes new buffers).
    pub fn zeros(device: &Device, label: &str, shape: &[usize], dtype: DType) -> Tensor {
        let n: usize = shape.iter().product();
        let data = match device {
            Device::Cpu(_) => Data::Host(match dtype {
                DType::F32 => HostData::F32(vec![0.0; n]),
                DType::U32 => HostData::U32(vec![0; n]),
                DType::U8 => HostData::U8(vec![0; n]),
            }),
            Device::Gpu(g) => Data::Gpu(g.create_buffer(label, (n * dtype.size()) as u64)),
        };
        Tensor { shape: shape.to_vec(), dtype, label: label.to_string(), data }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn label(&self) -> &str {
        &self.label
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn bytes(&self) -> u64 {
        (self.numel() * self.dtype.size()) as u64
    }
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The same data under a new shape with the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Tensor> {
        Self::check_len(&self.label, shape, self.numel())?;
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Checks the dtype for `op`.
    pub fn expect(&self, op: &'static str, dtype: DType) -> Result<&Self> {
        if self.dtype != dtype {
            return Err(Error::DType { op, tensor: self.label.clone(), found: self.dtype, expected: dtype });
        }
        Ok(self)
    }

    fn wrong_device(&self, op: &'static str, expected: &'static str) -> Error {
        let found = match self.data {
            Data::Host(_) => "CPU",
            Data::Gpu(_) => "GPU",
        };
        Error::WrongDevice { op, tensor: self.label.clone(), found, expected }
    }

    pub fn host_f32(&self, op: &'static str) -> Result<&[f32]> {
        match &self.data {
            Data::Host(HostData::F32(v)) => Ok(v),
            Data::Host(_) => Err(Error::DType { op, tensor: self.label.clone(), found: self.dtype, expected: DType::F32 }),
            Data::Gpu(_) => Err(self.wrong_device(op, "CPU")),
        }
    }

    pub fn host_f32_mut(&mut self, op: &'static str) -> Result<&mut [f32]> {
        let err = self.wrong_device(op, "CPU");
        let (label, found) = (self.label.clone(), self.dtype);
        match &mut self.data {
            Data::Host(HostData::F32(v)) => Ok(v),
            Data::Host(_) => Err(Error::DType { op, tensor: label, found, expected: DType::F32 }),
            Data::Gpu(_) => Err(err),
        }
    }

    pub fn host_u32(&self, op: &'static str) -> Result<&[u32]> {
        match &self.data {
            Data::Host(HostData::U32(v)) => Ok(v),
            Data::Host(_) => Err(Error::DType { op, tensor: self.label.clone(), found: self.dtype, expected: DType::U32 }),
            Data::Gpu(_) => Err(self.wrong_device(op, "CPU")),
        }
    }

    pub fn buffer(&self, op: &'static str) -> Result<&wgpu::Buffer> {
        match &self.data {
            Data::Gpu(b) => Ok(b),
            Data::Host(_) => Err(self.wrong_device(op, "GPU")),
        }
    }

    /// A binding for `GpuDevice::dispatch`: the label (for limit errors) and the buffer.
    pub fn bind(&self, op: &'static str) -> Result<(&str, &wgpu::Buffer)> {
        Ok((&self.label, self.buffer(op)?))
    }

    /// Copies the data to the host. On the GPU this waits (asynchronously) for pending work.
    pub async fn to_host(&self, device: &Device) -> Result<HostData> {
        match (&self.data, device) {
            (Data::Host(h), _) => Ok(h.clone()),
            (Data::Gpu(b), Device::Gpu(g)) => {
                let bytes = g.read(&self.label, b, self.bytes()).await?;
                Ok(match self.dtype {
                    DType::F32 => HostData::F32(bytemuck::pod_collect_to_vec(&bytes)),
                    DType::U32 => HostData::U32(bytemuck::pod_collect_to_vec(&bytes)),
                    DType::U8 => HostData::U8(bytes),
                })
            }
            (Data::Gpu(_), Device::Cpu(_)) => Err(self.wrong_device("read-back", "CPU")),
        }
    }

    pub async fn to_vec_f32(&self, device: &Device) -> Result<Vec<f32>> {
        match self.to_host(device).await? {
            HostData::F32(v) => Ok(v),
            _ => Err(Error::DType { op: "to_vec_f32", tensor: self.label.clone(), found: self.dtype, expected: DType::F32 }),
        }
    }

    /// Copies the tensor to `to` (host data is uploaded; GPU data is read back first).
    pub async fn to_device(&self, from: &Device, to: &Device) -> Result<Tensor> {
        let host = self.to_host(from).await?;
        Ok(Tensor::new(to, &self.label, &self.shape, host))
    }
}

fn host_bytes(h: &HostData) -> &[u8] {
    match h {
        HostData::F32(v) => bytemuck::cast_slice(v),
        HostData::U32(v) => bytemuck::cast_slice(v),
        HostData::U8(v) => v,
    }
}

impl Tensor {
    /// Copies `n` elements of `src` starting at element `src_at` into `self` at element `dst_at`
    /// (same dtype): KV-cache appends and row slices. Ordered after pending GPU work.
    pub fn copy_from(&mut self, dev: &Device, src: &Tensor, src_at: usize, dst_at: usize, n: usize) -> Result<()> {
        const OP: &str = "copy";
        src.expect(OP, self.dtype)?;
        if src_at + n > src.numel() || dst_at + n > self.numel() {
            return Err(Error::shape(
                OP,
                format!(
                    "{n} elements from `{}`[{src_at}..] ({}) into `{}`[{dst_at}..] ({})",
                    src.label,
                    src.numel(),
                    self.label,
                    self.numel()
                ),
            ));
        }
        let size = self.dtype.size();
        match (dev, &mut self.data, &src.data) {
            (_, Data::Host(HostData::F32(d)), Data::Host(HostData::F32(s))) => {
                d[dst_at..dst_at + n].copy_from_slice(&s[src_at..src_at + n])
            }
            (_, Data::Host(HostData::U32(d)), Data::Host(HostData::U32(s))) => {
                d[dst_at..dst_at + n].copy_from_slice(&s[src_at..src_at + n])
            }
            (_, Data::Host(HostData::U8(d)), Data::Host(HostData::U8(s))) => d[dst_at..dst_at + n].copy_from_slice(&s[src_at..src_at + n]),
            (Device::Gpu(g), Data::Gpu(d), Data::Gpu(s)) if size == 4 => {
                g.copy(s, (src_at * size) as u64, d, (dst_at * size) as u64, (n * size) as u64)
            }
            _ => return Err(self.wrong_device(OP, dev.kind())),
        }
        Ok(())
    }

    /// Rows `start..start + count` of a 2-D view ([rows, cols], leading dims flattened) as a new tensor.
    pub fn rows(&self, dev: &Device, start: usize, count: usize) -> Result<Tensor> {
        let cols = *self.shape.last().unwrap_or(&1);
        let mut out = Tensor::zeros(dev, &format!("{}.rows", self.label), &[count, cols], self.dtype);
        out.copy_from(dev, self, start * cols, 0, count * cols)?;
        Ok(out)
    }
}

/// [rows, cols] of a tensor whose leading dimensions are flattened into rows.
pub fn dims2(t: &Tensor) -> (usize, usize) {
    let s = t.shape();
    let cols = *s.last().unwrap_or(&1);
    (if cols == 0 { 0 } else { t.numel() / cols }, cols)
}

/// Checks that `t` has exactly `shape`, naming the tensor and op on failure.
pub fn check_shape(op: &'static str, t: &Tensor, shape: &[usize]) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::shape(op, format!("`{}` has shape {:?}, expected {:?}", t.label(), t.shape(), shape)));
    }
    Ok(())
}
