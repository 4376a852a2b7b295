//! `BatchNorm`: one layer API over the GPU kernels or the CPU reference.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ndarray::{ArrayD, ArrayViewD};

use crate::config::{BatchNormConfig, Layout, RunningVar};
use crate::cpu;
use crate::error::{BnError, Result};
use crate::gpu::{GpuBatchNorm, GpuContext};
use crate::shape::{expect_same_dims, Shape};

/// num_batches_tracked lives in a u32 on the GPU; both engines keep to that range.
pub(crate) fn check_batch_count(count: u64) -> Result<()> {
    if count > u32::MAX as u64 {
        return Err(BnError::Limit {
            what: "num_batches_tracked",
            value: count,
            limit: u32::MAX as u64,
        });
    }
    Ok(())
}

/// The count after one more training step, refused before it would leave the u32 range.
pub(crate) fn next_batch_count(count: u64) -> Result<u64> {
    if count >= u32::MAX as u64 {
        return Err(BnError::Limit {
            what: "num_batches_tracked after this training step",
            value: count + 1,
            limit: u32::MAX as u64,
        });
    }
    Ok(count + 1)
}

/// A number of its own for every layer made, so that a layer knows its saved statistics.
pub(crate) fn new_layer_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What one forward saved for its backward, as PyTorch's autograd keeps it per call: the
/// shape, and the statistics that normalized that batch (in eval with tracked running
/// statistics, those as they were). Returned by `forward_for_backward` and taken by `backward_from` of the layer that
/// made it, so that a layer applied several times before its backwards (shared weights,
/// siamese branches, pipelined micro-batches) differentiates each call with its own
/// statistics. A GPU layer's holds a buffer of 16 bytes per channel.
#[derive(Clone, Debug)]
pub struct SavedForBackward {
    pub(crate) layer: u64,
    pub(crate) shape: Shape,
    pub(crate) stats: SavedStats,
}

#[derive(Clone, Debug)]
pub(crate) enum SavedStats {
    /// Mean and invstd in f64; `frozen`: the running statistics normalized (eval, tracked).
    Cpu {
        mean: Vec<f64>,
        invstd: Vec<f64>,
        frozen: bool,
    },
    /// A copy of the layer's `saved` buffer after that forward ((center, offset, invstd,
    /// var) per channel), and whether the forward trained.
    Gpu {
        buffer: wgpu::Buffer,
        training: bool,
    },
}

impl SavedForBackward {
    /// The shape of the forward's input (in its own layout), which the backward's must be.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Refuses statistics that another layer saved, or that a forward of another shape did;
    /// returns the statistics.
    pub(crate) fn check(&self, layer: u64, shape: &Shape) -> Result<&SavedStats> {
        if self.layer != layer {
            return Err(BnError::ForeignSaved);
        }
        if self.shape.dims() != shape.dims() {
            return Err(BnError::ShapeMismatch {
                a_name: "the saved forward's x",
                a: self.shape.dims().to_vec(),
                b_name: "x",
                b: shape.dims().to_vec(),
            });
        }
        if self.shape.layout() != shape.layout() {
            return Err(BnError::LayoutMismatch {
                a_name: "the saved forward's x",
                a: self.shape.layout(),
                b_name: "x",
                b: shape.layout(),
            });
        }
        Ok(&self.stats)
    }
}

/// Where a layer runs.
#[derive(Clone, Debug)]
pub enum Device {
    /// The f64 CPU reference.
    Cpu,
    /// The WGSL kernels on this context's device.
    Gpu(Arc<GpuContext>),
}

/// Per-channel batch statistics of a forward pass (f32, as the GPU keeps them).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStatistics {
    /// The batch mean of each channel.
    pub mean: Vec<f32>,
    /// Biased: the variance that normalized the batch.
    pub var: Vec<f32>,
    /// 1 / sqrt(var + eps).
    pub invstd: Vec<f32>,
}

/// What `BatchNorm::forward` returns.
#[derive(Clone, Debug)]
pub struct ForwardOutput {
    /// The output, in the input's shape and layout.
    pub y: ArrayD<f32>,
    /// Present when batch statistics normalized the input (training, or eval untracked); an
    /// empty batch has none.
    pub stats: Option<BatchStatistics>,
}

/// What `BatchNorm::backward` returns.
#[derive(Clone, Debug)]
pub struct BackwardOutput {
    /// The gradient with respect to x, in x's shape and layout.
    pub dx: ArrayD<f32>,
    /// Present when the layer is affine.
    pub dgamma: Option<Vec<f32>>,
    /// Present when the layer is affine.
    pub dbeta: Option<Vec<f32>>,
}

impl BackwardOutput {
    /// PyTorch's gradients of an empty batch: dx empty, dgamma and dbeta zero.
    pub(crate) fn of_empty_batch(shape: &Shape, config: &BatchNormConfig) -> Self {
        let zeros = vec![0.0; config.num_features];
        Self {
            dx: ArrayD::zeros(shape.dims()),
            dgamma: config.affine.then(|| zeros.clone()),
            dbeta: config.affine.then_some(zeros),
        }
    }
}

/// The CPU reference's layer state: f32 parameters as PyTorch stores them, f64 saved stats.
struct CpuBatchNorm {
    config: BatchNormConfig,
    training: bool,
    num_batches_tracked: u64,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    running_mean: Vec<f32>,
    running_var: Vec<f32>,
    /// What the last forward saved, for `backward`.
    saved: Option<SavedForBackward>,
    id: u64,
}

impl CpuBatchNorm {
    fn new(config: BatchNormConfig) -> Result<Self> {
        let n = config.num_features;
        Ok(Self {
            config,
            training: true,
            num_batches_tracked: 0,
            gamma: cpu::filled(n, 1.0, "gamma")?,
            beta: cpu::filled(n, 0.0, "beta")?,
            running_mean: cpu::filled(n, 0.0, "running_mean")?,
            running_var: cpu::filled(n, 1.0, "running_var")?,
            saved: None,
            id: new_layer_id(),
        })
    }

    fn keep(&mut self, shape: Shape, mean: Vec<f64>, invstd: Vec<f64>, frozen: bool) {
        self.saved = Some(SavedForBackward {
            layer: self.id,
            shape,
            stats: SavedStats::Cpu {
                mean,
                invstd,
                frozen,
            },
        });
    }

    fn forward(&mut self, x: ArrayViewD<f32>, layout: Layout) -> Result<ForwardOutput> {
        let shape = Shape::new(x.shape(), layout)?;
        shape.expect_channels(self.config.num_features)?;
        let batch_stats = self.training || !self.config.track_running_stats;
        let counts = self.training && self.config.track_running_stats;
        if shape.is_empty() {
            // PyTorch: y empty, running statistics untouched, the training step counted.
            if counts {
                self.num_batches_tracked = next_batch_count(self.num_batches_tracked)?;
            }
            self.keep(shape.clone(), Vec::new(), Vec::new(), !batch_stats);
            return Ok(ForwardOutput {
                y: ArrayD::zeros(shape.dims()),
                stats: None,
            });
        }
        let data = cpu::contiguous(x, "x in standard layout")?;
        let x = data.as_slice().expect("standard layout");
        // Allocated before the running statistics move, so that a refusal changes nothing.
        let mut y = cpu::filled(x.len(), 0.0f32, "y")?;
        let (mean, invstd, stats) = if batch_stats {
            if shape.per_channel() == 1 {
                return Err(BnError::SingleValuePerChannel {
                    shape: shape.dims().to_vec(),
                });
            }
            let stats = cpu::batch_stats(x, &shape);
            if counts {
                self.num_batches_tracked = next_batch_count(self.num_batches_tracked)?;
                let factor = match self.config.momentum {
                    Some(m) => m as f64,
                    None => 1.0 / self.num_batches_tracked as f64,
                };
                cpu::update_running(
                    &mut self.running_mean,
                    &mut self.running_var,
                    &stats,
                    shape.per_channel(),
                    factor,
                    self.config.running_var == RunningVar::Biased,
                );
            }
            let invstd = stats.invstd(self.config.eps);
            let out = BatchStatistics {
                mean: stats.mean.iter().map(|&v| v as f32).collect(),
                var: stats.var.iter().map(|&v| v as f32).collect(),
                invstd: invstd.iter().map(|&v| v as f32).collect(),
            };
            (stats.mean, invstd, Some(out))
        } else {
            let eps = self.config.eps as f64;
            let mean = self.running_mean.iter().map(|&v| v as f64).collect();
            let invstd = self
                .running_var
                .iter()
                .map(|&v| 1.0 / (v as f64 + eps).sqrt())
                .collect();
            (mean, invstd, None)
        };
        cpu::normalize(x, &shape, &mean, &invstd, &self.gamma, &self.beta, &mut y);
        let y = ArrayD::from_shape_vec(shape.dims(), y).expect("numel matches");
        self.keep(shape, mean, invstd, !batch_stats);
        Ok(ForwardOutput { y, stats })
    }

    /// The forward, and what it saved for `backward_from`.
    fn forward_for_backward(
        &mut self,
        x: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<(ForwardOutput, SavedForBackward)> {
        let out = self.forward(x, layout)?;
        Ok((out, self.saved.clone().expect("kept by forward")))
    }

    /// The shape of x and dy, which must agree and have this layer's channels.
    fn backward_shape(&self, x: &[usize], dy: &[usize], layout: Layout) -> Result<Shape> {
        expect_same_dims(x, dy)?;
        let shape = Shape::new(x, layout)?;
        shape.expect_channels(self.config.num_features)?;
        Ok(shape)
    }

    fn backward(
        &self,
        x: ArrayViewD<f32>,
        dy: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<BackwardOutput> {
        let shape = self.backward_shape(x.shape(), dy.shape(), layout)?;
        match &self.saved {
            Some(saved) if saved.shape == shape => self.differentiate(saved, &shape, x, dy),
            _ => Err(BnError::NoSavedStatistics {
                shape: shape.dims().to_vec(),
            }),
        }
    }

    fn backward_from(
        &self,
        saved: &SavedForBackward,
        x: ArrayViewD<f32>,
        dy: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<BackwardOutput> {
        let shape = self.backward_shape(x.shape(), dy.shape(), layout)?;
        self.differentiate(saved, &shape, x, dy)
    }

    fn differentiate(
        &self,
        saved: &SavedForBackward,
        shape: &Shape,
        x: ArrayViewD<f32>,
        dy: ArrayViewD<f32>,
    ) -> Result<BackwardOutput> {
        let SavedStats::Cpu {
            mean,
            invstd,
            frozen,
        } = saved.check(self.id, shape)?
        else {
            return Err(BnError::ForeignSaved);
        };
        let frozen = *frozen;
        if shape.is_empty() {
            return Ok(BackwardOutput::of_empty_batch(shape, &self.config));
        }
        let x = cpu::contiguous(x, "x in standard layout")?;
        let dy = cpu::contiguous(dy, "dy in standard layout")?;
        let grads = cpu::backward(
            x.as_slice().expect("standard layout"),
            dy.as_slice().expect("standard layout"),
            shape,
            mean,
            invstd,
            &self.gamma,
            frozen,
        )?;
        let affine = self.config.affine;
        let to_f32 = |v: Vec<f64>| v.into_iter().map(|g| g as f32).collect();
        Ok(BackwardOutput {
            dx: ArrayD::from_shape_vec(shape.dims(), grads.dx).expect("numel matches"),
            dgamma: affine.then(|| to_f32(grads.dgamma)),
            dbeta: affine.then(|| to_f32(grads.dbeta)),
        })
    }
}

enum Engine {
    Cpu(Box<CpuBatchNorm>),
    Gpu(Box<GpuBatchNorm>),
}

/// A batch-norm layer with PyTorch's semantics, on the GPU or the CPU reference.
pub struct BatchNorm {
    engine: Engine,
}

impl std::fmt::Debug for BatchNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = f.debug_struct("BatchNorm");
        match &self.engine {
            Engine::Cpu(l) => s
                .field("device", &"Cpu")
                .field("config", &l.config)
                .field("training", &self.is_training())
                .field("num_batches_tracked", &self.num_batches_tracked()),
            Engine::Gpu(l) => s.field("device", &"Gpu").field("layer", l),
        }
        .finish_non_exhaustive()
    }
}

impl BatchNorm {
    /// A layer in training mode with PyTorch's initial state (gamma 1, beta 0, running mean
    /// 0, running variance 1, a count of 0), on the GPU or the CPU reference.
    pub fn new(config: BatchNormConfig, device: Device) -> Result<Self> {
        config.validate()?;
        let engine = match device {
            Device::Cpu => Engine::Cpu(Box::new(CpuBatchNorm::new(config)?)),
            Device::Gpu(ctx) => Engine::Gpu(Box::new(GpuBatchNorm::new(ctx, config)?)),
        };
        Ok(Self { engine })
    }

    /// The settings the layer was made with.
    pub fn config(&self) -> &BatchNormConfig {
        match &self.engine {
            Engine::Cpu(l) => &l.config,
            Engine::Gpu(l) => l.config(),
        }
    }

    /// The GPU layer underneath, for recording into your own command encoder.
    pub fn gpu(&mut self) -> Option<&mut GpuBatchNorm> {
        match &mut self.engine {
            Engine::Cpu(_) => None,
            Engine::Gpu(l) => Some(l),
        }
    }

    /// Training mode, as PyTorch's `train()`: batch statistics normalize, and update the
    /// running statistics where they are tracked.
    pub fn train(&mut self) {
        self.set_training(true)
    }

    /// Eval mode, as PyTorch's `eval()`: the running statistics normalize where they are
    /// tracked (batch statistics otherwise), and nothing is updated.
    pub fn eval(&mut self) {
        self.set_training(false)
    }

    /// `train()` for true, `eval()` for false.
    pub fn set_training(&mut self, training: bool) {
        match &mut self.engine {
            Engine::Cpu(l) => l.training = training,
            Engine::Gpu(l) => l.set_training(training),
        }
    }

    /// Whether the layer is in training mode (the default) rather than eval.
    pub fn is_training(&self) -> bool {
        match &self.engine {
            Engine::Cpu(l) => l.training,
            Engine::Gpu(l) => l.is_training(),
        }
    }

    /// Normalizes x (ranks 2–5, channels at `layout`'s place); on the GPU it uploads x,
    /// submits at once and reads y back. In training it updates the running statistics where
    /// they are tracked; every forward keeps what `backward` needs. Refuses a shape with
    /// other than `num_features` channels, one value per channel where batch statistics
    /// normalize (as PyTorch does), a training step past a count of 2^32 − 1, and a shape
    /// beyond the device's limits.
    pub fn forward(&mut self, x: ArrayViewD<f32>, layout: Layout) -> Result<ForwardOutput> {
        match &mut self.engine {
            Engine::Cpu(l) => l.forward(x, layout),
            Engine::Gpu(l) => l.forward_array(x, layout),
        }
    }

    /// `forward`, which also returns what it saved for its backward: give it to
    /// `backward_from` to differentiate this call whatever forwards came after it.
    pub fn forward_for_backward(
        &mut self,
        x: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<(ForwardOutput, SavedForBackward)> {
        match &mut self.engine {
            Engine::Cpu(l) => l.forward_for_backward(x, layout),
            Engine::Gpu(l) => l.forward_array_for_backward(x, layout),
        }
    }

    /// Gradients for `dy` through the statistics that `saved` holds: those of the
    /// `forward_for_backward` of this layer that returned it, on x's shape and layout
    /// (`ForeignSaved`, `ShapeMismatch` or `LayoutMismatch` otherwise). Gamma is the layer's
    /// when the backward runs (PyTorch refuses a backward after gamma changed in place).
    pub fn backward_from(
        &mut self,
        saved: &SavedForBackward,
        x: ArrayViewD<f32>,
        dy: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<BackwardOutput> {
        match &mut self.engine {
            Engine::Cpu(l) => l.backward_from(saved, x, dy, layout),
            Engine::Gpu(l) => l.backward_array_from(saved, x, dy, layout),
        }
    }

    /// Gradients for `dy`, through the statistics saved by the most recent forward, which
    /// must have had this shape: call it after the forward it differentiates, before the
    /// next forward of the layer. Autograd saves statistics per call; this keeps only the
    /// last forward's: a layer applied twice before its backwards (shared weights, siamese
    /// branches) would differentiate both calls with the second call's statistics, and only
    /// a different shape or layout is refused (`NoSavedStatistics`). Use `forward_for_backward` and
    /// `backward_from` there.
    pub fn backward(
        &mut self,
        x: ArrayViewD<f32>,
        dy: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<BackwardOutput> {
        match &mut self.engine {
            Engine::Cpu(l) => l.backward(x, dy, layout),
            Engine::Gpu(l) => l.backward_array(x, dy, layout),
        }
    }

    /// Training forwards counted so far; `None` where the layer tracks no running statistics.
    pub fn num_batches_tracked(&self) -> Option<u64> {
        match &self.engine {
            Engine::Cpu(l) => l
                .config
                .track_running_stats
                .then_some(l.num_batches_tracked),
            Engine::Gpu(l) => l.num_batches_tracked(),
        }
    }

    /// Sets the count that momentum `None` averages over (as loading PyTorch's
    /// `num_batches_tracked` from a checkpoint); at most 2^32 − 1, where the next training
    /// forward is refused. Refused where the layer tracks no running statistics.
    pub fn set_num_batches_tracked(&mut self, count: u64) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(l) => {
                l.config.check_has("num_batches_tracked")?;
                check_batch_count(count)?;
                l.num_batches_tracked = count;
                Ok(())
            }
            Engine::Gpu(l) => l.set_num_batches_tracked(count),
        }
    }

    /// PyTorch's `reset_running_stats()`: running_mean 0, running_var 1, num_batches_tracked
    /// 0; nothing where the layer tracks no running statistics.
    pub fn reset_running_stats(&mut self) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(l) => {
                if l.config.track_running_stats {
                    l.running_mean.fill(0.0);
                    l.running_var.fill(1.0);
                    l.num_batches_tracked = 0;
                }
                Ok(())
            }
            Engine::Gpu(l) => l.reset_running_stats(),
        }
    }

    /// PyTorch's `reset_parameters()`: `reset_running_stats`, then gamma 1 and beta 0 where
    /// the layer is affine.
    pub fn reset_parameters(&mut self) -> Result<()> {
        match &mut self.engine {
            Engine::Cpu(l) => {
                if l.config.affine {
                    l.gamma.fill(1.0);
                    l.beta.fill(0.0);
                }
            }
            Engine::Gpu(l) => return l.reset_parameters(),
        }
        self.reset_running_stats()
    }
}

macro_rules! channel_vectors {
    ($($get:ident, $set:ident;)*) => {
        impl BatchNorm {
            $(
                /// The per-channel values (read back from the device on the GPU);
                /// refused where the layer does not have them (not affine, not tracked).
                pub fn $get(&self) -> Result<Vec<f32>> {
                    match &self.engine {
                        Engine::Cpu(l) => {
                            l.config.check_has(stringify!($get))?;
                            Ok(l.$get.clone())
                        }
                        Engine::Gpu(l) => l.$get(),
                    }
                }

                /// Sets the per-channel values (one per channel), as loading a
                /// checkpoint; refused where the layer does not have them.
                pub fn $set(&mut self, values: &[f32]) -> Result<()> {
                    match &mut self.engine {
                        Engine::Cpu(l) => {
                            l.config.check_has(stringify!($get))?;
                            if values.len() != l.config.num_features {
                                return Err(BnError::Length {
                                    name: stringify!($get),
                                    expected: l.config.num_features,
                                    got: values.len(),
                                });
                            }
                            l.$get = values.to_vec();
                            Ok(())
                        }
                        Engine::Gpu(l) => l.$set(values),
                    }
                }
            )*
        }
    };
}

channel_vectors! {
    gamma, set_gamma;
    beta, set_beta;
    running_mean, set_running_mean;
    running_var, set_running_var;
}
