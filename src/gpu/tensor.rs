//! A view of a caller's `wgpu::Buffer` as a batch-norm tensor.

use crate::config::Layout;
use crate::error::{BnError, Result};
use crate::gpu::kernels::Chunk;
use crate::shape::Shape;

/// A float32 tensor stored in a caller's buffer from `offset` on, C-contiguous in `layout`.
///
/// The buffer must belong to the layer's device (`GpuContext::device`). One of another
/// device of the same `wgpu::Instance` is refused (`BnError::Wgpu`) by any pass that binds
/// it (an empty batch binds nothing); one of another instance cannot be told apart in wgpu
/// 30, whose ids are numbered per instance, and may be taken for a buffer of this instance
/// or make wgpu panic. It must be unmapped when the encoder is submitted.
#[derive(Clone, Debug)]
pub struct GpuTensor<'a> {
    pub(crate) buffer: &'a wgpu::Buffer,
    pub(crate) offset: u64,
    pub(crate) shape: Shape,
}

impl<'a> GpuTensor<'a> {
    /// The tensor at the start of `buffer`. Refuses a shape `Shape::new` refuses, a buffer
    /// without STORAGE usage, and one too small for the shape.
    pub fn new(buffer: &'a wgpu::Buffer, dims: &[usize], layout: Layout) -> Result<Self> {
        Self::with_offset(buffer, 0, dims, layout)
    }

    /// The tensor at byte `offset` of `buffer`, refused as `new` refuses. `offset` must be a
    /// multiple of the device's `min_storage_buffer_offset_alignment` (checked when the
    /// tensor is used).
    pub fn with_offset(
        buffer: &'a wgpu::Buffer,
        offset: u64,
        dims: &[usize],
        layout: Layout,
    ) -> Result<Self> {
        let shape = Shape::new(dims, layout)?;
        if !buffer.usage().contains(wgpu::BufferUsages::STORAGE) {
            return Err(BnError::Buffer {
                name: "tensor",
                reason: format!("usage {:?} lacks STORAGE", buffer.usage()),
            });
        }
        let needed = offset.saturating_add(shape.numel() as u64 * 4);
        if buffer.size() < needed {
            return Err(BnError::Buffer {
                name: "tensor",
                reason: format!(
                    "{} bytes hold no {:?} f32 tensor at offset {} ({} bytes needed)",
                    buffer.size(),
                    dims,
                    offset,
                    needed
                ),
            });
        }
        Ok(Self {
            buffer,
            offset,
            shape,
        })
    }

    /// The dims and layout the tensor was made with.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The bytes of one chunk of rows (see `Geometry::chunks`).
    pub(crate) fn chunk_binding(&self, chunk: &Chunk) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.offset + chunk.offset,
            size: wgpu::BufferSize::new(chunk.bytes),
        })
    }

    pub(crate) fn binding(&self) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.offset,
            size: wgpu::BufferSize::new(self.shape.numel() as u64 * 4),
        })
    }
}
