//! The wgpu side: context, kernels, tensors over caller buffers, and the GPU layer.

mod batchnorm;
pub(crate) mod context;
pub(crate) mod kernels;
mod tensor;

pub use batchnorm::GpuBatchNorm;
pub use context::{list_adapters, AdapterSummary, GpuContext};
pub use tensor::GpuTensor;
