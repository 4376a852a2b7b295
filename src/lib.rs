//! Batch normalization in WGSL on wgpu, with PyTorch's semantics, cross-checked against an
//! f64 CPU reference.
//!
//! ```no_run
//! use wgpu_batchnorm::{BatchNorm, BatchNormConfig, Device, GpuContext, Layout};
//! let ctx = GpuContext::new()?;
//! let mut bn = BatchNorm::new(BatchNormConfig::new(3), Device::Gpu(ctx))?;
//! let x = ndarray::Array4::<f32>::ones((2, 3, 4, 4)).into_dyn();
//! let out = bn.forward(x.view(), Layout::ChannelsFirst)?;
//! let grads = bn.backward(x.view(), out.y.view(), Layout::ChannelsFirst)?;
//! # Ok::<(), wgpu_batchnorm::BnError>(())
//! ```
//!
//! Built on wgpu 30 and ndarray 0.16. The layer works on your `wgpu::Device`, `Buffer`s
//! and `CommandEncoder`, which must come from the same major version of wgpu: use the
//! re-exports [`wgpu`] and [`ndarray`], or pin the same versions.
//!
//! The `cli` feature (on by default) builds the `batchnorm` command-line tool; a library
//! user can leave it, and its argument parser, out with `default-features = false`.

pub mod bench;
pub mod config;
// The f64 reference's kernels, on slices whose lengths the layer has checked: reached
// through `BatchNorm` with `Device::Cpu`.
mod cpu;
pub mod error;
pub mod gpu;
pub mod layer;
pub mod npy;
pub mod shape;

pub use config::{BatchNormConfig, Layout, RunningVar};
pub use error::{BnError, Result};
pub use gpu::{GpuBatchNorm, GpuContext, GpuTensor};
pub use layer::{
    BackwardOutput, BatchNorm, BatchStatistics, Device, ForwardOutput, SavedForBackward,
};
pub use shape::Shape;

pub use ndarray;
pub use wgpu;
