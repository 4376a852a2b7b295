//! The GPU batch-norm layer: parameters and running statistics in device buffers, passes
//! recorded into the caller's command encoder, and an upload/run/read-back path for ndarray.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ndarray::{ArrayD, ArrayViewD};

use crate::config::{BatchNormConfig, Layout, RunningVar};
use crate::error::{BnError, Result};
use crate::gpu::context::GpuContext;
use crate::gpu::kernels::{
    max_channels, Geometry, Kernel, Params, BIASED_RUNNING_VAR, FINALIZE_WORKGROUP, FROZEN_STATS,
    UPDATE_RUNNING,
};
use crate::gpu::tensor::GpuTensor;
use crate::layer::{
    check_batch_count, new_layer_id, next_batch_count, BackwardOutput, BatchStatistics,
    ForwardOutput, SavedForBackward, SavedStats,
};
use crate::shape::{expect_same_dims, Shape};

const PER_CHANNEL: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);
const STAGING: wgpu::BufferUsages =
    wgpu::BufferUsages::MAP_READ.union(wgpu::BufferUsages::COPY_DST);

/// Everything one input shape needs, made on its first use and reused after.
struct Plan {
    geometry: Geometry,
    /// Uniforms for passes recorded in training and in eval mode (they differ in flags).
    params_train: Uniforms,
    params_eval: Uniforms,
    /// forward_fused's uniform, when the shape allows a single-read forward.
    params_fused: Option<wgpu::Buffer>,
    partials: wgpu::Buffer,
    /// Buffers for the ndarray path, made on its first use.
    io: Option<IoBuffers>,
    /// When the layer last used this plan, for evicting the least recent.
    last_used: u64,
}

/// Plans a layer keeps: a training loop meets a few shapes (the last batch is often smaller),
/// not an unbounded number, and each plan holds buffers.
const MAX_PLANS: usize = 8;

/// One Params per chunk of a shape, then the per-channel kernels' (`Geometry::channel_params`),
/// `stride` bytes apart.
struct Uniforms {
    buffer: wgpu::Buffer,
    stride: u64,
    chunks: usize,
}

impl Uniforms {
    fn slot(&self, chunk: usize) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: &self.buffer,
            offset: chunk as u64 * self.stride,
            size: wgpu::BufferSize::new(std::mem::size_of::<Params>() as u64),
        })
    }

    fn channel_slot(&self) -> wgpu::BindingResource<'_> {
        self.slot(self.chunks)
    }
}

struct IoBuffers {
    x: wgpu::Buffer,
    dy: wgpu::Buffer,
    out: wgpu::Buffer,
    /// Holds the tensor result followed by per-channel results.
    staging: wgpu::Buffer,
}

/// What the last forward pass saved for backward.
#[derive(Clone, Debug, PartialEq)]
struct Saved {
    shape: Shape,
    training: bool,
}

/// One dispatch, prepared before anything is recorded: a caller's encoder is touched only
/// once every bind group of the pass was made without error, as an invalid one would make
/// the caller's whole encoder fail at finish().
struct Step<'k> {
    kernel: &'k Kernel,
    bind: wgpu::BindGroup,
    groups: (u32, u32, u32),
}

fn record(encoder: &mut wgpu::CommandEncoder, label: &str, steps: &[Step]) {
    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    for step in steps {
        step.kernel.dispatch(&mut pass, &step.bind, step.groups);
    }
}

/// A batch-norm layer on the GPU that records its passes into the caller's command encoder,
/// on the caller's buffers (`GpuTensor`s). It owns its parameters (gamma, beta), running
/// statistics and gradients (dgamma, dbeta) as buffers of the context's device; the setters
/// and getters move parameters and running statistics between host and device, and the
/// gradients are read from `dgamma_buffer`/`dbeta_buffer` (or returned by the `*_array`
/// backwards). `BatchNorm` wraps it with an ndarray API.
pub struct GpuBatchNorm {
    ctx: Arc<GpuContext>,
    config: BatchNormConfig,
    training: bool,
    num_batches_tracked: u64,
    gamma: wgpu::Buffer,
    beta: wgpu::Buffer,
    running_mean: wgpu::Buffer,
    running_var: wgpu::Buffer,
    /// num_batches_tracked as the shaders see it, one u32 per channel.
    batches_tracked: wgpu::Buffer,
    /// Per channel (center, offset, invstd, var) of the last forward; mean = center + offset.
    saved: wgpu::Buffer,
    /// Per channel coefficients handed from a finalize kernel to an element-wise kernel.
    coeff: wgpu::Buffer,
    dgamma: wgpu::Buffer,
    dbeta: wgpu::Buffer,
    /// Whether a backward adds its dgamma and dbeta to the buffers' contents.
    accumulate_param_grads: bool,
    /// Where the getters read a per-channel buffer back. They take `&self` and the layer is
    /// `Sync`, so reads from several threads take turns with it: one read's copy into it, and
    /// its mapping, must not meet another's.
    channel_staging: Mutex<wgpu::Buffer>,
    saved_for_backward: Option<Saved>,
    /// A count set since the last recorded training forward, copied into `batches_tracked`
    /// ahead of the next one (see set_num_batches_tracked).
    pending_count: Option<wgpu::Buffer>,
    plans: HashMap<Shape, Plan>,
    /// Counts plan lookups, to order plans by recent use.
    uses: u64,
    /// Whose saved statistics are whose (SavedForBackward).
    id: u64,
}

impl std::fmt::Debug for GpuBatchNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBatchNorm")
            .field("config", &self.config)
            .field("training", &self.training)
            .field("num_batches_tracked", &self.num_batches_tracked())
            .field("ctx", &self.ctx)
            .finish_non_exhaustive()
    }
}

impl GpuBatchNorm {
    /// A layer in training mode with PyTorch's initial state: gamma 1, beta 0, running mean
    /// 0, running variance 1, a count of 0. Refuses a config that `validate` refuses, and
    /// more channels than the device's limits leave room for.
    pub fn new(ctx: Arc<GpuContext>, config: BatchNormConfig) -> Result<Self> {
        config.validate()?;
        let c = config.num_features as u64;
        // Refused here, not at the first forward: an empty batch plans no geometry.
        let most = max_channels(ctx.limits());
        if c > most {
            return Err(BnError::Limit {
                what: "channels",
                value: c,
                limit: most,
            });
        }
        let buf = |label, bytes, usage| ctx.create_buffer(label, bytes, usage);
        let layer = Self {
            gamma: buf("gamma", c * 4, PER_CHANNEL)?,
            beta: buf("beta", c * 4, PER_CHANNEL)?,
            running_mean: buf("running_mean", c * 4, PER_CHANNEL)?,
            running_var: buf("running_var", c * 4, PER_CHANNEL)?,
            batches_tracked: buf("batches_tracked", c * 4, PER_CHANNEL)?,
            saved: buf("saved", c * 16, PER_CHANNEL)?,
            coeff: buf("coeff", c * 16, wgpu::BufferUsages::STORAGE)?,
            dgamma: buf("dgamma", c * 4, PER_CHANNEL)?,
            dbeta: buf("dbeta", c * 4, PER_CHANNEL)?,
            accumulate_param_grads: false,
            channel_staging: Mutex::new(buf("channel staging", c * 16, STAGING)?),
            ctx,
            config,
            training: true,
            num_batches_tracked: 0,
            saved_for_backward: None,
            pending_count: None,
            plans: HashMap::new(),
            uses: 0,
            id: new_layer_id(),
        };
        let n = layer.config.num_features;
        layer.write(&layer.gamma, &vec![1.0; n])?;
        layer.write(&layer.beta, &vec![0.0; n])?;
        layer.write(&layer.running_mean, &vec![0.0; n])?;
        layer.write(&layer.running_var, &vec![1.0; n])?;
        layer.write_counts(0)?;
        Ok(layer)
    }

    /// The settings the layer was made with.
    pub fn config(&self) -> &BatchNormConfig {
        &self.config
    }

    /// The context whose device holds the layer's buffers; tensors and encoders must be of
    /// its device.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Training (batch statistics, running statistics updated) or eval (running statistics
    /// used), as PyTorch's `train()` / `eval()`, where running statistics are tracked;
    /// untracked, both use batch statistics and update nothing. Takes effect for passes
    /// recorded after it.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    /// Whether the layer is in training mode (the default) rather than eval.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Batch statistics normalize in training, and in eval when none are tracked.
    fn uses_batch_stats(&self) -> bool {
        self.training || !self.config.track_running_stats
    }

    /// Training forwards counted so far; `None` where the layer tracks no running statistics.
    pub fn num_batches_tracked(&self) -> Option<u64> {
        self.config
            .track_running_stats
            .then_some(self.num_batches_tracked)
    }

    fn write(&self, buffer: &wgpu::Buffer, values: &[f32]) -> Result<()> {
        self.ctx.scoped("parameter upload", || {
            self.ctx
                .queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(values));
            Ok(())
        })
    }

    fn write_counts(&self, count: u32) -> Result<()> {
        let counts = vec![count; self.config.num_features];
        self.ctx.scoped("parameter upload", || {
            self.ctx
                .queue
                .write_buffer(&self.batches_tracked, 0, bytemuck::cast_slice(&counts));
            Ok(())
        })
    }

    fn check_len(&self, name: &'static str, values: &[f32]) -> Result<()> {
        if values.len() != self.config.num_features {
            return Err(BnError::Length {
                name,
                expected: self.config.num_features,
                got: values.len(),
            });
        }
        Ok(())
    }

    /// Writes gamma (one value per channel) at once, through the queue: a pass recorded
    /// before and submitted after this call reads the new values. The same holds for the
    /// other setters but `set_num_batches_tracked`. Refused where the layer is not affine.
    pub fn set_gamma(&mut self, values: &[f32]) -> Result<()> {
        self.config.check_has("gamma")?;
        self.check_len("gamma", values)?;
        self.write(&self.gamma, values)
    }

    /// Writes beta (one value per channel) at once, as `set_gamma` does.
    pub fn set_beta(&mut self, values: &[f32]) -> Result<()> {
        self.config.check_has("beta")?;
        self.check_len("beta", values)?;
        self.write(&self.beta, values)
    }

    /// Writes the running mean (one value per channel) at once, as `set_gamma` does. Refused
    /// where the layer tracks no running statistics.
    pub fn set_running_mean(&mut self, values: &[f32]) -> Result<()> {
        self.config.check_has("running_mean")?;
        self.check_len("running_mean", values)?;
        self.write(&self.running_mean, values)
    }

    /// Writes the running variance at once, as `set_running_mean` does.
    pub fn set_running_var(&mut self, values: &[f32]) -> Result<()> {
        self.config.check_has("running_var")?;
        self.check_len("running_var", values)?;
        self.write(&self.running_var, values)
    }

    /// Unlike the other setters, the count follows the order of recording, as
    /// `num_batches_tracked()` does: it reaches the GPU by a copy recorded ahead of the next
    /// training forward, the only pass that reads it. Written at once, it would land before a forward recorded earlier but not yet
    /// submitted, which would then count itself on top of it.
    pub fn set_num_batches_tracked(&mut self, count: u64) -> Result<()> {
        self.config.check_has("num_batches_tracked")?;
        check_batch_count(count)?;
        let counts = vec![count as u32; self.config.num_features];
        self.pending_count = Some(self.ctx.create_buffer_init(
            "num_batches_tracked",
            bytemuck::cast_slice(&counts),
            wgpu::BufferUsages::COPY_SRC,
        )?);
        self.num_batches_tracked = count;
        Ok(())
    }

    /// PyTorch's `reset_running_stats()`: running_mean 0, running_var 1, num_batches_tracked
    /// 0; nothing where the layer tracks no running statistics. Made of the setters, it
    /// reaches the GPU as they do: the statistics at once, the count in recording order.
    /// Call it when no recorded forward awaits submission: one that does would update the
    /// reset statistics with its old count (momentum None: a mean of 0 weighed as n batches).
    pub fn reset_running_stats(&mut self) -> Result<()> {
        if !self.config.track_running_stats {
            return Ok(());
        }
        let c = self.config.num_features;
        // The count first: it makes a buffer, the one step here that can fail short of a lost
        // device, and a failure should leave the statistics as they were.
        self.set_num_batches_tracked(0)?;
        self.set_running_mean(&vec![0.0; c])?;
        self.set_running_var(&vec![1.0; c])
    }

    /// PyTorch's `reset_parameters()`: `reset_running_stats`, then gamma 1 and beta 0 where
    /// the layer is affine, written at once as the setters are (a pass recorded and not yet
    /// submitted meets them).
    pub fn reset_parameters(&mut self) -> Result<()> {
        self.reset_running_stats()?;
        if self.config.affine {
            let c = self.config.num_features;
            self.set_gamma(&vec![1.0; c])?;
            self.set_beta(&vec![0.0; c])?;
        }
        Ok(())
    }

    /// The layer's own buffers, one f32 per channel, for a caller that reads or writes them
    /// on the GPU (an optimizer step, a copy into a checkpoint). None may serve as a tensor
    /// of a pass. Where the layer is not affine, gamma and beta still feed every pass and
    /// must stay 1 and 0; where it tracks no running statistics, theirs are unused.
    pub fn gamma_buffer(&self) -> &wgpu::Buffer {
        &self.gamma
    }
    /// See `gamma_buffer`.
    pub fn beta_buffer(&self) -> &wgpu::Buffer {
        &self.beta
    }
    /// See `gamma_buffer`.
    pub fn running_mean_buffer(&self) -> &wgpu::Buffer {
        &self.running_mean
    }
    /// See `gamma_buffer`.
    pub fn running_var_buffer(&self) -> &wgpu::Buffer {
        &self.running_var
    }
    /// dgamma of the last backward pass (meaningful when affine), or the sum over the
    /// backward passes since `zero_param_grads` where `set_accumulate_param_grads(true)`.
    pub fn dgamma_buffer(&self) -> &wgpu::Buffer {
        &self.dgamma
    }
    /// dbeta, as `dgamma_buffer` holds dgamma.
    pub fn dbeta_buffer(&self) -> &wgpu::Buffer {
        &self.dbeta
    }

    /// Reads gamma back from the device, waiting for work submitted so far: the values after
    /// every submitted pass. Refused where the layer is not affine. `beta`, `running_mean`
    /// and `running_var` do the same for their buffers (`num_batches_tracked` is kept on the
    /// host and counts recorded forwards, submitted or not).
    pub fn gamma(&self) -> Result<Vec<f32>> {
        self.config.check_has("gamma")?;
        self.read_channels(&self.gamma, 1)
    }
    /// Reads beta back, as `gamma` does.
    pub fn beta(&self) -> Result<Vec<f32>> {
        self.config.check_has("beta")?;
        self.read_channels(&self.beta, 1)
    }
    /// Reads the running mean back, as `gamma` does; refused where the layer tracks no
    /// running statistics.
    pub fn running_mean(&self) -> Result<Vec<f32>> {
        self.config.check_has("running_mean")?;
        self.read_channels(&self.running_mean, 1)
    }
    /// Reads the running variance back, as `running_mean` does.
    pub fn running_var(&self) -> Result<Vec<f32>> {
        self.config.check_has("running_var")?;
        self.read_channels(&self.running_var, 1)
    }

    /// Reads `width` f32 per channel from a per-channel buffer.
    fn read_channels(&self, buffer: &wgpu::Buffer, width: u64) -> Result<Vec<f32>> {
        let bytes = self.config.num_features as u64 * 4 * width;
        // A poisoned lock only means that another read panicked; the buffer is still usable
        // (read_staging leaves it unmapped on every return), or its misuse is an error that
        // the scope returns.
        let staging = self
            .channel_staging
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.ctx.scoped("parameter read-back", || {
            let mut encoder = self.ctx.device.create_command_encoder(&Default::default());
            encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
            self.ctx.submit(encoder, "read-back copy")?;
            self.ctx.read_mapped(&staging, bytes)
        })
    }

    fn plan(&mut self, shape: &Shape) -> Result<&mut Plan> {
        self.uses += 1;
        if !self.plans.contains_key(shape) {
            // A shape the device cannot run is refused before it costs a kept plan its place.
            let geometry = Geometry::new(shape, self.ctx.limits(), self.ctx.tuning())?;
            let biased = match self.config.running_var {
                RunningVar::Biased => BIASED_RUNNING_VAR,
                RunningVar::Unbiased => 0,
            };
            let tracked = self.config.track_running_stats;
            let fill = |params: &Params, flags: u32| Params {
                flags: params.flags | flags | biased,
                eps: self.config.eps,
                momentum: self.config.momentum.unwrap_or(-1.0),
                ..*params
            };
            // One slot per chunk and one for the per-channel kernels, at offsets a uniform
            // binding may start at.
            let stride = (std::mem::size_of::<Params>() as u64)
                .next_multiple_of(self.ctx.limits().min_uniform_buffer_offset_alignment as u64);
            let chunks = geometry.chunks.len();
            let uniforms = |flags: u32| -> Result<Uniforms> {
                let buffer = self.ctx.create_buffer(
                    "params",
                    stride * (chunks as u64 + 1),
                    wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                )?;
                let slots = geometry.chunks.iter().map(|chunk| chunk.params);
                for (i, params) in slots.chain([geometry.channel_params()]).enumerate() {
                    let params = fill(&params, flags);
                    self.ctx.queue.write_buffer(
                        &buffer,
                        i as u64 * stride,
                        bytemuck::bytes_of(&params),
                    );
                }
                Ok(Uniforms {
                    buffer,
                    stride,
                    chunks,
                })
            };
            let plan = Plan {
                params_train: uniforms(if tracked { UPDATE_RUNNING } else { 0 })?,
                params_eval: uniforms(if tracked { FROZEN_STATS } else { 0 })?,
                params_fused: match geometry.fused_params() {
                    Some(params) => {
                        let buffer = self.ctx.create_buffer(
                            "fused params",
                            stride,
                            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                        )?;
                        let params = fill(&params, 0);
                        self.ctx
                            .queue
                            .write_buffer(&buffer, 0, bytemuck::bytes_of(&params));
                        Some(buffer)
                    }
                    None => None,
                },
                partials: self.ctx.create_buffer(
                    "partials",
                    geometry.partials_bytes(),
                    wgpu::BufferUsages::STORAGE,
                )?,
                geometry,
                io: None,
                last_used: 0,
            };
            // Kept beside the others until the call succeeds (settle_plans): a call that fails
            // costs no kept plan its place.
            self.plans.insert(shape.clone(), plan);
        }
        let plan = self.plans.get_mut(shape).expect("inserted above");
        plan.last_used = self.uses;
        Ok(plan)
    }

    /// After a call that may have made `shape`'s plan (`had`: it was there before): on
    /// success, drops the least recently used plans past MAX_PLANS, but never `shape`'s nor
    /// the one backward still needs; on failure, drops the plan the call made, so that a
    /// refused call leaves the cache as it was.
    fn settle_plans<T>(&mut self, shape: &Shape, had: bool, result: Result<T>) -> Result<T> {
        if result.is_err() {
            if !had {
                self.plans.remove(shape);
            }
            return result;
        }
        while self.plans.len() > MAX_PLANS {
            let keep = self.saved_for_backward.as_ref().map(|s| &s.shape);
            let oldest = self
                .plans
                .iter()
                .filter(|(s, _)| *s != shape && Some(*s) != keep)
                .min_by_key(|(_, plan)| plan.last_used)
                .map(|(s, _)| s.clone());
            match oldest {
                Some(s) => self.plans.remove(&s),
                None => break,
            };
        }
        result
    }

    /// Checks that the tensors share one shape with num_features channels, sit at bindable
    /// offsets, that no output aliases an input, and that none is one of the layer's own
    /// buffers.
    fn check_tensors(
        &self,
        inputs: &[(&'static str, &GpuTensor)],
        (output_name, output): (&'static str, &GpuTensor),
    ) -> Result<()> {
        let shape = &inputs[0].1.shape;
        shape.expect_channels(self.config.num_features)?;
        let align = self.ctx.limits().min_storage_buffer_offset_alignment as u64;
        // The pass writes these (and reads the running statistics): as a tensor, one would be
        // overwritten or change under the pass, without a wgpu error.
        let own = [
            &self.gamma,
            &self.beta,
            &self.running_mean,
            &self.running_var,
            &self.dgamma,
            &self.dbeta,
        ];
        for &(name, t) in inputs.iter().chain([&(output_name, output)]) {
            if t.shape.dims() != shape.dims() {
                return Err(BnError::ShapeMismatch {
                    a_name: "x",
                    a: shape.dims().to_vec(),
                    b_name: name,
                    b: t.shape.dims().to_vec(),
                });
            }
            if t.shape.layout() != shape.layout() {
                return Err(BnError::LayoutMismatch {
                    a_name: "x",
                    a: shape.layout(),
                    b_name: name,
                    b: t.shape.layout(),
                });
            }
            if t.offset % align != 0 {
                return Err(BnError::Buffer {
                    name,
                    reason: format!(
                        "offset {} is not a multiple of min_storage_buffer_offset_alignment {align}",
                        t.offset
                    ),
                });
            }
            if own.contains(&t.buffer) {
                return Err(BnError::Buffer {
                    name,
                    reason: "is one of the layer's own buffers (gamma, beta, running statistics, dgamma, dbeta)"
                        .to_string(),
                });
            }
            if name != output_name && t.buffer == output.buffer {
                // wgpu 30 compares buffers by an id that each instance numbers on its own.
                return Err(BnError::Buffer {
                    name,
                    reason: format!(
                        "shares its buffer with {output_name}: in-place is not supported \
                         (or the two are buffers of different wgpu instances, which wgpu cannot tell apart)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Records the forward pass into `encoder`: batch statistics (and the running-statistics
    /// update) in training, running statistics in eval where tracked (batch statistics
    /// otherwise), then y. Nothing is submitted.
    pub fn forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &GpuTensor,
        y: &GpuTensor,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        // Nothing is recorded, and the layer's state stays, unless every dispatch was prepared
        // without error.
        let had = self.plans.contains_key(&x.shape);
        let prepared = ctx.scoped("forward", || self.prepare_forward(&ctx, x, y));
        let (batches, saved, steps) = self.settle_plans(&x.shape, had, prepared)?;
        self.record_forward(encoder, batches, saved, &steps);
        Ok(())
    }

    /// `forward`, which also returns what it saved for its backward (`backward_from`): a
    /// copy of the statistics, recorded into `encoder` after the pass, so that later forwards
    /// of the layer do not change what this one's backward differentiates through.
    pub fn forward_for_backward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &GpuTensor,
        y: &GpuTensor,
    ) -> Result<SavedForBackward> {
        let ctx = self.ctx.clone();
        let had = self.plans.contains_key(&x.shape);
        let prepared = ctx.scoped("forward", || {
            let (batches, saved, steps) = self.prepare_forward(&ctx, x, y)?;
            Ok((batches, saved, steps, self.kept_statistics()?))
        });
        let (batches, saved, steps, kept) = self.settle_plans(&x.shape, had, prepared)?;
        let token = self.token(&saved, &kept);
        self.record_forward(encoder, batches, saved, &steps);
        encoder.copy_buffer_to_buffer(&self.saved, 0, &kept, 0, kept.size());
        Ok(token)
    }

    /// A buffer for one forward's copy of `saved`.
    fn kept_statistics(&self) -> Result<wgpu::Buffer> {
        self.ctx.create_buffer(
            "saved for backward",
            self.config.num_features as u64 * 16,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        )
    }

    fn token(&self, saved: &Saved, kept: &wgpu::Buffer) -> SavedForBackward {
        SavedForBackward {
            layer: self.id,
            shape: saved.shape.clone(),
            stats: SavedStats::Gpu {
                buffer: kept.clone(),
                training: saved.training,
            },
        }
    }

    /// What a backward of `shape` differentiates through, and the buffer that holds its
    /// statistics: `from`'s, or else the last forward's.
    fn saved_stats(
        &self,
        from: Option<&SavedForBackward>,
        shape: &Shape,
    ) -> Result<(Saved, wgpu::Buffer)> {
        let Some(token) = from else {
            return Ok((self.saved_for(shape)?, self.saved.clone()));
        };
        match token.check(self.id, shape)? {
            SavedStats::Gpu { buffer, training } => Ok((
                Saved {
                    shape: shape.clone(),
                    training: *training,
                },
                buffer.clone(),
            )),
            SavedStats::Cpu { .. } => Err(BnError::ForeignSaved),
        }
    }

    /// Records a prepared forward (a counting one after the count that
    /// `set_num_batches_tracked` left to copy), and moves the layer's host state on with it.
    fn record_forward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        batches: u64,
        saved: Saved,
        steps: &[Step],
    ) {
        // Only a forward that counts reads the count: an eval forward leaves the set count
        // pending, so that an encoder of eval passes the caller drops cannot take it along.
        let counts_batch = batches != self.num_batches_tracked;
        if counts_batch {
            if let Some(counts) = self.pending_count.take() {
                encoder.copy_buffer_to_buffer(&counts, 0, &self.batches_tracked, 0, counts.size());
            }
        }
        record(encoder, "batchnorm forward", steps);
        self.num_batches_tracked = batches;
        self.saved_for_backward = Some(saved);
    }

    /// What a forward of `shape` is refused for before any buffer is made: one value per
    /// channel where batch statistics are used, a batch count past its u32. Returns
    /// num_batches_tracked after the forward.
    fn check_forward(&self, shape: &Shape) -> Result<u64> {
        shape.expect_channels(self.config.num_features)?;
        // Exactly one, as PyTorch: an empty batch has no statistics to compute.
        if self.uses_batch_stats() && shape.per_channel() == 1 {
            return Err(BnError::SingleValuePerChannel {
                shape: shape.dims().to_vec(),
            });
        }
        if self.training && self.config.track_running_stats {
            next_batch_count(self.num_batches_tracked)
        } else {
            Ok(self.num_batches_tracked)
        }
    }

    /// An empty batch normalizes nothing, but a training step of a tracked layer still counts
    /// (as PyTorch's module counts before it calls batch_norm): on the GPU too, by
    /// count_batch.wgsl, so that the count follows the order of recording.
    fn empty_batch_steps<'k>(&self, ctx: &'k GpuContext, batches_after: u64) -> Vec<Step<'k>> {
        if batches_after == self.num_batches_tracked {
            return Vec::new();
        }
        let kernel = &ctx.kernels.count_batch;
        let bind = kernel.bind(&ctx.device, &[self.batches_tracked.as_entire_binding()]);
        let channels = self.config.num_features as u32;
        vec![Step {
            kernel,
            bind,
            groups: (channels.div_ceil(FINALIZE_WORKGROUP), 1, 1),
        }]
    }

    /// What the last forward saved for a backward of `shape`, or why there is none.
    fn saved_for(&self, shape: &Shape) -> Result<Saved> {
        match &self.saved_for_backward {
            Some(s) if s.shape == *shape => Ok(s.clone()),
            _ => Err(BnError::NoSavedStatistics {
                shape: shape.dims().to_vec(),
            }),
        }
    }

    /// Prepares the forward's dispatches and returns the layer's state after it:
    /// num_batches_tracked, and what backward will need.
    fn prepare_forward<'k>(
        &mut self,
        ctx: &'k GpuContext,
        x: &GpuTensor,
        y: &GpuTensor,
    ) -> Result<(u64, Saved, Vec<Step<'k>>)> {
        self.check_tensors(&[("x", x)], ("y", y))?;
        let batches_after = self.check_forward(&x.shape)?;
        let batch_stats = self.uses_batch_stats();
        let training = self.training;
        let saved = Saved {
            shape: x.shape.clone(),
            training,
        };
        if x.shape.is_empty() {
            return Ok((
                batches_after,
                saved,
                self.empty_batch_steps(ctx, batches_after),
            ));
        }
        self.plan(&x.shape)?;
        let plan = &self.plans[&x.shape];
        let g = &plan.geometry;
        let params = if training {
            &plan.params_train
        } else {
            &plan.params_eval
        };
        let (k, device) = (&ctx.kernels, &ctx.device);
        let mut steps = Vec::new();
        // Which kernel writes y: forward_fused as it reads x, or apply_forward after.
        let fused = match (&plan.params_fused, g.fused, k.forward_fused(g)) {
            (Some(params), Some(f), Some(kernel)) if batch_stats => Some((params, f, kernel)),
            _ => None,
        };
        if let Some((fused_params, f, kernel)) = fused {
            let bind = kernel.bind(
                device,
                &[
                    fused_params.as_entire_binding(),
                    x.binding(),
                    self.gamma.as_entire_binding(),
                    self.beta.as_entire_binding(),
                    plan.partials.as_entire_binding(),
                    y.binding(),
                ],
            );
            steps.push(Step {
                kernel,
                bind,
                groups: (f.groups, 1, 1),
            });
        } else if batch_stats {
            for (i, chunk) in g.chunks.iter().enumerate() {
                let bind = k.stats_reduce(g).bind(
                    device,
                    &[
                        params.slot(i),
                        x.chunk_binding(chunk),
                        plan.partials.as_entire_binding(),
                    ],
                );
                steps.push(Step {
                    kernel: k.stats_reduce(g),
                    bind,
                    groups: chunk.reduce_groups,
                });
            }
        }
        if batch_stats {
            let bind = k.stats_finalize.bind(
                device,
                &[
                    params.channel_slot(),
                    plan.partials.as_entire_binding(),
                    self.gamma.as_entire_binding(),
                    self.beta.as_entire_binding(),
                    self.running_mean.as_entire_binding(),
                    self.running_var.as_entire_binding(),
                    self.batches_tracked.as_entire_binding(),
                    self.saved.as_entire_binding(),
                    self.coeff.as_entire_binding(),
                ],
            );
            steps.push(Step {
                kernel: &k.stats_finalize,
                bind,
                groups: g.merge_groups,
            });
        } else {
            let bind = k.eval_finalize.bind(
                device,
                &[
                    params.channel_slot(),
                    self.running_mean.as_entire_binding(),
                    self.running_var.as_entire_binding(),
                    self.gamma.as_entire_binding(),
                    self.beta.as_entire_binding(),
                    self.saved.as_entire_binding(),
                    self.coeff.as_entire_binding(),
                ],
            );
            steps.push(Step {
                kernel: &k.eval_finalize,
                bind,
                groups: g.finalize_groups,
            });
        }
        if fused.is_none() {
            for (i, chunk) in g.chunks.iter().enumerate() {
                let bind = k.apply_forward(g).bind(
                    device,
                    &[
                        params.slot(i),
                        x.chunk_binding(chunk),
                        self.coeff.as_entire_binding(),
                        y.chunk_binding(chunk),
                    ],
                );
                steps.push(Step {
                    kernel: k.apply_forward(g),
                    bind,
                    groups: chunk.apply_groups,
                });
            }
        }
        Ok((batches_after, saved, steps))
    }

    /// Records the backward pass into `encoder`, with the statistics saved by the last
    /// forward: dx into `dx`, dgamma and dbeta into this layer's buffers.
    pub fn backward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        x: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
    ) -> Result<()> {
        self.record_backward(encoder, None, x, dy, dx)
    }

    /// Records the backward pass into `encoder` through the statistics that `saved` holds,
    /// which a `forward_for_backward` of this layer on x's shape returned.
    pub fn backward_from(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        saved: &SavedForBackward,
        x: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
    ) -> Result<()> {
        self.record_backward(encoder, Some(saved), x, dy, dx)
    }

    fn record_backward(
        &mut self,
        encoder: &mut wgpu::CommandEncoder,
        from: Option<&SavedForBackward>,
        x: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
    ) -> Result<()> {
        let ctx = self.ctx.clone();
        let had = self.plans.contains_key(&x.shape);
        let prepared = ctx.scoped("backward", || self.prepare_backward(&ctx, from, x, dy, dx));
        let steps = self.settle_plans(&x.shape, had, prepared)?;
        if x.shape.is_empty() && !self.accumulate_param_grads {
            self.zero_param_grads(encoder);
        }
        record(encoder, "batchnorm backward", &steps);
        Ok(())
    }

    /// Whether each backward adds its dgamma and dbeta to those of the backward passes
    /// before it, as autograd sums a parameter's gradients over the calls that used it
    /// (shared weights, siamese branches: several `backward_from` before one optimizer
    /// step), instead of overwriting them (the default). Takes effect from the next recorded
    /// backward; `zero_param_grads` starts a new sum. A new layer's sums are zero, an empty
    /// batch adds nothing, and the `*_array` backwards (and `BatchNorm`'s, where turned on
    /// through `BatchNorm::gpu()`) return the sums. The setting in force when a backward is
    /// recorded is the one it follows.
    pub fn set_accumulate_param_grads(&mut self, on: bool) {
        self.accumulate_param_grads = on;
    }

    /// Whether backwards add to dgamma and dbeta (`set_accumulate_param_grads`).
    pub fn accumulates_param_grads(&self) -> bool {
        self.accumulate_param_grads
    }

    /// Records the zeroing of dgamma and dbeta into `encoder` (PyTorch's `zero_grad`), as
    /// an empty batch's backward does where it does not accumulate (PyTorch's gradients of an
    /// empty batch: dx empty, dgamma and dbeta zero).
    pub fn zero_param_grads(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.clear_buffer(&self.dgamma, 0, None);
        encoder.clear_buffer(&self.dbeta, 0, None);
    }

    fn prepare_backward<'k>(
        &mut self,
        ctx: &'k GpuContext,
        from: Option<&SavedForBackward>,
        x: &GpuTensor,
        dy: &GpuTensor,
        dx: &GpuTensor,
    ) -> Result<Vec<Step<'k>>> {
        self.check_tensors(&[("x", x), ("dy", dy)], ("dx", dx))?;
        let (saved, stats) = self.saved_stats(from, &x.shape)?;
        if x.shape.is_empty() {
            return Ok(Vec::new());
        }
        // Normalized with running statistics (eval, tracked): dx = gamma·invstd·dy.
        let frozen = !saved.training && self.config.track_running_stats;
        // The last forward's plan is kept; a saved forward's may have made way for others.
        self.plan(&x.shape)?;
        let plan = &self.plans[&x.shape];
        let g = &plan.geometry;
        let params = if saved.training {
            &plan.params_train
        } else {
            &plan.params_eval
        };
        let (k, device) = (&ctx.kernels, &ctx.device);
        let mut steps = Vec::new();
        for (i, chunk) in g.chunks.iter().enumerate() {
            let bind = k.grad_reduce(g).bind(
                device,
                &[
                    params.slot(i),
                    x.chunk_binding(chunk),
                    dy.chunk_binding(chunk),
                    stats.as_entire_binding(),
                    plan.partials.as_entire_binding(),
                ],
            );
            steps.push(Step {
                kernel: k.grad_reduce(g),
                bind,
                groups: chunk.reduce_groups,
            });
        }
        let finalize = if self.accumulate_param_grads {
            &k.grad_finalize_accumulate
        } else {
            &k.grad_finalize
        };
        let bind = finalize.bind(
            device,
            &[
                params.channel_slot(),
                plan.partials.as_entire_binding(),
                stats.as_entire_binding(),
                self.gamma.as_entire_binding(),
                self.dgamma.as_entire_binding(),
                self.dbeta.as_entire_binding(),
                self.coeff.as_entire_binding(),
            ],
        );
        steps.push(Step {
            kernel: finalize,
            bind,
            groups: g.merge_groups,
        });
        for (i, chunk) in g.chunks.iter().enumerate() {
            let bind = k.apply_backward(g, frozen).bind(
                device,
                &[
                    params.slot(i),
                    x.chunk_binding(chunk),
                    dy.chunk_binding(chunk),
                    self.coeff.as_entire_binding(),
                    dx.chunk_binding(chunk),
                ],
            );
            steps.push(Step {
                kernel: k.apply_backward(g, frozen),
                bind,
                groups: chunk.apply_groups,
            });
        }
        Ok(steps)
    }

    /// What `io` would refuse, refused without making or dropping anything: the staging
    /// buffer past the device's largest, or a shape the device cannot run.
    fn check_io(&self, shape: &Shape) -> Result<()> {
        let channels = self.config.num_features as u64;
        let bytes = shape.numel() as u64 * 4;
        let max = self.ctx.limits().max_buffer_size;
        if bytes + channels * 16 > max {
            return Err(BnError::Limit {
                what: "read-back bytes in one buffer (the tensor and 16 per channel)",
                value: bytes + channels * 16,
                limit: max,
            });
        }
        if !self.plans.contains_key(shape) {
            Geometry::new(shape, self.ctx.limits(), self.ctx.tuning())?;
        }
        Ok(())
    }

    /// The ndarray calls' buffers for `shape`, made once; callers refuse with `check_io`
    /// first, before any buffer is made, rather than meet an allocation failure here.
    fn io(&mut self, shape: &Shape) -> Result<()> {
        let ctx = self.ctx.clone();
        let channels = self.config.num_features as u64;
        let bytes = shape.numel() as u64 * 4;
        let plan = self.plan(shape)?;
        if plan.io.is_none() {
            let tensor = wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC;
            plan.io = Some(IoBuffers {
                x: ctx.create_buffer("x", bytes, tensor)?,
                dy: ctx.create_buffer("dy", bytes, tensor)?,
                out: ctx.create_buffer("out", bytes, tensor)?,
                staging: ctx.create_buffer("staging", bytes + channels * 16, STAGING)?,
            });
        }
        Ok(())
    }

    /// Uploads `x`, runs forward, and reads back y and (when used) the batch statistics.
    /// Submits and waits at once: ahead of any pass recorded into a caller's encoder and not
    /// yet submitted. Submit those first: a backward recorded before this call and run after
    /// it would take this forward's mode with the recorded forward's statistics, and a count
    /// set for a recorded forward would reach the GPU after this one counted.
    pub fn forward_array(&mut self, x: ArrayViewD<f32>, layout: Layout) -> Result<ForwardOutput> {
        Ok(self.run_forward_array(x, layout, false)?.0)
    }

    /// `forward_array`, which also returns what it saved for its backward
    /// (`backward_array_from`).
    pub fn forward_array_for_backward(
        &mut self,
        x: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<(ForwardOutput, SavedForBackward)> {
        let (out, saved) = self.run_forward_array(x, layout, true)?;
        Ok((out, saved.expect("kept when asked")))
    }

    fn run_forward_array(
        &mut self,
        x: ArrayViewD<f32>,
        layout: Layout,
        keep: bool,
    ) -> Result<(ForwardOutput, Option<SavedForBackward>)> {
        let ctx = self.ctx.clone();
        // A forward that fails once recorded (its submission refused, or its results lost
        // with the device) gives the caller nothing, so it counts for nothing: the host
        // state goes back to where it was, as after any refusal. (A read-back failing on a
        // device that is not lost, never seen, would leave the GPU's running statistics and
        // count one batch ahead of the host's count.)
        let before = (
            self.num_batches_tracked,
            self.saved_for_backward.clone(),
            self.pending_count.clone(),
        );
        let shape = Shape::new(x.shape(), layout)?;
        let had = self.plans.contains_key(&shape);
        let result = ctx.scoped("forward", || self.run_forward(x, layout, keep));
        let result = self.settle_plans(&shape, had, result);
        if result.is_err() {
            (
                self.num_batches_tracked,
                self.saved_for_backward,
                self.pending_count,
            ) = before;
        }
        result
    }

    fn run_forward(
        &mut self,
        x: ArrayViewD<f32>,
        layout: Layout,
        keep: bool,
    ) -> Result<(ForwardOutput, Option<SavedForBackward>)> {
        let shape = Shape::new(x.shape(), layout)?;
        // Refused before io() makes or evicts anything.
        let batches_after = self.check_forward(&shape)?;
        let saved = Saved {
            shape: shape.clone(),
            training: self.training,
        };
        if shape.is_empty() {
            let kept = keep.then(|| self.kept_statistics()).transpose()?;
            let token = kept.as_ref().map(|kept| self.token(&saved, kept));
            let ctx = self.ctx.clone();
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            let steps = self.empty_batch_steps(&ctx, batches_after);
            self.record_forward(&mut encoder, batches_after, saved, &steps);
            ctx.submit(encoder, "forward")?;
            let out = ForwardOutput {
                y: ArrayD::zeros(shape.dims()),
                stats: None,
            };
            return Ok((out, token));
        }
        // Every refusal (the device's limits, the host copy of a broadcast or transposed view)
        // before the first buffer is made.
        self.check_io(&shape)?;
        let x_data = crate::cpu::contiguous(x, "x in standard layout")?;
        let channels = self.config.num_features;
        let y_room = crate::cpu::with_room(shape.numel() + 4 * channels, "y read back")?;
        self.io(&shape)?;
        let kept = keep.then(|| self.kept_statistics()).transpose()?;
        let token = kept.as_ref().map(|kept| self.token(&saved, kept));
        let ctx = self.ctx.clone();
        let io = self.plans[&shape].io.as_ref().expect("made by io()");
        let (xb, out, staging) = (io.x.clone(), io.out.clone(), io.staging.clone());
        let x_slice = x_data.as_slice().expect("standard layout");
        ctx.queue
            .write_buffer(&xb, 0, bytemuck::cast_slice(x_slice));
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        self.forward(
            &mut encoder,
            &GpuTensor::new(&xb, shape.dims(), layout)?,
            &GpuTensor::new(&out, shape.dims(), layout)?,
        )?;
        let bytes = shape.numel() as u64 * 4;
        encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes);
        encoder.copy_buffer_to_buffer(&self.saved, 0, &staging, bytes, channels as u64 * 16);
        if let Some(kept) = &kept {
            encoder.copy_buffer_to_buffer(&self.saved, 0, kept, 0, kept.size());
        }
        ctx.submit(encoder, "forward")?;
        let mut y = ctx.read_mapped_into(&staging, bytes + channels as u64 * 16, y_room)?;
        let saved = y.split_off(shape.numel());
        let stats = self.uses_batch_stats().then(|| BatchStatistics {
            mean: saved.chunks(4).map(|s| s[0] + s[1]).collect(),
            invstd: saved.chunks(4).map(|s| s[2]).collect(),
            var: saved.chunks(4).map(|s| s[3]).collect(),
        });
        let out = ForwardOutput {
            y: ArrayD::from_shape_vec(shape.dims(), y).expect("numel matches"),
            stats,
        };
        Ok((out, token))
    }

    /// Uploads `x` and `dy`, runs backward with the statistics of the last forward, and reads
    /// back dx and (when affine) dgamma and dbeta. This submits at once: a forward recorded
    /// into an encoder that is not yet submitted has not saved its statistics, so submit it
    /// first.
    pub fn backward_array(
        &mut self,
        x: ArrayViewD<f32>,
        dy: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<BackwardOutput> {
        let ctx = self.ctx.clone();
        let shape = Shape::new(x.shape(), layout)?;
        let had = self.plans.contains_key(&shape);
        let result = ctx.scoped("backward", || self.run_backward(None, x, dy, layout));
        self.settle_plans(&shape, had, result)
    }

    /// `backward_array` through the statistics that `saved` holds, which a
    /// `forward_array_for_backward` (or `forward_for_backward`) of this layer on x's shape
    /// returned. This submits at once: a `forward_for_backward` recorded into an encoder
    /// that is not yet submitted has not saved its statistics.
    pub fn backward_array_from(
        &mut self,
        saved: &SavedForBackward,
        x: ArrayViewD<f32>,
        dy: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<BackwardOutput> {
        let ctx = self.ctx.clone();
        let shape = Shape::new(x.shape(), layout)?;
        let had = self.plans.contains_key(&shape);
        let result = ctx.scoped("backward", || self.run_backward(Some(saved), x, dy, layout));
        self.settle_plans(&shape, had, result)
    }

    fn run_backward(
        &mut self,
        from: Option<&SavedForBackward>,
        x: ArrayViewD<f32>,
        dy: ArrayViewD<f32>,
        layout: Layout,
    ) -> Result<BackwardOutput> {
        expect_same_dims(x.shape(), dy.shape())?;
        let shape = Shape::new(x.shape(), layout)?;
        shape.expect_channels(self.config.num_features)?;
        // Refused before io() makes or evicts anything.
        self.saved_stats(from, &shape)?;
        if shape.is_empty() {
            let mut out = BackwardOutput::of_empty_batch(&shape, &self.config);
            if self.accumulate_param_grads {
                // Nothing to add: the sums so far.
                if self.config.affine {
                    out.dgamma = Some(self.read_channels(&self.dgamma, 1)?);
                    out.dbeta = Some(self.read_channels(&self.dbeta, 1)?);
                }
                return Ok(out);
            }
            let ctx = self.ctx.clone();
            let mut encoder = ctx.device.create_command_encoder(&Default::default());
            self.zero_param_grads(&mut encoder);
            ctx.submit(encoder, "backward")?;
            return Ok(out);
        }
        // Every refusal before the first buffer is made, as in run_forward.
        self.check_io(&shape)?;
        let x_data = crate::cpu::contiguous(x, "x in standard layout")?;
        let dy_data = crate::cpu::contiguous(dy, "dy in standard layout")?;
        let dx_room =
            crate::cpu::with_room(shape.numel() + 2 * self.config.num_features, "dx read back")?;
        self.io(&shape)?;
        let ctx = self.ctx.clone();
        let io = self.plans[&shape].io.as_ref().expect("made by io()");
        ctx.queue.write_buffer(
            &io.x,
            0,
            bytemuck::cast_slice(x_data.as_slice().expect("standard layout")),
        );
        ctx.queue.write_buffer(
            &io.dy,
            0,
            bytemuck::cast_slice(dy_data.as_slice().expect("standard layout")),
        );
        let (xb, dyb, out, staging) = (
            io.x.clone(),
            io.dy.clone(),
            io.out.clone(),
            io.staging.clone(),
        );
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        self.record_backward(
            &mut encoder,
            from,
            &GpuTensor::new(&xb, shape.dims(), layout)?,
            &GpuTensor::new(&dyb, shape.dims(), layout)?,
            &GpuTensor::new(&out, shape.dims(), layout)?,
        )?;
        let bytes = shape.numel() as u64 * 4;
        let c_bytes = self.config.num_features as u64 * 4;
        encoder.copy_buffer_to_buffer(&out, 0, &staging, 0, bytes);
        encoder.copy_buffer_to_buffer(&self.dgamma, 0, &staging, bytes, c_bytes);
        encoder.copy_buffer_to_buffer(&self.dbeta, 0, &staging, bytes + c_bytes, c_bytes);
        ctx.submit(encoder, "backward")?;
        let mut dx = ctx.read_mapped_into(&staging, bytes + 2 * c_bytes, dx_room)?;
        let dbeta = dx.split_off(shape.numel() + self.config.num_features);
        let dgamma = dx.split_off(shape.numel());
        let affine = self.config.affine;
        Ok(BackwardOutput {
            dx: ArrayD::from_shape_vec(shape.dims(), dx).expect("numel matches"),
            dgamma: affine.then_some(dgamma),
            dbeta: affine.then_some(dbeta),
        })
    }
}
