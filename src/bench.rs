//! `batchnorm bench`: GPU passes, the CPU reference and two plain copy kernels (the faster
//! is the roof), on the same shapes, verified before they are timed.
//!
//! Bytes counted are the minimal ones: forward and eval read x and write y (8 per element),
//! backward reads x and dy and writes dx (12), the copy reads and writes (8). Kernel times
//! come from timestamps written around the recorded commands where the adapter has them;
//! end-to-end times run from submit to the work being done, measured on the host.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use ndarray::ArrayD;

use crate::config::{BatchNormConfig, Layout};
use crate::error::{BnError, Result};
use crate::gpu::context::read_staging;
use crate::gpu::kernels::{Geometry, Kernel};
use crate::gpu::{GpuBatchNorm, GpuContext, GpuTensor};
use crate::layer::{BackwardOutput, BatchNorm, Device, ForwardOutput};
use crate::shape::Shape;

/// The shapes `batchnorm bench` runs by default.
pub const DEFAULT_SHAPES: &[&[usize]] = &[
    &[8, 64, 56, 56],
    &[32, 64, 56, 56],
    &[64, 256, 14, 14],
    &[16, 2048, 7, 7],
    &[1024, 4096],
];

/// Relative L2 error a kernel may show against the reference before it is refused.
const TOLERANCE: f64 = 1e-5;
/// Inputs and outputs rotate over enough buffers to hold at least this many bytes each (but
/// at most MAX_ROTATION buffers, which leaves tensors of under 4 MiB in a large cache), so
/// that repeated runs read memory rather than a cache, and write it rather than lines a
/// write-back cache still holds dirty: a GPU's L2 holds 50 MB or more.
const ROTATION_BYTES: u64 = 256 << 20;
const MAX_ROTATION: u64 = 64;
/// Commands timed in turns: the copy roof before each of forward, eval and backward.
const SLOTS: usize = 6;

/// How a row's time was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// GPU timestamps around the kernels.
    Kernel,
    /// Host clock from submit to done (GPU) or around the call (CPU).
    EndToEnd,
}

impl Timing {
    /// As the CSV's `timing` column writes it.
    pub fn name(self) -> &'static str {
        match self {
            Timing::Kernel => "kernel",
            Timing::EndToEnd => "end_to_end",
        }
    }
}

/// One line of the bench's output.
#[derive(Clone, Debug)]
pub struct Row {
    /// `gpu`, `cpu` or `copy`.
    pub implementation: &'static str,
    /// As `32x64x56x56`, in (N, C, …) order whatever the layout.
    pub shape: String,
    /// `nchw`, `nhwc` or `nc`.
    pub layout: &'static str,
    /// `forward`, `eval`, `backward` or `copy`.
    pub pass: &'static str,
    /// How the time was taken.
    pub timing: Timing,
    /// Median over the timed iterations, in milliseconds.
    pub median_ms: f64,
    /// The minimal bytes (8 per element forward, eval and copy; 12 backward) over the median.
    pub gbps: f64,
    /// gbps over the copy kernel's, same shape, same timing.
    pub roof: Option<f64>,
}

/// `nchw` or `nhwc`; `nc` for an (N, C) shape, which is the same memory in either layout.
pub fn layout_name(logical: &[usize], layout: Layout) -> &'static str {
    match layout {
        _ if logical.len() == 2 => "nc",
        Layout::ChannelsFirst => "nchw",
        Layout::ChannelsLast => "nhwc",
    }
}

/// `32x64x56x56`
pub fn shape_name(dims: &[usize]) -> String {
    dims.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// ‖got − want‖₂ / ‖want‖₂ (infinite when the lengths differ or a value is NaN).
pub fn rel_l2(got: &[f32], want: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&g, &w) in got.iter().zip(want) {
        num += (g as f64 - w as f64).powi(2);
        den += (w as f64).powi(2);
    }
    if got.len() != want.len() || num.is_nan() {
        return f64::INFINITY;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

/// A deterministic input roughly N(mean, std²) (SplitMix64, sum of four uniforms).
pub fn input(dims: &[usize], seed: u64, mean: f32, std: f32) -> ArrayD<f32> {
    let mut state = seed;
    let mut uniform = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    };
    let n: usize = dims.iter().product();
    let values = (0..n)
        .map(|_| mean + std * ((0..4).map(|_| uniform()).sum::<f32>() - 2.0) * 1.732)
        .collect();
    ArrayD::from_shape_vec(dims, values).expect("numel matches")
}

/// The relative error of dx where its three gradient paths may nearly cancel: with two
/// values per channel x̂ = ±1 and dx ≈ 0, while each path is about `paths` =
/// max|gamma·invstd|·‖dy‖ in size and carries f32 rounding of that size, so no f32
/// computation gets dx to 1e-5 of its own tiny norm. The error is therefore taken against at
/// least 5% of the paths' size; a wrong formula misses by the paths' own size.
pub fn dx_error(got: &[f32], want: &[f32], paths: f64) -> f64 {
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let diff = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm = want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>().sqrt();
    if diff.is_nan() {
        return f64::INFINITY;
    }
    diff / norm.max(5e-2 * paths).max(f64::MIN_POSITIVE)
}

/// The size of each of dx's gradient paths (see [`dx_error`]) for a layer whose outputs are
/// `forward` (batch statistics, or eval's running ones), its gamma and its running_var.
pub fn dx_paths(
    forward: &ForwardOutput,
    gamma: &[f32],
    running_var: &[f32],
    eps: f32,
    dy: &ArrayD<f32>,
) -> f64 {
    let invstd: Vec<f64> = match &forward.stats {
        Some(s) => s.invstd.iter().map(|&v| v as f64).collect(),
        None => running_var
            .iter()
            .map(|&v| 1.0 / (v as f64 + eps as f64).sqrt())
            .collect(),
    };
    let gain = gamma
        .iter()
        .zip(&invstd)
        .map(|(&g, i)| (g as f64 * i).abs())
        .fold(0.0, f64::max);
    gain * dy.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()
}

/// Relative L2 error of each output of a forward and backward (`got`) against the same of
/// another layer (`want`): y, dx (measured by [`dx_error`] against `dx_paths`), dgamma and
/// dbeta where the layers are affine, and the batch statistics where there are some.
pub fn output_errors(
    got: (&ForwardOutput, &BackwardOutput),
    want: (&ForwardOutput, &BackwardOutput),
    dx_paths: f64,
) -> Vec<(&'static str, f64)> {
    let flat = |a: &ArrayD<f32>| a.iter().copied().collect::<Vec<f32>>();
    let ((gf, gb), (wf, wb)) = (got, want);
    let vector = |g: &Option<Vec<f32>>, w: &Option<Vec<f32>>| {
        rel_l2(g.as_deref().unwrap_or(&[]), w.as_deref().unwrap_or(&[]))
    };
    let mut errors = vec![
        ("y", rel_l2(&flat(&gf.y), &flat(&wf.y))),
        ("dx", dx_error(&flat(&gb.dx), &flat(&wb.dx), dx_paths)),
        ("dgamma", vector(&gb.dgamma, &wb.dgamma)),
        ("dbeta", vector(&gb.dbeta, &wb.dbeta)),
    ];
    match (&gf.stats, &wf.stats) {
        (Some(g), Some(w)) => errors.extend([
            ("mean", rel_l2(&g.mean, &w.mean)),
            ("var", rel_l2(&g.var, &w.var)),
            ("invstd", rel_l2(&g.invstd, &w.invstd)),
        ]),
        (None, None) => {}
        _ => errors.push(("batch statistics", f64::INFINITY)),
    }
    errors
}

/// The bench's gamma, beta, running mean and running var for `channels` channels: random, so
/// that a kernel which dropped one of them shows in a check against the reference (at
/// PyTorch's defaults, gamma 1, beta 0, mean 0 and var 1, none would; an eval that copied x
/// would miss y by 5e-6).
pub fn bench_parameters(channels: usize) -> [Vec<f32>; 4] {
    let values = |seed, mean, std| {
        input(&[channels], seed, mean, std)
            .into_raw_vec_and_offset()
            .0
    };
    [
        values(3, 1.0, 0.2),
        values(4, 0.0, 1.0),
        values(5, 0.0, 1.0),
        values(6, 1.0, 0.2),
    ]
}

/// A GPU layer with the bench's parameters and running statistics (`bench_parameters`).
fn gpu_bench_layer(ctx: &Arc<GpuContext>, config: &BatchNormConfig) -> Result<GpuBatchNorm> {
    let layer = GpuBatchNorm::new(ctx.clone(), config.clone())?;
    let setters = [
        GpuBatchNorm::set_gamma,
        GpuBatchNorm::set_beta,
        GpuBatchNorm::set_running_mean,
        GpuBatchNorm::set_running_var,
    ];
    with_bench_parameters(layer, config.num_features, setters)
}

/// A layer with the bench's parameters and running statistics (`bench_parameters`).
fn bench_layer(config: &BatchNormConfig, device: Device) -> Result<BatchNorm> {
    let layer = BatchNorm::new(config.clone(), device)?;
    let setters = [
        BatchNorm::set_gamma,
        BatchNorm::set_beta,
        BatchNorm::set_running_mean,
        BatchNorm::set_running_var,
    ];
    with_bench_parameters(layer, config.num_features, setters)
}

/// A per-channel setter of a layer (`set_gamma`, …).
type Setter<L> = fn(&mut L, &[f32]) -> Result<()>;

/// Gamma, beta, running mean and running variance of `bench_parameters`, through `setters`
/// in that order.
fn with_bench_parameters<L>(mut layer: L, channels: usize, setters: [Setter<L>; 4]) -> Result<L> {
    for (set, values) in setters.into_iter().zip(bench_parameters(channels)) {
        set(&mut layer, &values)?;
    }
    Ok(layer)
}

/// Runs the GPU layer and the CPU reference on the same input, with the same random
/// parameters and running statistics, train then eval, forward and backward, and fails
/// unless every output agrees within the tolerance (see `compare_layers`).
fn verify(ctx: &Arc<GpuContext>, x: &ArrayD<f32>, dy: &ArrayD<f32>, layout: Layout) -> Result<()> {
    let config = BatchNormConfig::new(Shape::new(x.shape(), layout)?.channels());
    let mut gpu = bench_layer(&config, Device::Gpu(ctx.clone()))?;
    let mut cpu = bench_layer(&config, Device::Cpu)?;
    compare_layers(&mut gpu, &mut cpu, x, dy, layout)
}

/// Runs `got` and `want` on the same input, train then eval, forward and backward, and fails
/// unless every output and both running statistics agree within the tolerance.
fn compare_layers(
    got: &mut BatchNorm,
    want: &mut BatchNorm,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
    layout: Layout,
) -> Result<()> {
    for training in [true, false] {
        got.set_training(training);
        want.set_training(training);
        let (g, w) = (
            got.forward(x.view(), layout)?,
            want.forward(x.view(), layout)?,
        );
        let (gb, wb) = (
            got.backward(x.view(), dy.view(), layout)?,
            want.backward(x.view(), dy.view(), layout)?,
        );
        let mode = if training { "training" } else { "eval" };
        let eps = want.config().eps;
        let paths = dx_paths(&w, &want.gamma()?, &want.running_var()?, eps, dy);
        let running = [
            (
                "running_mean",
                rel_l2(&got.running_mean()?, &want.running_mean()?),
            ),
            (
                "running_var",
                rel_l2(&got.running_var()?, &want.running_var()?),
            ),
        ];
        for (name, err) in output_errors((&g, &gb), (&w, &wb), paths)
            .into_iter()
            .chain(running)
        {
            if err.is_nan() || err > TOLERANCE {
                return Err(BnError::Verification {
                    what: format!("{name} in {mode} on {}", given_name(x.shape(), layout)),
                    error: err,
                    tolerance: TOLERANCE,
                });
            }
        }
    }
    Ok(())
}

/// A recorder of one timed command sequence; its argument counts the iterations.
type Recorder<'a> = Box<dyn FnMut(&mut wgpu::CommandEncoder, usize) -> Result<()> + 'a>;

/// Which copy kernel the copy in `slot` (0, 2 or 4) runs in iteration i: each in turn, and
/// in every slot, so that each meets each place in the turns.
fn copy_kernel_of(i: usize, slot: usize, kernels: usize) -> usize {
    (i + slot / 2) % kernels
}

/// The roof's kernel and end-to-end times: per copy slot (0, 2, 4 of `timed`) and copy kernel,
/// the medians of the submissions it ran (timed submission t being iteration warmup + t),
/// and of those the fastest.
fn fastest_copy(timed: &[Samples], warmup: usize, kernels: usize) -> (Option<f64>, f64) {
    let fastest = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    [0, 2, 4]
        .iter()
        .flat_map(|&slot| {
            (0..kernels).filter_map(move |which| {
                timed[slot].medians(|t| copy_kernel_of(warmup + t, slot, kernels) == which)
            })
        })
        .fold((None, f64::INFINITY), |(k, e), (sk, se)| {
            (fastest(k, sk), e.min(se))
        })
}

/// One recorder's timed submissions, in order, in milliseconds.
struct Samples {
    /// From timestamps; `None` where the adapter has none, or wrote a pair that does not
    /// advance (a backend that writes zeros, a counter that wrapped).
    kernel: Option<Vec<f64>>,
    /// From the host's clock, submit to done.
    end_to_end: Vec<f64>,
}

impl Samples {
    /// Medians of the submissions that `keep` takes (by their index among the timed ones),
    /// or `None` where it takes none.
    fn medians(&self, keep: impl Fn(usize) -> bool) -> Option<(Option<f64>, f64)> {
        let pick = |v: &[f64]| -> Vec<f64> {
            v.iter()
                .enumerate()
                .filter(|&(t, _)| keep(t))
                .map(|(_, &ms)| ms)
                .collect()
        };
        let end_to_end = pick(&self.end_to_end);
        if end_to_end.is_empty() {
            return None;
        }
        let kernel = self.kernel.as_ref().map(|k| median(pick(k)));
        Some((kernel, median(end_to_end)))
    }
}

/// Times each recorder over `iters` submissions after `warmup` untimed ones, taking turns so
/// that a change in the machine's load (other processes, clock speed) falls on all of them
/// alike.
fn time_gpu(
    ctx: &GpuContext,
    warmup: usize,
    iters: usize,
    recorders: &mut [Recorder<'_>],
) -> Result<Vec<Samples>> {
    let device = &ctx.device;
    let timestamps = ctx.has_timestamps().then(|| {
        let set = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("bench timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamp read"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        (set, resolve, read)
    });
    let period_ns = ctx.queue.get_timestamp_period() as f64;
    let mut kernel = vec![Vec::new(); recorders.len()];
    let mut end_to_end = vec![Vec::new(); recorders.len()];
    let mut invalid = vec![false; recorders.len()];
    for i in 0..warmup + iters {
        for (r, record) in recorders.iter_mut().enumerate() {
            let mut encoder = device.create_command_encoder(&Default::default());
            if let Some((set, _, _)) = &timestamps {
                encoder.write_timestamp(set, 0);
            }
            record(&mut encoder, i)?;
            if let Some((set, resolve, read)) = &timestamps {
                encoder.write_timestamp(set, 1);
                encoder.resolve_query_set(set, 0..2, resolve, 0);
                encoder.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
            }
            // Encoding happens in finish(): the host's part of recording, before the clock.
            let commands = ctx.scoped("bench", || Ok(encoder.finish()))?;
            let start = Instant::now();
            ctx.scoped("bench", || {
                ctx.queue.submit([commands]);
                Ok(())
            })?;
            device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| BnError::Readback(e.to_string()))?;
            let elapsed = start.elapsed().as_secs_f64() * 1e3;
            let ticks = match &timestamps {
                Some((_, _, read)) => Some(read_ticks(ctx, read)?),
                None => None,
            };
            if i >= warmup {
                end_to_end[r].push(elapsed);
                match ticks {
                    Some([t0, t1]) if t1 > t0 => kernel[r].push((t1 - t0) as f64 * period_ns / 1e6),
                    // A pair that does not advance is no time: the command reports end-to-end
                    // time only.
                    Some(_) => invalid[r] = true,
                    None => {}
                }
            }
        }
    }
    Ok(kernel
        .into_iter()
        .zip(end_to_end)
        .zip(invalid)
        .map(|((k, e), bad)| Samples {
            kernel: (!k.is_empty() && !bad).then_some(k),
            end_to_end: e,
        })
        .collect())
}

/// The copy kernel, apart from the layer's: only the bench runs it.
const COPY_SHADER: &str = include_str!("../shaders/copy.wgsl");
/// The copy kernels the roof is the fastest of (shaders/copy.wgsl, by its vec4 per lane):
/// blocks of 4096 vec4 per workgroup, the fastest on lavapipe (PERF.md 30), and one vec4 per
/// lane, which an H100 ran faster (PERF.md 41).
const COPY_PER_LANE: [u32; 2] = [16, 1];

/// The roof: a plain copy of `numel` values (a multiple of four) by each of the copy kernels
/// (COPY_PER_LANE), each checked once before it is timed, like the passes.
struct CopyRoof {
    len4: wgpu::Buffer,
    kernels: Vec<(Kernel, (u32, u32, u32))>,
    bytes: u64,
}

impl CopyRoof {
    fn new(ctx: &GpuContext, numel: usize) -> Result<Self> {
        let len4 = ctx.create_buffer(
            "bench len4",
            16,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )?;
        let vec4s = (numel / 4) as u64;
        ctx.queue
            .write_buffer(&len4, 0, bytemuck::bytes_of(&[vec4s as u32, 0, 0, 0]));
        let max = ctx.limits().max_compute_workgroups_per_dimension as u64;
        let kernels = COPY_PER_LANE
            .iter()
            .map(|&per_lane| {
                let kernel = Kernel::from_source(
                    &ctx.device,
                    "copy",
                    COPY_SHADER.to_string(),
                    &[("PER_LANE", per_lane as f64)],
                )?;
                // Blocks past one dimension's workgroup limit go on along y (see copy.wgsl).
                let blocks = vec4s.div_ceil(256 * per_lane as u64);
                Ok((
                    kernel,
                    (blocks.min(max) as u32, blocks.div_ceil(max) as u32, 1),
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            len4,
            kernels,
            bytes: numel as u64 * 4,
        })
    }

    /// Records copy kernel `which` (of COPY_PER_LANE).
    fn record(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        which: usize,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
    ) {
        let (copy, groups) = &self.kernels[which];
        let bind = copy.bind(
            &ctx.device,
            &[
                self.len4.as_entire_binding(),
                src.as_entire_binding(),
                dst.as_entire_binding(),
            ],
        );
        let mut pass = encoder.begin_compute_pass(&Default::default());
        copy.dispatch(&mut pass, &bind, *groups);
    }

    /// Copies `src`, which holds `want`, into `dst` with each copy kernel and checks every
    /// value: a roof that skipped part of the tensor would flatter every ratio.
    fn verify(
        &self,
        ctx: &GpuContext,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        want: &ArrayD<f32>,
    ) -> Result<()> {
        (0..self.kernels.len()).try_for_each(|which| self.verify_one(ctx, which, src, dst, want))
    }

    fn verify_one(
        &self,
        ctx: &GpuContext,
        which: usize,
        src: &wgpu::Buffer,
        dst: &wgpu::Buffer,
        want: &ArrayD<f32>,
    ) -> Result<()> {
        let staging = ctx.create_buffer(
            "bench copy check",
            self.bytes,
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        )?;
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(dst, 0, None);
        self.record(ctx, &mut encoder, which, src, dst);
        encoder.copy_buffer_to_buffer(dst, 0, &staging, 0, self.bytes);
        ctx.submit(encoder, "bench copy check")?;
        let got = ctx.read_mapped(&staging, self.bytes)?;
        let want = want.as_slice().expect("standard layout");
        assert_eq!(
            got.len(),
            want.len(),
            "the copy check reads back the whole tensor"
        );
        let wrong = got
            .iter()
            .zip(want)
            .filter(|(g, w)| g.to_bits() != w.to_bits())
            .count();
        match wrong {
            0 => Ok(()),
            _ => Err(BnError::RoofCheck {
                per_lane: COPY_PER_LANE[which],
                wrong,
                total: want.len(),
            }),
        }
    }
}

fn read_ticks(ctx: &GpuContext, read: &wgpu::Buffer) -> Result<[u64; 2]> {
    let t: Vec<u64> = read_staging(&ctx.device, read, 16)?;
    Ok([t[0], t[1]])
}

/// The median of `iters` timed calls after one untimed; `run` gets the call's number (0 the
/// untimed one), to pick its inputs.
fn time_cpu(iters: usize, mut run: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    run(0)?;
    let mut times = Vec::new();
    for call in 1..=iters {
        let start = Instant::now();
        run(call)?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}

/// Whether `time_shape` takes the (N, C, ...) shape `logical` stored in `layout` on `ctx`: a
/// shape the GPU layer takes in training (more than one value per channel, within the
/// adapter's limits) whose copy roof binds the whole tensor at once and copies whole vec4.
/// The CLI checks every shape before it times any, or prints anything.
pub fn check_shape(ctx: &GpuContext, logical: &[usize], layout: Layout) -> Result<()> {
    // Errors name the shape as given, (N, C, ...), whatever the layout.
    let given = Shape::new(logical, Layout::ChannelsFirst)?;
    given.expect_values()?;
    if given.per_channel() < 2 {
        return Err(BnError::SingleValuePerChannel {
            shape: logical.to_vec(),
        });
    }
    let shape = Shape::new(&memory_dims(logical, layout), layout)?;
    Geometry::new(&shape, ctx.limits(), ctx.tuning())?;
    let numel = shape.numel();
    let binding = ctx.limits().max_storage_buffer_binding_size;
    if numel as u64 * 4 > binding {
        return Err(BnError::Limit {
            what: "bench tensor bytes (one storage binding)",
            value: numel as u64 * 4,
            limit: binding,
        });
    }
    if !numel.is_multiple_of(4) {
        return Err(BnError::Config {
            name: "bench shape",
            value: shape_name(logical),
            reason: "the copy roof copies whole vec4: N·C·H·W must be a multiple of four",
        });
    }
    Ok(())
}

/// The dims of the (N, C, ...) tensor `logical` as laid out in memory: (N, ..., C) for
/// channels-last.
/// `8x64x56x56 nhwc`: the (N, C, ...) shape stored as `memory` in `layout`, named as the
/// bench's rows and errors name it, whatever the layout.
fn given_name(memory: &[usize], layout: Layout) -> String {
    let mut logical = memory.to_vec();
    if layout == Layout::ChannelsLast {
        let channels = logical.pop().expect("rank 2 or more");
        logical.insert(1, channels);
    }
    format!("{} {}", shape_name(&logical), layout_name(&logical, layout))
}

/// The dims of the (N, C, ...) shape `logical` as stored in `layout`: channels moved last for
/// channels-last. A shape of rank below 2 has no channel axis to move and comes back as it
/// is, for `Shape::new` to refuse.
pub fn memory_dims(logical: &[usize], layout: Layout) -> Vec<usize> {
    match layout {
        Layout::ChannelsLast if logical.len() < 2 => logical.to_vec(),
        Layout::ChannelsFirst => logical.to_vec(),
        Layout::ChannelsLast => {
            let mut dims = vec![logical[0]];
            dims.extend_from_slice(&logical[2..]);
            dims.push(logical[1]);
            dims
        }
    }
}

/// Checks the GPU layer against the CPU reference on the (N, C, ...) shape `logical` stored
/// in `layout` (see `verify`): what the CLI does to every shape before it times any.
pub fn verify_shape(ctx: &Arc<GpuContext>, logical: &[usize], layout: Layout) -> Result<()> {
    check_shape(ctx, logical, layout)?;
    let dims = memory_dims(logical, layout);
    let x = input(&dims, 1, 0.5, 2.0);
    let dy = input(&dims, 2, 0.0, 1.0);
    verify(ctx, &x, &dy, layout)
}

/// Benchmarks the (N, C, ...) shape `logical` stored in `layout`, which the caller has run
/// [`verify_shape`] on (the CLI verifies every shape before it prints a row); `progress`
/// hears what is running.
pub fn time_shape(
    ctx: &Arc<GpuContext>,
    logical: &[usize],
    layout: Layout,
    iters: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<Row>> {
    check_shape(ctx, logical, layout)?;
    let memory = memory_dims(logical, layout);
    let dims = memory.as_slice();
    let shape = Shape::new(dims, layout)?;
    let (numel, channels) = (shape.numel(), shape.channels());
    let name = shape_name(logical);
    let lname = layout_name(logical, layout);

    let bytes = numel as u64 * 4;
    let copies = ROTATION_BYTES.div_ceil(bytes).clamp(2, MAX_ROTATION) as usize;
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let upload = |label: &str, data: &ArrayD<f32>| -> Result<wgpu::Buffer> {
        let buffer = ctx.create_buffer(label, bytes, usage)?;
        ctx.queue.write_buffer(
            &buffer,
            0,
            bytemuck::cast_slice(data.as_slice().expect("standard layout")),
        );
        Ok(buffer)
    };
    let x0 = input(dims, 10, 0.5, 2.0);
    let xs = (0..copies)
        .map(|i| match i {
            0 => upload("bench x", &x0),
            _ => upload("bench x", &input(dims, 10 + i as u64, 0.5, 2.0)),
        })
        .collect::<Result<Vec<_>>>()?;
    // Only the backward reads dy, once per iteration, so it needs a sixth of the buffers for
    // the same distance between two reads of one: SLOTS commands of a tensor or more each
    // run in between, and the copies of x alone cover the rotation's bytes.
    let dy_copies = copies.div_ceil(SLOTS);
    let dys = (0..dy_copies)
        .map(|i| upload("bench dy", &input(dims, 20 + i as u64, 0.0, 1.0)))
        .collect::<Result<Vec<_>>>()?;
    // COPY_SRC: the copy roof's output is read back once to check it.
    let outs = (0..copies)
        .map(|_| ctx.create_buffer("bench out", bytes, usage | wgpu::BufferUsages::COPY_SRC))
        .collect::<Result<Vec<_>>>()?;
    // Written once before any timing, as the inputs are by their uploads: a first write into
    // fresh memory (wgpu's zero fill, a CPU rasterizer's page faults) is no part of a pass.
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    for out in &outs {
        encoder.clear_buffer(out, 0, None);
    }
    ctx.submit(encoder, "bench outputs")?;
    let tensor = |b| GpuTensor::new(b, dims, layout);
    // Which input the command in `slot` reads, and which output it writes, in iteration i:
    // never those of the command before it, so that none finds its input in a cache that
    // the previous one warmed, or its output in lines the previous one left there.
    let input_of = |i: usize, slot: usize| (i * SLOTS + slot) % copies;

    let mut rows = Vec::new();
    let mut push = |implementation, pass, timing: Timing, ms: f64, per_element: u64| {
        rows.push(Row {
            implementation,
            shape: name.clone(),
            layout: lname,
            pass,
            timing,
            median_ms: ms,
            gbps: (numel as u64 * per_element) as f64 / (ms * 1e-3) / 1e9,
            roof: None,
        })
    };

    progress(&format!("{name} {lname}: gpu passes and copy roof"));
    let roof = CopyRoof::new(ctx, numel)?;
    roof.verify(ctx, &xs[0], &outs[0], &x0)?;
    let config = BatchNormConfig::new(channels);
    // The training layer's forward leaves the statistics its backward uses; the backward may
    // read another input than the forward did (see input_of), which changes its values, not
    // its work.
    // With the parameters that verify_shape checked the kernels with.
    let train = RefCell::new(gpu_bench_layer(ctx, &config)?);
    let mut eval = gpu_bench_layer(ctx, &config)?;
    eval.set_training(false);
    // What ran before a command changes its time (on lavapipe a copy after the backward took
    // 7.3–7.8 ms where after the forward it took 6.2, PERF.md 31), so a copy runs before each
    // pass, the copy kernels taking each slot in turn, and the roof is the fastest kernel in
    // its fastest slot: no pass is compared with a copy that ran in a worse place than it
    // did, or with a copy kernel slower than another on this adapter.
    let (roof, xs_ref, outs_ref) = (&roof, &xs, &outs);
    let kernels = roof.kernels.len();
    let copy = |slot: usize| -> Recorder<'_> {
        Box::new(move |encoder: &mut wgpu::CommandEncoder, i: usize| {
            let j = input_of(i, slot);
            let which = copy_kernel_of(i, slot, kernels);
            roof.record(ctx, encoder, which, &xs_ref[j], &outs_ref[j]);
            Ok(())
        })
    };
    // Untimed turns enough that every input and output buffer has been used once (and at
    // least two): the first shape of a process ran its eval at 0.64 of the roof where the
    // same shape later in the process ran at 0.81, with two (PERF.md 52).
    let warmup = copies.div_ceil(SLOTS).max(2);
    let timed = time_gpu(
        ctx,
        warmup,
        iters,
        &mut [
            copy(0),
            Box::new(|encoder: &mut wgpu::CommandEncoder, i: usize| {
                let j = input_of(i, 1);
                train
                    .borrow_mut()
                    .forward(encoder, &tensor(&xs[j])?, &tensor(&outs[j])?)
            }),
            copy(2),
            Box::new(|encoder: &mut wgpu::CommandEncoder, i: usize| {
                let j = input_of(i, 3);
                eval.forward(encoder, &tensor(&xs[j])?, &tensor(&outs[j])?)
            }),
            copy(4),
            Box::new(|encoder: &mut wgpu::CommandEncoder, i: usize| {
                let j = input_of(i, 5);
                let (x, dy) = (tensor(&xs[j])?, tensor(&dys[i % dy_copies])?);
                train
                    .borrow_mut()
                    .backward(encoder, &x, &dy, &tensor(&outs[j])?)
            }),
        ],
    )?;
    debug_assert_eq!(timed.len(), SLOTS);
    let (copy_kernel, copy_e2e) = fastest_copy(&timed, warmup, kernels);
    let pass = |slot: usize| timed[slot].medians(|_| true).expect("every pass is timed");
    for ((implementation, pass, per_element), (k, e)) in [
        ("copy", "copy", 8),
        ("gpu", "forward", 8),
        ("gpu", "eval", 8),
        ("gpu", "backward", 12),
    ]
    .into_iter()
    .zip([(copy_kernel, copy_e2e), pass(1), pass(3), pass(5)])
    {
        if let Some(k) = k {
            push(implementation, pass, Timing::Kernel, k, per_element);
        }
        push(implementation, pass, Timing::EndToEnd, e, per_element);
    }

    // Each call reads inputs the call before it did not, as each GPU command does (shifted
    // copies: the values change, not the work), and allocates its outputs, as
    // `BatchNorm`'s calls do.
    let cpu_iters = iters.clamp(1, 5);
    let shifted = |a: &ArrayD<f32>| -> Vec<ArrayD<f32>> {
        (0..=cpu_iters)
            .map(|k| a.mapv(|v| v + k as f32 * 1e-3))
            .collect()
    };
    let (cpu_xs, cpu_dys) = (shifted(&x0), shifted(&input(dims, 20, 0.0, 1.0)));
    let mut cpu = bench_layer(&config, Device::Cpu)?;
    for (pass, training) in [("forward", true), ("eval", false)] {
        progress(&format!("{name} {lname}: cpu {pass}"));
        cpu.set_training(training);
        let ms = time_cpu(cpu_iters, |k| {
            cpu.forward(cpu_xs[k].view(), layout).map(|_| ())
        })?;
        push("cpu", pass, Timing::EndToEnd, ms, 8);
    }
    progress(&format!("{name} {lname}: cpu backward"));
    cpu.set_training(true);
    cpu.forward(x0.view(), layout)?;
    let ms = time_cpu(cpu_iters, |k| {
        cpu.backward(cpu_xs[k].view(), cpu_dys[k].view(), layout)
            .map(|_| ())
    })?;
    push("cpu", "backward", Timing::EndToEnd, ms, 12);

    let roof = |timing| {
        rows.iter()
            .find(|r| r.implementation == "copy" && r.timing == timing)
            .map(|r| r.gbps)
    };
    let (roof_kernel, roof_e2e) = (roof(Timing::Kernel), roof(Timing::EndToEnd));
    for r in rows.iter_mut().filter(|r| r.implementation != "cpu") {
        r.roof = match r.timing {
            Timing::Kernel => roof_kernel,
            Timing::EndToEnd => roof_e2e,
        }
        .map(|g| r.gbps / g);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The roof is the fastest copy kernel in its fastest slot, each kernel's time being the
    /// median of the submissions it ran there: here kernel 1 in slot 2, though kernel 0 has
    /// the single fastest submission (an outlier, in slot 0) and the fastest slot on average.
    #[test]
    fn the_roof_is_the_fastest_kernel_in_its_fastest_slot() {
        let (warmup, kernels) = (3, 2);
        // Timed submission t of slot s ran kernel (warmup + t + s / 2) % 2.
        let slot = |s: usize, by_kernel: [[f64; 3]; 2]| {
            let mut next = [0, 0];
            let times: Vec<f64> = (0..6)
                .map(|t| {
                    let k = copy_kernel_of(warmup + t, s, kernels);
                    next[k] += 1;
                    by_kernel[k][next[k] - 1]
                })
                .collect();
            Samples {
                kernel: Some(times.iter().map(|ms| ms / 2.0).collect()),
                end_to_end: times,
            }
        };
        let pass = || Samples {
            kernel: Some(vec![1.0; 6]),
            end_to_end: vec![1.0; 6],
        };
        let timed = [
            slot(0, [[0.5, 6.0, 6.0], [7.0, 7.0, 7.0]]),
            pass(),
            slot(2, [[6.0, 6.0, 6.0], [5.0, 5.5, 5.0]]),
            pass(),
            slot(4, [[6.0, 6.5, 6.0], [9.0, 9.0, 9.0]]),
            pass(),
        ];
        assert_eq!(fastest_copy(&timed, warmup, kernels), (Some(2.5), 5.0));
        // Without timestamps, end to end only.
        let mut untimed = timed;
        for s in &mut untimed {
            s.kernel = None;
        }
        assert_eq!(fastest_copy(&untimed, warmup, kernels), (None, 5.0));
    }

    /// Over the turns, every copy kernel runs in every copy slot.
    #[test]
    fn every_copy_kernel_meets_every_slot() {
        for slot in [0, 2, 4] {
            let ran: std::collections::BTreeSet<usize> =
                (0..2).map(|i| copy_kernel_of(i, slot, 2)).collect();
            assert_eq!(ran, [0, 1].into(), "slot {slot}");
        }
    }

    fn inputs(dims: &[usize]) -> (ArrayD<f32>, ArrayD<f32>) {
        (input(dims, 1, 0.5, 2.0), input(dims, 2, 0.0, 1.0))
    }

    /// The bench's check runs with random parameters and running statistics, so that a kernel
    /// which dropped any of them is refused; at the defaults (gamma 1, beta 0, running mean 0
    /// and var 1) none of these would show.
    #[test]
    fn verification_refuses_a_layer_that_drops_a_parameter() {
        let (x, dy) = inputs(&[4, 8, 3, 3]);
        let config = BatchNormConfig::new(8);
        let defaults = [vec![1.0f32; 8], vec![0.0; 8], vec![0.0; 8], vec![1.0; 8]];
        for (k, name) in ["gamma", "beta", "running_mean", "running_var"]
            .iter()
            .enumerate()
        {
            let mut want = bench_layer(&config, Device::Cpu).unwrap();
            let mut got = bench_layer(&config, Device::Cpu).unwrap();
            let v = &defaults[k];
            match k {
                0 => got.set_gamma(v),
                1 => got.set_beta(v),
                2 => got.set_running_mean(v),
                _ => got.set_running_var(v),
            }
            .unwrap();
            let err = compare_layers(&mut got, &mut want, &x, &dy, Layout::ChannelsFirst);
            assert!(
                matches!(err, Err(BnError::Verification { .. })),
                "a layer without the bench's {name} passed: {err:?}"
            );
        }
        let mut want = bench_layer(&config, Device::Cpu).unwrap();
        let mut got = bench_layer(&config, Device::Cpu).unwrap();
        compare_layers(&mut got, &mut want, &x, &dy, Layout::ChannelsFirst).unwrap();
    }

    /// A refusal names the output, the mode and the shape as the rows do, (N, C, ...) with
    /// its layout, though the check runs on the tensor as stored.
    #[test]
    fn a_refusal_names_the_shape_as_given() {
        let (x, dy) = inputs(&memory_dims(&[4, 8, 3, 3], Layout::ChannelsLast));
        let config = BatchNormConfig::new(8);
        let mut want = bench_layer(&config, Device::Cpu).unwrap();
        let mut got = bench_layer(&config, Device::Cpu).unwrap();
        got.set_beta(&[0.0; 8]).unwrap();
        match compare_layers(&mut got, &mut want, &x, &dy, Layout::ChannelsLast) {
            Err(BnError::Verification { what, .. }) => {
                assert_eq!(what, "y in training on 4x8x3x3 nhwc");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            given_name(&[1024, 4096], Layout::ChannelsLast),
            "1024x4096 nc"
        );
    }

    /// Channels go last for channels-last; a shape without a channel axis comes back as it
    /// is, to be refused by Shape::new rather than panic here.
    #[test]
    fn memory_dims_moves_channels_last() {
        let cl = Layout::ChannelsLast;
        assert_eq!(memory_dims(&[4, 8, 3, 5], cl), vec![4, 3, 5, 8]);
        assert_eq!(memory_dims(&[4, 8], cl), vec![4, 8]);
        assert_eq!(
            memory_dims(&[4, 8, 3], Layout::ChannelsFirst),
            vec![4, 8, 3]
        );
        assert_eq!(memory_dims(&[6], cl), vec![6]);
        assert_eq!(memory_dims(&[], cl), Vec::<usize>::new());
        assert!(matches!(
            Shape::new(&memory_dims(&[6], cl), cl),
            Err(BnError::Rank { .. })
        ));
    }

    /// With two values per channel dx's three paths cancel to nearly nothing, and f32
    /// rounding of the paths' size is all that is left: dx_error lets that through where a
    /// plain relative error does not, and still refuses a dx off by a part of the paths.
    #[test]
    fn dx_error_allows_cancellation_rounding_and_refuses_a_wrong_dx() {
        let (x, dy) = inputs(&[2, 16]);
        let mut layer = bench_layer(&BatchNormConfig::new(16), Device::Cpu).unwrap();
        let forward = layer.forward(x.view(), Layout::ChannelsFirst).unwrap();
        let dx = layer
            .backward(x.view(), dy.view(), Layout::ChannelsFirst)
            .unwrap()
            .dx
            .into_raw_vec_and_offset()
            .0;
        let eps = layer.config().eps;
        let paths = dx_paths(
            &forward,
            &layer.gamma().unwrap(),
            &layer.running_var().unwrap(),
            eps,
            &dy,
        );
        let n = dx.len() as f64;
        let shifted = |size: f64| -> Vec<f32> {
            let step = (size * paths / n.sqrt()) as f32;
            dx.iter().map(|&v| v + step).collect()
        };
        // Rounding: a few ulps of the paths' size in every value.
        let rounded = shifted(1e-7);
        assert!(rel_l2(&rounded, &dx) > TOLERANCE, "dx does not cancel here");
        assert!(dx_error(&rounded, &dx, paths) <= TOLERANCE);
        // A wrong path: off by a thousandth of the paths.
        assert!(dx_error(&shifted(1e-3), &dx, paths) > TOLERANCE);
        assert!(dx_error(&dx[1..], &dx, paths).is_infinite());
    }
}
