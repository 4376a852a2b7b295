//! The compute pipelines, one per shader in `shaders/`, and the dispatch geometry that
//! every kernel of a pass shares.

use bytemuck::{Pod, Zeroable};

use crate::config::Layout;
use crate::error::{BnError, Result};
use crate::shape::Shape;

/// Invocations per workgroup of the reduction and element-wise kernels (the shaders' WG).
pub(crate) const WORKGROUP: u32 = 256;
/// Invocations per workgroup of the kernels with one lane per channel (eval_finalize,
/// count_batch).
pub(crate) const FINALIZE_WORKGROUP: u32 = 64;
/// Workgroup size of the kernels that merge split partials (stats_finalize, grad_finalize).
const MERGE_WORKGROUP: u32 = 256;
/// Partial records each lane of those kernels aims to merge before the lanes fold.
const MERGES_PER_LANE: u32 = 8;
/// The largest binding the kernels use, whatever the adapter allows.
pub(crate) const MAX_BINDING_BYTES: u64 = 1 << 31;
/// Bytes of one partial record (StatsPartial is 16, GradPartial 8).
pub(crate) const PARTIAL_BYTES: u64 = 16;

// Params.flags, as in the shaders.
pub(crate) const UPDATE_RUNNING: u32 = 1;
pub(crate) const BIASED_RUNNING_VAR: u32 = 2;
pub(crate) const FROZEN_STATS: u32 = 4;
/// Coefficient records by four channels (shaders/common/store_coeff.wgsl): set by Geometry
/// where the element-wise kernels take four channels per lane.
pub(crate) const GROUPED_COEFF: u32 = 8;

/// One compiled shader: its pipeline and the bind-group layout derived from it.
pub(crate) struct Kernel {
    name: &'static str,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

impl Kernel {
    /// The kernel `shaders/<name>.wgsl` (`source`), after the prelude and one of the two
    /// subgroup files that every kernel shares.
    fn new(
        device: &wgpu::Device,
        (name, source): (&'static str, &'static str),
        subgroups: bool,
        constants: &[(&str, f64)],
    ) -> Result<Self> {
        let source = if subgroups {
            format!("{PRELUDE}{SUBGROUPS_ON}{source}")
        } else {
            format!("{PRELUDE}{SUBGROUPS_OFF}{source}")
        };
        Self::from_source(device, name, source, constants)
    }

    /// A kernel from its whole source; pipeline errors name `shaders/<name>.wgsl`.
    pub(crate) fn from_source(
        device: &wgpu::Device,
        name: &'static str,
        source: String,
        constants: &[(&str, f64)],
    ) -> Result<Self> {
        // All three filters, as GpuContext::scoped opens them: an error no scope catches goes
        // to wgpu's default handler, which panics.
        let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(name),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                ..Default::default()
            },
            cache: None,
        });
        let layout = pipeline.get_bind_group_layout(0);
        let v = pollster::block_on(validation.pop());
        let i = pollster::block_on(internal.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = v.or(i).or(o) {
            return Err(BnError::Wgpu {
                kernel: format!("shaders/{name}.wgsl"),
                message: e.to_string(),
            });
        }
        Ok(Self {
            name,
            pipeline,
            layout,
        })
    }

    /// A bind group whose binding i is `resources[i]`.
    pub(crate) fn bind(
        &self,
        device: &wgpu::Device,
        resources: &[wgpu::BindingResource<'_>],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry<'_>> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.name),
            layout: &self.layout,
            entries: &entries,
        })
    }

    pub(crate) fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        bind_group: &wgpu::BindGroup,
        groups: (u32, u32, u32),
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, groups.2);
    }
}

/// What every kernel starts with: the uniform, the partial records, the Welford steps.
const PRELUDE: &str = include_str!("../../shaders/common/prelude.wgsl");
/// The lane merges before a workgroup fold, with subgroup operations or without.
const SUBGROUPS_ON: &str = include_str!("../../shaders/common/subgroups_on.wgsl");
const SUBGROUPS_OFF: &str = include_str!("../../shaders/common/subgroups_off.wgsl");

/// Reads `shaders/<name>.wgsl` into the binary, after the parts it shares with other kernels
/// (`shaders/common/<part>.wgsl`), which it names. tests/shader_portability.rs puts the same
/// parts before each kernel (`common_parts`).
macro_rules! shader {
    ($name:literal $(, $part:literal)*) => {
        (
            $name,
            concat!(
                $(include_str!(concat!("../../shaders/common/", $part, ".wgsl")),)*
                include_str!(concat!("../../shaders/", $name, ".wgsl"))
            ),
        )
    };
}

pub(crate) struct Kernels {
    pub(crate) stats_reduce: Kernel,
    pub(crate) stats_reduce_vec4: Kernel,
    pub(crate) stats_reduce_channels: Kernel,
    /// Twin whose lanes write their own records (LANE_RECORDS), where the tuning has them:
    /// taken where a workgroup has one lane per unit (Geometry::lane_records).
    pub(crate) stats_reduce_channels_lanes: Option<Kernel>,
    /// Twin that reads runs per lane (Tuning::run), where the tuning has them: a uniform
    /// could switch one kernel between the two, but lavapipe runs both sides of a branch.
    pub(crate) stats_reduce_vec4_runs: Option<Kernel>,
    /// With lane records wherever the tuning has them.
    pub(crate) stats_reduce_grouped: Kernel,
    pub(crate) stats_finalize: Kernel,
    pub(crate) eval_finalize: Kernel,
    pub(crate) forward_fused: Kernel,
    pub(crate) forward_fused_vec4: Kernel,
    pub(crate) forward_fused_vec4_channels: Kernel,
    pub(crate) grad_reduce: Kernel,
    pub(crate) grad_reduce_vec4: Kernel,
    pub(crate) grad_reduce_channels: Kernel,
    pub(crate) grad_reduce_channels_lanes: Option<Kernel>,
    pub(crate) grad_reduce_vec4_runs: Option<Kernel>,
    pub(crate) grad_reduce_grouped: Kernel,
    pub(crate) grad_finalize: Kernel,
    /// Twin that adds dgamma and dbeta to the buffers' contents (ACCUMULATE).
    pub(crate) grad_finalize_accumulate: Kernel,
    pub(crate) apply_forward: Kernel,
    pub(crate) apply_forward_vec4: ByChannels,
    pub(crate) apply_backward: Kernel,
    pub(crate) apply_backward_vec4: ByChannels,
    /// Twins for eval with running statistics (FROZEN): dx from dy alone, x unread.
    pub(crate) apply_backward_frozen: Kernel,
    pub(crate) apply_backward_vec4_frozen: ByChannels,
    pub(crate) count_batch: Kernel,
    /// Whether the reductions merge lanes with subgroup operations.
    pub(crate) subgroups: bool,
}

impl Kernels {
    /// Every pipeline; the reductions use subgroup operations when `subgroups` is set (the
    /// device has them and the layout check of subgroup_probe.wgsl passed), and the vec4
    /// reductions read as `tuning` says (Tuning::run, Tuning::contiguous_rows).
    pub(crate) fn new(device: &wgpu::Device, subgroups: bool, tuning: Tuning) -> Result<Self> {
        // The vec4 reductions read their runs in pairs.
        debug_assert!(tuning.run == 1 || tuning.run.is_multiple_of(2));
        let plain = |shader| Kernel::new(device, shader, subgroups, &[]);
        // The grouped reductions write lane records wherever the tuning asks for them.
        let grouped = |shader| {
            let lane_records = tuning.lane_records as u8 as f64;
            Kernel::new(device, shader, subgroups, &[("LANE_RECORDS", lane_records)])
        };
        let channels_in_vec4 =
            |shader| Kernel::new(device, shader, subgroups, &[("CHANNELS_IN_VEC4", 1.0)]);
        let by_channels = |shader, frozen: bool| -> Result<ByChannels> {
            let with = |channels: f64| {
                let constants: &[(&str, f64)] = if frozen {
                    &[("CHANNELS_PER_LANE", channels), ("FROZEN", 1.0)]
                } else {
                    &[("CHANNELS_PER_LANE", channels)]
                };
                Kernel::new(device, shader, subgroups, constants)
            };
            Ok(ByChannels {
                one: with(1.0)?,
                two: with(2.0)?,
                four: with(4.0)?,
            })
        };
        let contiguous = tuning.contiguous_rows as u8 as f64;
        let channels = |shader, lane_records: bool| {
            Kernel::new(
                device,
                shader,
                subgroups,
                &[
                    ("CONTIGUOUS_ROWS", contiguous),
                    ("LANE_RECORDS", lane_records as u8 as f64),
                ],
            )
        };
        let channels_lanes = |shader| {
            tuning
                .lane_records
                .then(|| channels(shader, true))
                .transpose()
        };
        let runs = |shader| {
            (tuning.run > 1)
                .then(|| Kernel::new(device, shader, subgroups, &[("RUN", tuning.run as f64)]))
                .transpose()
        };
        Ok(Self {
            stats_reduce: plain(shader!("stats_reduce", "fold_stats"))?,
            stats_reduce_vec4: plain(shader!("stats_reduce_vec4", "fold_stats"))?,
            stats_reduce_channels: channels(shader!("stats_reduce_channels", "fold_stats"), false)?,
            stats_reduce_channels_lanes: channels_lanes(shader!(
                "stats_reduce_channels",
                "fold_stats"
            ))?,
            stats_reduce_vec4_runs: runs(shader!("stats_reduce_vec4", "fold_stats"))?,
            stats_reduce_grouped: grouped(shader!("stats_reduce_grouped", "fold_stats"))?,
            stats_finalize: plain(shader!("stats_finalize", "store_coeff"))?,
            eval_finalize: plain(shader!("eval_finalize", "store_coeff"))?,
            forward_fused: plain(shader!("forward_fused", "fold_stats"))?,
            forward_fused_vec4: plain(shader!("forward_fused_vec4", "fold_stats"))?,
            forward_fused_vec4_channels: channels_in_vec4(shader!(
                "forward_fused_vec4",
                "fold_stats"
            ))?,
            grad_reduce: plain(shader!("grad_reduce", "fold_sums"))?,
            grad_reduce_vec4: plain(shader!("grad_reduce_vec4", "fold_sums"))?,
            grad_reduce_channels: channels(shader!("grad_reduce_channels", "fold_sums"), false)?,
            grad_reduce_channels_lanes: channels_lanes(shader!(
                "grad_reduce_channels",
                "fold_sums"
            ))?,
            grad_reduce_vec4_runs: runs(shader!("grad_reduce_vec4", "fold_sums"))?,
            grad_reduce_grouped: grouped(shader!("grad_reduce_grouped", "fold_sums"))?,
            grad_finalize: plain(shader!("grad_finalize", "store_coeff"))?,
            grad_finalize_accumulate: Kernel::new(
                device,
                shader!("grad_finalize", "store_coeff"),
                subgroups,
                &[("ACCUMULATE", 1.0)],
            )?,
            apply_forward: plain(shader!("apply_forward"))?,
            apply_forward_vec4: by_channels(shader!("apply_forward_vec4", "apply_vec4"), false)?,
            apply_backward: plain(shader!("apply_backward"))?,
            apply_backward_vec4: by_channels(shader!("apply_backward_vec4", "apply_vec4"), false)?,
            apply_backward_frozen: Kernel::new(
                device,
                shader!("apply_backward"),
                subgroups,
                &[("FROZEN", 1.0)],
            )?,
            apply_backward_vec4_frozen: by_channels(
                shader!("apply_backward_vec4", "apply_vec4"),
                true,
            )?,
            count_batch: plain(shader!("count_batch"))?,
            subgroups,
        })
    }

    /// The statistics reduction that suits `geometry`.
    pub(crate) fn stats_reduce(&self, geometry: &Geometry) -> &Kernel {
        match (geometry.reduce, &self.stats_reduce_vec4_runs) {
            (Reduce::Vec4Inner, Some(runs)) if geometry.runs => runs,
            (Reduce::Scalar, _) => &self.stats_reduce,
            (Reduce::Vec4Inner, _) => &self.stats_reduce_vec4,
            (Reduce::Vec4Channels, _) => match &self.stats_reduce_channels_lanes {
                Some(lanes) if geometry.lane_records => lanes,
                _ => &self.stats_reduce_channels,
            },
            (Reduce::Vec4Grouped, _) => &self.stats_reduce_grouped,
        }
    }

    /// The single-read forward for `geometry`'s layout of loads, where there is one.
    pub(crate) fn forward_fused(&self, geometry: &Geometry) -> Option<&Kernel> {
        match geometry.reduce {
            Reduce::Scalar => Some(&self.forward_fused),
            Reduce::Vec4Inner => Some(&self.forward_fused_vec4),
            Reduce::Vec4Channels => Some(&self.forward_fused_vec4_channels),
            Reduce::Vec4Grouped => None,
        }
    }

    pub(crate) fn grad_reduce(&self, geometry: &Geometry) -> &Kernel {
        match (geometry.reduce, &self.grad_reduce_vec4_runs) {
            (Reduce::Vec4Inner, Some(runs)) if geometry.runs => runs,
            (Reduce::Scalar, _) => &self.grad_reduce,
            (Reduce::Vec4Inner, _) => &self.grad_reduce_vec4,
            (Reduce::Vec4Channels, _) => match &self.grad_reduce_channels_lanes {
                Some(lanes) if geometry.lane_records => lanes,
                _ => &self.grad_reduce_channels,
            },
            (Reduce::Vec4Grouped, _) => &self.grad_reduce_grouped,
        }
    }

    pub(crate) fn apply_forward(&self, geometry: &Geometry) -> &Kernel {
        match geometry.apply {
            Apply::Scalar => &self.apply_forward,
            Apply::Vec4OneChannel => &self.apply_forward_vec4.one,
            Apply::Vec4TwoChannels => &self.apply_forward_vec4.two,
            Apply::Vec4FourChannels => &self.apply_forward_vec4.four,
        }
    }

    /// dx's kernel; `frozen`: eval with running statistics, where dx does not depend on x.
    pub(crate) fn apply_backward(&self, geometry: &Geometry, frozen: bool) -> &Kernel {
        let (scalar, vec4) = if frozen {
            (
                &self.apply_backward_frozen,
                &self.apply_backward_vec4_frozen,
            )
        } else {
            (&self.apply_backward, &self.apply_backward_vec4)
        };
        match geometry.apply {
            Apply::Scalar => scalar,
            Apply::Vec4OneChannel => &vec4.one,
            Apply::Vec4TwoChannels => &vec4.two,
            Apply::Vec4FourChannels => &vec4.four,
        }
    }
}

/// A vec4 element-wise shader's pipelines by how many channels a lane's four values fall
/// into (its CHANNELS_PER_LANE; see Apply).
pub(crate) struct ByChannels {
    one: Kernel,
    two: Kernel,
    four: Kernel,
}

/// Which element-wise kernels a shape takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Apply {
    /// One value per load: planes that do not divide by four.
    Scalar,
    /// Four values per load, of one channel (inner divides by four).
    Vec4OneChannel,
    /// Four values per load, of one channel or the next (inner is 2 or more).
    Vec4TwoChannels,
    /// Four values per load, of four neighbouring channels (inner is 1: channels-last).
    Vec4FourChannels,
}

impl Apply {
    /// The kind for a [channels][inner] plane of `plane` values: a lane's four values start
    /// at a multiple of four, so with inner ≥ 2 they cross at most one channel boundary, and
    /// with inner = 1 they are four channels.
    fn of(plane: u64, inner: u64) -> Self {
        if inner.is_multiple_of(4) {
            Apply::Vec4OneChannel
        } else if !plane.is_multiple_of(4) {
            Apply::Scalar
        } else if inner == 1 {
            Apply::Vec4FourChannels
        } else {
            Apply::Vec4TwoChannels
        }
    }

    /// Workgroups along x and z for rows of `width` values, a lane per value or per vec4:
    /// columns past one dimension's workgroups wrap into z (a plane of 64×1024×1024 is 65,536
    /// workgroups of vec4).
    fn column_groups(self, width: u64, max_groups: u64) -> (u64, u64) {
        let lanes = if self == Apply::Scalar {
            width
        } else {
            width / 4
        };
        let groups = lanes.div_ceil(WORKGROUP as u64);
        (groups.min(max_groups), groups.div_ceil(max_groups))
    }
}

/// The uniform every kernel reads; field order and types match `struct Params` in
/// `shaders/common/prelude.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub(crate) struct Params {
    pub channels: u32,
    pub inner: u32,
    pub outer: u32,
    pub count: u32,
    pub splits: u32,
    pub rows_per_split: u32,
    pub tile_c: u32,
    pub tile_i: u32,
    pub tile_o: u32,
    pub apply_width: u32,
    pub apply_rows: u32,
    pub apply_rows_per_group: u32,
    pub total: u32,
    pub flags: u32,
    pub eps: f32,
    pub momentum: f32,
    pub split_offset: u32,
    pub inner_splits: u32,
    pub inner_per_split: u32,
    /// Lanes that merge one channel's splits (stats_finalize, grad_finalize).
    pub merge_lanes: u32,
    /// Where the values whose median a reduction shifts a channel by lie, counted from the
    /// channel's first value in this chunk (`shift_samples`).
    pub shift_at: [u32; 3],
    /// The chunk's first channel, where its per-channel records (coefficients, saved
    /// statistics) start: 0 but in a block of a row over one binding (`row_blocks`).
    pub channel_base: u32,
}

/// The reductions shift a channel's values by one of its own values before accumulating, so
/// that the differences are small and exact near the mean and the f32 mean and M2 keep their
/// precision where the mean is large next to the spread (mean 1e4, std 1e-2). One value would
/// do, but an outlier taken as the shift sets the scale: shifted by a value 1e4 away from the
/// rest, every value is rounded to 1e-3 and the mean is off by 1e-2 relative (PERF.md 51). So
/// the shift is the median of three values. Outliers sit where data has structure: a tensor's
/// first and last values, each image's corners and edges, each sequence's first token (in
/// channels-last rows, at every multiple of its length). So the three are at no round
/// fraction of the channel but at fractions (k + 1)·φ mod 1 (0.618, 0.236, 0.854) of its
/// `rows · inner` values in this chunk, in order. Returned as element offsets from the
/// channel's first value in the [rows][channels][inner] view.
pub(crate) fn shift_offsets(rows: u64, channels: u64, inner: u64) -> [u32; 3] {
    const FRACTIONS: [f64; 3] = [0.618_033_988_75, 0.236_067_977_5, 0.854_101_966_25];
    let values = rows * inner;
    let at = |f: f64| {
        let j = ((values as f64 * f) as u64).min(values - 1);
        (j / inner * channels * inner + j % inner) as u32
    };
    [at(FRACTIONS[0]), at(FRACTIONS[1]), at(FRACTIONS[2])]
}

/// How much work one reduction workgroup takes on: GPUs want many workgroups in flight, CPU
/// rasterizers (lavapipe, llvmpipe: a few threads, each running whole workgroups) want few
/// large ones, since every workgroup pays for its barriers and shared-memory merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tuning {
    /// Loads each lane of a reduction aims to make before the workgroup merges.
    pub loads_per_lane: u64,
    /// Reductions split further while they would have fewer workgroups than this.
    pub min_groups: u64,
    /// At most this many lanes side by side along the inner axis: a GPU wants a whole
    /// workgroup reading one contiguous run; a CPU rasterizer wants one SIMD register's worth,
    /// so that a workgroup covers many channels and each lane loops longer.
    pub max_tile_i: u32,
    /// Units (vec4) that a lane of a channels-first vec4 reduction reads back to back (the
    /// shaders' RUN): 1 on GPUs, where neighbouring lanes must read neighbouring addresses;
    /// more on CPU rasterizers, which run a lane's loads one after another and pay less for a
    /// run at constant offsets from one index. Runs are taken on planes of 16 runs or more
    /// (measured slower on 14×14), with as few lanes along inner as keep the workgroup busy.
    pub run: u32,
    /// Whether each lane of a channels-last reduction takes a contiguous range of rows rather
    /// than every tile_o-th row (the shaders' CONTIGUOUS_ROWS): GPUs want the lanes of a
    /// subgroup on neighbouring rows; a CPU rasterizer, which runs one SIMD group's loads
    /// after another, wants each group reading one sequential stream.
    pub contiguous_rows: bool,
    /// Whether the training forward may read x once when channels fit (forward_fused).
    pub single_read: bool,
    /// Whether the lanes of a reduction may write their own partial records instead of
    /// folding the workgroup's lanes in workgroup memory (the shaders' LANE_RECORDS; where,
    /// Geometry::new says): a GPU folds for next to nothing and keeps its records few; a CPU
    /// rasterizer runs a workgroup with barriers as coroutines and pays per lane for each
    /// workgroup-memory access, dearest where lanes read little (16×2048×7×7, PERF.md 42).
    pub lane_records: bool,
    /// Whether the reductions merge lanes with subgroup operations where the device has
    /// them: on GPUs it saves a fold level; on lavapipe it saved nothing (PERF.md 18) and
    /// reading the subgroup size uniformly costs a barrier (PERF.md 43).
    pub subgroups: bool,
}

impl Tuning {
    pub(crate) fn for_device(device_type: Option<wgpu::DeviceType>) -> Self {
        match device_type {
            Some(wgpu::DeviceType::Cpu) => Self {
                loads_per_lane: 512,
                min_groups: 32,
                max_tile_i: 8,
                run: 8,
                contiguous_rows: true,
                // Measured slower there: lavapipe saves every lane's registers at each barrier.
                single_read: false,
                lane_records: true,
                subgroups: false,
            },
            _ => Self {
                loads_per_lane: 64,
                min_groups: 512,
                max_tile_i: WORKGROUP,
                run: 1,
                contiguous_rows: false,
                // Measured slower on an H100 too (PERF.md 41): with whole channels per
                // workgroup, too few workgroups run to keep the memory busy.
                single_read: false,
                lane_records: false,
                subgroups: true,
            },
        }
    }
}

/// Which reduction kernel reads the tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reduce {
    /// One value per load: any shape.
    Scalar,
    /// Four values of one channel per load: inner % 4 == 0.
    Vec4Inner,
    /// Four channels per load: inner == 1 and channels % 4 == 0.
    Vec4Channels,
    /// Four channels' worth of a plane per group of `inner` loads: 1 < inner <= 256 with
    /// inner % 4 != 0, and channels % 4 == 0 (see stats_reduce_grouped.wgsl).
    Vec4Grouped,
}

/// Loads a lane of forward_fused (scalar) and forward_fused_vec4 can hold: their CAPACITY.
const FUSED_CAPACITY_SCALAR: u64 = 64;
const FUSED_CAPACITY_VEC4: u64 = 16;

/// The single-read forward's own tiling: whole channels per workgroup.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fused {
    pub tile_c: u32,
    pub tile_i: u32,
    pub tile_o: u32,
    pub groups: u32,
}

impl Fused {
    /// A tiling under which a workgroup's lanes hold all of its channels' values, if any.
    fn new(
        reduce: Reduce,
        units_c: u32,
        units_i: u32,
        outer: u32,
        max_groups: u64,
    ) -> Option<Self> {
        let capacity = match reduce {
            Reduce::Scalar => FUSED_CAPACITY_SCALAR,
            Reduce::Vec4Inner | Reduce::Vec4Channels => FUSED_CAPACITY_VEC4,
            Reduce::Vec4Grouped => return None,
        };
        let tile_i = units_i.next_power_of_two().min(WORKGROUP);
        let loads = |tile_c: u32| {
            let tile_o = (WORKGROUP / (tile_i * tile_c)) as u64;
            (outer as u64).div_ceil(tile_o) * (units_i as u64).div_ceil(tile_i as u64)
        };
        if loads(1) > capacity {
            return None;
        }
        // More channels per workgroup while they still fit and leave 64 workgroups or more.
        let mut tile_c = 1;
        while tile_i * tile_c * 2 <= WORKGROUP
            && tile_c * 2 <= units_c.next_power_of_two()
            && loads(tile_c * 2) <= capacity
            && units_c.div_ceil(tile_c * 2) >= 64
        {
            tile_c *= 2;
        }
        let groups = units_c.div_ceil(tile_c);
        (groups as u64 <= max_groups).then_some(Self {
            tile_c,
            tile_i,
            tile_o: WORKGROUP / (tile_i * tile_c),
            groups,
        })
    }
}

// Params in shaders/common/prelude.wgsl declares 20 four-byte fields, a vec3<u32> and a u32.
const _: () = assert!(std::mem::size_of::<Params>() == 96);

/// How one shape is cut into workgroups, for every kernel of a pass.
#[derive(Clone, Debug)]
pub(crate) struct Geometry {
    pub reduce: Reduce,
    /// The vec4 reductions are the run-reading twins (Kernels::stats_reduce_vec4_runs).
    pub runs: bool,
    /// The reductions' lanes write their own partial records (Tuning::lane_records).
    pub lane_records: bool,
    /// Set when the training forward can read x once (see forward_fused_vec4.wgsl); only for
    /// tensors that fit one storage binding.
    pub fused: Option<Fused>,
    pub apply: Apply,
    pub finalize_groups: (u32, u32, u32),
    /// Workgroups of stats_finalize and grad_finalize, which merge the partial records.
    pub merge_groups: (u32, u32, u32),
    /// Partial records per channel, over all chunks.
    pub splits: u32,
    /// Runs of whole rows, each within one storage binding (or blocks of a row's channels,
    /// `row_blocks`); kernels that read the tensor run once per chunk, the per-channel
    /// kernels once per pass, with `channel_params`.
    pub chunks: Vec<Chunk>,
    /// The tensor's channels.
    pub channels: u32,
}

/// Rows of the tensor that one binding covers, or a block of one row's channels
/// (`Geometry::row_blocks`), and how its kernels are dispatched.
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    /// This chunk's uniform; flags, eps and momentum are the layer's to fill in.
    pub params: Params,
    /// Byte offset and length of the chunk in the tensor.
    pub offset: u64,
    pub bytes: u64,
    pub reduce_groups: (u32, u32, u32),
    /// Columns along x, wrapping into z past a dimension's workgroups; row groups along y.
    pub apply_groups: (u32, u32, u32),
}

/// The most channels the per-channel kernels reach: those with one lane per channel, on one
/// line of workgroups (at that count the merging finalize kernels give each channel at most
/// four lanes), and whose 16-byte records (`saved`, `coeff`) one buffer and one binding hold.
pub(crate) fn max_channels(limits: &wgpu::Limits) -> u64 {
    let lanes = limits.max_compute_workgroups_per_dimension as u64 * FINALIZE_WORKGROUP as u64;
    let bytes = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    lanes.min(bytes / 16)
}

impl Geometry {
    /// The uniform of forward_fused: the single chunk's, with its own tiling.
    pub(crate) fn fused_params(&self) -> Option<Params> {
        self.fused.map(|f| Params {
            tile_c: f.tile_c,
            tile_i: f.tile_i,
            tile_o: f.tile_o,
            ..self.chunks[0].params
        })
    }

    pub(crate) fn partials_bytes(&self) -> u64 {
        self.channels as u64 * self.splits as u64 * PARTIAL_BYTES
    }

    /// The uniform of the per-channel kernels (the finalize kernels): every channel of the
    /// tensor, with the splits and merge lanes that all chunks share.
    pub(crate) fn channel_params(&self) -> Params {
        Params {
            channels: self.channels,
            split_offset: 0,
            channel_base: 0,
            ..self.chunks[0].params
        }
    }

    pub(crate) fn new(shape: &Shape, limits: &wgpu::Limits, tuning: Tuning) -> Result<Self> {
        Self::build(shape, limits, tuning, None)
    }

    /// `new`, or for `block` the geometry of one block of a row over one binding
    /// (`row_blocks`), whose records share a binding with every block's.
    fn build(
        shape: &Shape,
        limits: &wgpu::Limits,
        tuning: Tuning,
        block: Option<BlockOf>,
    ) -> Result<Self> {
        // Empty batches never reach the kernels (see GpuBatchNorm::prepare_forward).
        shape.expect_values()?;
        let (outer, channels, inner) = shape.view();
        let max_groups = limits.max_compute_workgroups_per_dimension as u64;
        let limit = |what, value: u64, limit: u64| {
            if value > limit {
                Err(BnError::Limit { what, value, limit })
            } else {
                Ok(())
            }
        };
        limit(
            "values per channel",
            shape.per_channel() as u64,
            u32::MAX as u64,
        )?;
        limit("channels", channels as u64, max_channels(limits))?;
        // Rows per chunk: as many as one binding holds, starting at aligned offsets.
        let row_bytes = (channels * inner * 4) as u64;
        // At most 2 GiB per binding, whatever the adapter allows (Metal reports its whole
        // buffer length): element indices in the shaders are u32, and a lane then counts at
        // most 2^21 values of a split, well inside what its f32 Welford count holds exactly.
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(MAX_BINDING_BYTES);
        if row_bytes > max_binding {
            return Self::row_blocks(shape, limits, tuning, max_binding);
        }
        let rows_per_chunk = if outer as u64 * row_bytes <= max_binding {
            outer as u64
        } else {
            let align = limits.min_storage_buffer_offset_alignment as u64;
            let row_step = align / gcd(row_bytes, align);
            let rows = max_binding / row_bytes / row_step * row_step;
            limit(
                "bytes of the rows that keep a chunk's offset aligned, in one storage binding",
                row_step * row_bytes,
                max_binding,
            )?;
            rows
        };
        let (outer, channels, inner) = (outer as u32, channels as u32, inner as u32);

        // Reduction: lanes (tile_c, tile_i, tile_o) over channel units, inner units and outer
        // rows, where a unit is what one lane loads at a time.
        // Channel blocks go along y, one dimension of workgroups: a workgroup takes at least
        // this many channel units, so the lanes along inner are capped to leave room for them.
        let least_tile_c = |units_c: u32| (units_c as u64).div_ceil(max_groups).next_power_of_two();
        // The grouped kernels keep a lane to one position of the group, which fixes their
        // lanes along inner: where that leaves too few for the channels, the scalar kernels.
        let grouped_fits = |units_c: u32| {
            least_tile_c(units_c)
                <= (WORKGROUP / inner.next_power_of_two()).min(WORKGROUP / 4) as u64
        };
        let (reduce, units_c, units_i) = if inner.is_multiple_of(4) {
            (Reduce::Vec4Inner, channels, inner / 4)
        } else if inner == 1 && channels.is_multiple_of(4) {
            (Reduce::Vec4Channels, channels / 4, 1)
        } else if block.is_none_or(|b| b.grouped)
            && inner <= WORKGROUP
            && channels.is_multiple_of(4)
            && grouped_fits(channels / 4)
        {
            (Reduce::Vec4Grouped, channels / 4, inner)
        } else {
            (Reduce::Scalar, channels, inner)
        };
        let chunk_rows = (outer as u64).min(rows_per_chunk);
        let run = match reduce {
            // Whole runs only: the run loop has no tail (prelude, first_run).
            Reduce::Vec4Inner
                if units_i >= 16 * tuning.run && units_i.is_multiple_of(tuning.run) =>
            {
                tuning.run
            }
            _ => 1,
        };
        let (tile_i, max_tile_c) = match reduce {
            // A lane keeps to one position of the group; four writer lanes per group.
            Reduce::Vec4Grouped => (units_i.next_power_of_two(), WORKGROUP / 4),
            _ => {
                // The tuning's lanes along inner (with runs: as few as possible), more where
                // channels and rows would leave lanes of the workgroup without work.
                let busy = |tile_i: u32| {
                    let tile_c = units_c.next_power_of_two().min(WORKGROUP / tile_i);
                    tile_i as u64 * tile_c as u64 * chunk_rows.next_power_of_two()
                        >= WORKGROUP as u64
                };
                let most = units_i
                    .div_ceil(run)
                    .next_power_of_two()
                    .min(WORKGROUP / least_tile_c(units_c).min(WORKGROUP as u64) as u32);
                let mut tile_i = if run > 1 {
                    1
                } else {
                    most.min(tuning.max_tile_i)
                };
                while tile_i < most && !busy(tile_i) {
                    tile_i *= 2;
                }
                (tile_i, WORKGROUP)
            }
        };
        let tile_c = units_c
            .next_power_of_two()
            .min(WORKGROUP / tile_i)
            .min(max_tile_c);
        let tile_o = WORKGROUP / (tile_i * tile_c);
        let channel_blocks = units_c.div_ceil(tile_c) as u64;
        limit("channel blocks", channel_blocks, max_groups)?;
        // The tuning's loads per lane, but split further while there are too few workgroups:
        // first into fewer rows (never fewer than the workgroup has lanes along rows, or 8
        // loads per lane), then, where rows are few and long, into ranges along inner. Split
        // counts are worked out rather than halved into, so that they come out even (13
        // workgroups on two threads leave one idle for a thirteenth of the time).
        let (tile_o64, lanes) = (tile_o as u64, WORKGROUP as u64);
        let per_row = units_i as u64 * tile_c as u64;
        let mut rows_per_split = (tuning.loads_per_lane * lanes).div_ceil(per_row);
        let wanted = tuning.min_groups.div_ceil(channel_blocks);
        if chunk_rows.div_ceil(rows_per_split) < wanted {
            rows_per_split = chunk_rows
                .div_ceil(wanted)
                .max((8 * lanes).div_ceil(per_row))
                .min(rows_per_split);
        }
        let rows_per_split = rows_per_split
            .max(chunk_rows.div_ceil(max_groups))
            .next_multiple_of(tile_o64);
        let row_splits = chunk_rows.div_ceil(rows_per_split);
        // Inner ranges are whole sweeps of the lanes along inner (and their runs).
        let sweep = tile_i as u64 * run as u64;
        let mut inner_per_split = units_i as u64;
        if reduce != Reduce::Vec4Grouped && row_splits < wanted {
            let rows = rows_per_split.min(chunk_rows);
            let floor = (tuning.loads_per_lane / 4 * lanes).div_ceil(rows * tile_c as u64);
            // No more splits along inner than a dimension of workgroups holds beside the rows'.
            let most_inner = (max_groups / row_splits).max(1);
            inner_per_split = inner_per_split
                .div_ceil(wanted.div_ceil(row_splits))
                .max(floor)
                .max((units_i as u64).div_ceil(most_inner))
                .next_multiple_of(sweep)
                .min(units_i as u64);
        }
        // Lane records where the tuning wants them and they cost no more records than the
        // fold (one lane per unit), or where the fold's merge is dear (the grouped kernels,
        // whose writer lanes merge a channel's positions one after another). A lane record
        // is written and read back per lane, as dear as the fold per lane on lavapipe, so
        // where a workgroup has many lanes per unit (channels-last 56×56: 16) they measured
        // slower (PERF.md 42).
        let lane_records = tuning.lane_records
            && match reduce {
                Reduce::Vec4Grouped => true,
                Reduce::Vec4Channels => tile_o == 1,
                Reduce::Scalar | Reduce::Vec4Inner => false,
            };
        // Records per channel that one split writes: one, but the grouped lane records, one
        // per lane along rows and position the channel spans.
        let records_per_split = if lane_records && reduce == Reduce::Vec4Grouped {
            tile_o * grouped_positions(inner)
        } else {
            1
        };
        // The finalize kernels bind every channel's records at once. Where the splits above
        // would make more than one binding holds (many channels over many chunks), fewer and
        // longer ones, down to one per chunk; past that the shape is refused below.
        let chunk_count = (outer as u64).div_ceil(rows_per_chunk);
        let inner_splits = (units_i as u64).div_ceil(inner_per_split);
        // A block's records sit beside those of the tensor's other channels and rows.
        let (record_channels, record_rows) =
            block.map_or((channels as u64, 1), |b| (b.channels, b.blocks_per_channel));
        let per_channel_split = record_channels * PARTIAL_BYTES * records_per_split as u64;
        let splits_fit = max_binding / per_channel_split / record_rows;
        let (rows_per_split, inner_per_split) =
            if chunk_count * row_splits * inner_splits > splits_fit {
                let per_chunk = (splits_fit / chunk_count).max(1);
                let rows = chunk_rows
                    .div_ceil(per_chunk)
                    .max(chunk_rows.div_ceil(max_groups))
                    .next_multiple_of(tile_o64);
                (rows, units_i as u64)
            } else {
                (rows_per_split, inner_per_split)
            };
        let inner_splits = (units_i as u64).div_ceil(inner_per_split) as u32;
        // The run loop has no tail: every split's range divides into whole runs.
        debug_assert!(
            run == 1 || (units_i.is_multiple_of(run) && inner_per_split.is_multiple_of(run as u64))
        );
        // The grouped shaders keep a lane to one position of a whole row of groups.
        debug_assert!(reduce != Reduce::Vec4Grouped || inner_splits == 1);
        // A workgroup's subgroup merges add its lanes' counts in f32, exact to 2^24: a device
        // of so few workgroups per dimension that one split takes more is refused.
        limit(
            "loads of one channel that a workgroup merges",
            rows_per_split * inner_per_split,
            1 << 24,
        )?;
        let (rows_per_split, inner_per_split) = (rows_per_split as u32, inner_per_split as u32);

        // Element-wise: rows of whole [channels][inner] planes, at least 1024 columns wide.
        let plane = channels as u64 * inner as u64;
        let apply = Apply::of(plane, inner as u64);
        let planes_per_row = 1024u64.div_ceil(plane).min(chunk_rows).max(1);
        let apply_width = plane * planes_per_row;
        let (columns_x, columns_z) = apply.column_groups(apply_width, max_groups);
        limit(
            "element-wise column workgroups, wrapped",
            columns_z,
            max_groups,
        )?;

        let mut chunks = Vec::new();
        let mut first_row = 0u64;
        let mut splits = 0u32;
        while first_row < outer as u64 {
            let rows = (outer as u64 - first_row).min(rows_per_chunk);
            let chunk_splits = (rows as u32).div_ceil(rows_per_split) * inner_splits;
            // Bounded by the rules above (rows by max_groups, inner by what is left of it); a
            // refusal rather than a failed dispatch should they change.
            limit("reduction workgroups", chunk_splits as u64, max_groups)?;
            let chunk_records = chunk_splits * records_per_split;
            let apply_rows = rows.div_ceil(planes_per_row);
            let apply_rows_per_group = apply_rows.min(16).max(apply_rows.div_ceil(max_groups));
            let params = Params {
                channels,
                inner,
                outer: rows as u32,
                count: shape.per_channel() as u32,
                splits: 0,
                rows_per_split,
                tile_c,
                tile_i,
                tile_o,
                apply_width: apply_width as u32,
                apply_rows: apply_rows as u32,
                apply_rows_per_group: apply_rows_per_group as u32,
                total: (rows * plane) as u32,
                flags: if apply == Apply::Vec4FourChannels {
                    GROUPED_COEFF
                } else {
                    0
                },
                eps: 0.0,
                momentum: 0.0,
                split_offset: splits,
                inner_splits,
                inner_per_split,
                merge_lanes: 0,
                shift_at: shift_offsets(rows, channels as u64, inner as u64),
                channel_base: 0,
            };
            chunks.push(Chunk {
                params,
                offset: first_row * row_bytes,
                bytes: rows * row_bytes,
                reduce_groups: (chunk_splits, channel_blocks as u32, 1),
                apply_groups: (
                    columns_x as u32,
                    apply_rows.div_ceil(apply_rows_per_group) as u32,
                    columns_z as u32,
                ),
            });
            splits += chunk_records;
            first_row += rows;
        }
        let merge_lanes = settle_splits(&mut chunks, channels, splits, max_binding, max_groups)?;
        let fused = (tuning.single_read && chunks.len() == 1)
            .then(|| Fused::new(reduce, units_c, units_i, outer, max_groups))
            .flatten();
        Ok(Self {
            reduce,
            runs: run > 1,
            lane_records,
            fused,
            apply,
            finalize_groups: (channels.div_ceil(FINALIZE_WORKGROUP), 1, 1),
            merge_groups: (channels.div_ceil(MERGE_WORKGROUP / merge_lanes), 1, 1),
            splits,
            chunks,
            channels,
        })
    }

    /// A channels-first tensor whose rows (one sample's C × spatial values) are each larger
    /// than one storage binding: each row runs in blocks of channels, a chunk each, and where
    /// one channel's plane is over a binding itself, each plane in equal slices, a block of
    /// one channel each. Every block takes the tiling and splits of a full one (the geometry
    /// of one row of `per_block` channels of `slice` values), so that each channel has as
    /// many partial records in each block; a block's records go where its channels' are
    /// through its split_offset (channel c0 + c, split s of slice j of row n at
    /// (c0 + c)·splits + (n·slices + j)·block_splits + s), and the per-channel records that it
    /// reads (coefficients, statistics) from its channel_base on. Refused where the rows do
    /// not start at aligned offsets (more than one sample whose bytes are not a multiple of
    /// the storage offset alignment), or where neither the fewest channels that keep offsets
    /// aligned nor a plane's slices fit one binding. (Channels-last rows are one position's
    /// channels, which fit whenever the layer's records do.)
    fn row_blocks(
        shape: &Shape,
        limits: &wgpu::Limits,
        tuning: Tuning,
        max_binding: u64,
    ) -> Result<Self> {
        let (outer, channels, inner) = shape.view();
        let (outer64, channels64, inner64) = (outer as u64, channels as u64, inner as u64);
        let row_bytes = channels64 * inner64 * 4;
        let align = limits.min_storage_buffer_offset_alignment as u64;
        // A block starts where x's offset is aligned; where a lane's four values may span two
        // channels (inner not a multiple of four: the grouped reductions, the two-channel
        // element-wise kernels), at a multiple of four channels too.
        let four = if inner.is_multiple_of(4) { 1 } else { 4 };
        let step = lcm(four, align / gcd(inner64 * 4, align));
        let fit = max_binding / (inner64 * 4) / step * step;
        // Where not even that many channels fit, one channel's plane runs in equal slices,
        // each a block of its own.
        let slices = if fit > 0 {
            1
        } else {
            plane_slices(inner64, align, max_binding).ok_or(BnError::Limit {
                what: "bytes of the fewest channels that a block of a sample over one storage binding takes (a plane over one cuts into at most 64 equal slices, of whole vec4 at aligned offsets), in one binding",
                value: step * inner64 * 4,
                limit: max_binding,
            })?
        };
        let (per_block, slice) = (fit.max(1), inner64 / slices);
        if inner == 1 || (outer > 1 && !row_bytes.is_multiple_of(align)) {
            return Err(BnError::Limit {
                what: "bytes of one sample in one storage binding (a sample over one runs in blocks of channels only where its bytes are a multiple of the storage offset alignment)",
                value: row_bytes,
                limit: max_binding,
            });
        }
        let block_shape = Shape::new(
            &[1, per_block as usize, slice as usize],
            Layout::ChannelsFirst,
        )?;
        // One read per pass needs a whole tensor in one chunk.
        let block_tuning = Tuning {
            single_read: false,
            ..tuning
        };
        // The grouped reductions need every block's channels in whole groups of four, and
        // where they write a record per lane (Tuning::lane_records, compiled into their
        // kernels) their records take as many bytes as the values: a row over one binding
        // would have records over one too. The scalar reductions there.
        let of = BlockOf {
            channels: channels64,
            blocks_per_channel: outer64 * slices,
            grouped: channels.is_multiple_of(4) && !tuning.lane_records,
        };
        let block = Self::build(&block_shape, limits, block_tuning, Some(of))?;
        let first = &block.chunks[0];
        let block_splits = block.splits as u64;
        let splits = outer64 * slices * block_splits;
        let (mut chunks, max_groups) = (Vec::new(), limits.max_compute_workgroups_per_dimension);
        // The element-wise kernels by the whole plane, not by the block's: where C·inner is not
        // a multiple of four, the last block's plane is not either, and every block takes
        // scalar loads.
        let apply = Apply::of(channels64 * inner64, inner64);
        let blocks = (0..outer64).flat_map(|n| {
            (0..channels64)
                .step_by(per_block as usize)
                .flat_map(move |c0| (0..slices).map(move |j| (n, c0, j)))
        });
        for (n, c0, j) in blocks {
            let block_channels = (channels64 - c0).min(per_block);
            let plane = block_channels * slice;
            let units_c = match block.reduce {
                Reduce::Vec4Grouped => block_channels.div_ceil(4),
                _ => block_channels,
            };
            let (columns_x, columns_z) = apply.column_groups(plane, max_groups as u64);
            if columns_z > max_groups as u64 {
                return Err(BnError::Limit {
                    what: "element-wise column workgroups, wrapped",
                    value: columns_z,
                    limit: max_groups as u64,
                });
            }
            chunks.push(Chunk {
                params: Params {
                    channels: block_channels as u32,
                    count: shape.per_channel() as u32,
                    apply_width: plane as u32,
                    total: plane as u32,
                    split_offset: (c0 * splits + (n * slices + j) * block_splits) as u32,
                    channel_base: c0 as u32,
                    ..first.params
                },
                offset: n * row_bytes + c0 * inner64 * 4 + j * slice * 4,
                bytes: plane * 4,
                reduce_groups: (
                    first.reduce_groups.0,
                    units_c.div_ceil(first.params.tile_c as u64) as u32,
                    1,
                ),
                apply_groups: (columns_x as u32, 1, columns_z as u32),
            });
        }
        let channels = channels as u32;
        let splits = u32::try_from(splits).map_err(|_| BnError::Limit {
            what: "partial records per channel",
            value: splits,
            limit: u32::MAX as u64,
        })?;
        let merge_lanes = settle_splits(
            &mut chunks,
            channels,
            splits,
            max_binding,
            max_groups as u64,
        )?;
        Ok(Self {
            reduce: block.reduce,
            runs: block.runs,
            lane_records: block.lane_records,
            fused: None,
            apply,
            finalize_groups: (channels.div_ceil(FINALIZE_WORKGROUP), 1, 1),
            merge_groups: (channels.div_ceil(MERGE_WORKGROUP / merge_lanes), 1, 1),
            splits,
            chunks,
            channels,
        })
    }
}

/// How many equal slices a channels-first plane of `inner` values, itself over one binding,
/// runs in (`Geometry::row_blocks`): as few as fit one binding, each of whole vec4 starting
/// at an aligned offset (so the plane's own bytes must be aligned, as every channel's start
/// then is); at most 64, or None.
fn plane_slices(inner: u64, align: u64, max_binding: u64) -> Option<u64> {
    if !inner.is_multiple_of(4) || !(inner * 4).is_multiple_of(align) {
        return None;
    }
    ((inner * 4).div_ceil(max_binding)..=64).find(|&k| {
        let slice = inner / k;
        inner.is_multiple_of(k) && slice.is_multiple_of(4) && (slice * 4).is_multiple_of(align)
    })
}

/// What the geometry of one block of a row (`Geometry::row_blocks`) must know of the tensor:
/// its channels, and how many blocks each channel has (rows × slices of a plane), whose
/// records share the block's binding; and whether the grouped reductions suit every block
/// (a channel count that is a multiple of four).
#[derive(Clone, Copy)]
struct BlockOf {
    channels: u64,
    blocks_per_channel: u64,
    grouped: bool,
}

/// Gives every chunk the tensor's split count and the finalize kernels' lanes per channel:
/// enough that each merges about MERGES_PER_LANE splits, but never so few channels per
/// workgroup that they need more workgroups than a dimension allows. Refuses records that
/// one binding cannot hold: the finalize kernels bind every channel's at once, at least one
/// per chunk, so a tensor of many chunks and many channels can need more than a binding.
fn settle_splits(
    chunks: &mut [Chunk],
    channels: u32,
    splits: u32,
    max_binding: u64,
    max_groups: u64,
) -> Result<u32> {
    let mut merge_lanes = splits
        .div_ceil(MERGES_PER_LANE)
        .next_power_of_two()
        .min(MERGE_WORKGROUP);
    while channels.div_ceil(MERGE_WORKGROUP / merge_lanes) as u64 > max_groups {
        merge_lanes /= 2;
    }
    let bytes = channels as u64 * splits as u64 * PARTIAL_BYTES;
    if bytes > max_binding {
        return Err(BnError::Limit {
            what: "bytes of the partial records (channels × splits × 16), in one storage binding",
            value: bytes,
            limit: max_binding,
        });
    }
    for chunk in chunks {
        chunk.params.splits = splits;
        chunk.params.merge_lanes = merge_lanes;
    }
    Ok(merge_lanes)
}

/// How many vec4 positions of a group of four channels hold values of one channel, at most
/// (as `grouped_positions` in shaders/common/prelude.wgsl): channel c spans positions
/// c·inner / 4 ..= ((c + 1)·inner − 1) / 4.
fn grouped_positions(inner: u32) -> u32 {
    (inner + 2) / 4 + 1
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: u64, b: u64) -> u64 {
    a / gcd(a, b) * b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Layout;

    fn geometry(dims: &[usize], device_type: wgpu::DeviceType) -> Geometry {
        let shape = Shape::new(dims, Layout::ChannelsFirst).unwrap();
        let tuning = Tuning::for_device(Some(device_type));
        Geometry::new(&shape, &wgpu::Limits::default(), tuning).unwrap()
    }

    /// The geometry of `dims` under `device`'s tuning with the single-read forward on.
    fn single_read_geometry(dims: &[usize], layout: Layout, device: wgpu::DeviceType) -> Geometry {
        let shape = Shape::new(dims, layout).unwrap();
        let on = Tuning {
            single_read: true,
            ..Tuning::for_device(Some(device))
        };
        Geometry::new(&shape, &wgpu::Limits::default(), on).unwrap()
    }

    fn workgroups(g: &Geometry) -> u64 {
        g.chunks
            .iter()
            .map(|c| c.reduce_groups.0 as u64 * c.reduce_groups.1 as u64)
            .sum()
    }

    /// The shapes whose single-read forward the cross-checks claim to run (cross_check.rs,
    /// outliers_at_the_ends_should_match_reference) take it wherever the single read is on,
    /// each through the kernel it names: were Fused::new to refuse them, those checks would
    /// compare the two-pass forward with itself.
    #[test]
    fn the_cross_checked_single_read_shapes_take_it() {
        for device in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu] {
            for (dims, layout, reduce) in [
                (
                    &[16, 4, 32, 32][..],
                    Layout::ChannelsFirst,
                    Reduce::Vec4Inner,
                ),
                (&[4096, 4][..], Layout::ChannelsLast, Reduce::Vec4Channels),
                (&[256, 3, 7, 7][..], Layout::ChannelsFirst, Reduce::Scalar),
                // caller_device's the_single_read_forward_runs_at_offsets.
                (&[4, 6, 5, 3][..], Layout::ChannelsFirst, Reduce::Scalar),
                (
                    &[4, 5, 6, 8][..],
                    Layout::ChannelsLast,
                    Reduce::Vec4Channels,
                ),
            ] {
                let g = single_read_geometry(dims, layout, device);
                assert_eq!(g.reduce, reduce, "{dims:?} {device:?}");
                assert!(g.fused.is_some(), "{dims:?} {device:?}: no single read");
                let shape = Shape::new(dims, layout).unwrap();
                let off = Tuning::for_device(Some(device));
                let g = Geometry::new(&shape, &wgpu::Limits::default(), off).unwrap();
                assert!(
                    g.fused.is_none(),
                    "{dims:?} {device:?}: single read by default"
                );
            }
        }
    }

    /// The shapes of cross_check's single_read_with_several_channels_per_workgroup take the
    /// single read with several channels per workgroup and a last workgroup of fewer, under
    /// both tunings: (channels or units per workgroup, workgroups).
    #[test]
    fn single_read_tilings_with_several_channels() {
        for device in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu] {
            for (dims, layout, reduce, tile_c, groups) in [
                (
                    &[2, 256, 4, 4][..],
                    Layout::ChannelsFirst,
                    Reduce::Vec4Inner,
                    4,
                    64,
                ),
                (
                    &[2, 516, 4][..],
                    Layout::ChannelsFirst,
                    Reduce::Vec4Inner,
                    8,
                    65,
                ),
                (
                    &[2, 1030, 3][..],
                    Layout::ChannelsFirst,
                    Reduce::Scalar,
                    16,
                    65,
                ),
                (
                    &[2, 3, 516][..],
                    Layout::ChannelsLast,
                    Reduce::Vec4Channels,
                    2,
                    65,
                ),
            ] {
                let g = single_read_geometry(dims, layout, device);
                assert_eq!(g.reduce, reduce, "{dims:?} {device:?}");
                let f = g.fused.expect("a single read");
                assert_eq!(
                    (f.tile_c, f.groups),
                    (tile_c, groups),
                    "{dims:?} {device:?}"
                );
            }
        }
    }

    /// Two samples of one channel, four million values each: rows alone would give two
    /// workgroups, so the reductions cut the rows along inner.
    #[test]
    fn few_long_rows_still_fill_the_device() {
        for device in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu] {
            let g = geometry(&[2, 1, 1 << 22], device);
            let p = g.chunks[0].params;
            assert!(
                workgroups(&g) >= Tuning::for_device(Some(device)).min_groups,
                "{device:?}: {g:?}"
            );
            assert!(
                p.inner_splits > 1 && p.inner_per_split.is_multiple_of(p.tile_i),
                "{p:?}"
            );
        }
    }

    /// The workgroup has no more lanes along rows than there are rows, and a split no fewer
    /// rows than lanes along rows, or some lanes would have nothing to read; and rows are cut
    /// along inner only once splitting rows can go no further.
    #[test]
    fn splits_keep_every_lane_busy() {
        for device in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu] {
            for dims in [
                &[8, 64, 56, 56][..],
                &[32, 64, 56, 56],
                &[64, 256, 14, 14],
                &[2, 3, 4100],
                &[1024, 4096],
                &[1, 2, 3, 30001],
                &[2, 1, 1 << 22],
            ] {
                let g = geometry(dims, device);
                let p = g.chunks[0].params;
                assert!(
                    p.tile_o as usize <= dims[0].next_power_of_two(),
                    "{dims:?} {device:?}: {p:?}"
                );
                assert!(p.rows_per_split >= p.tile_o, "{dims:?} {device:?}: {p:?}");
                if p.inner_splits > 1 {
                    assert!(
                        p.rows_per_split == p.tile_o || p.rows_per_split as usize >= dims[0],
                        "{dims:?} {device:?}: {p:?}"
                    );
                }
            }
        }
    }

    /// A workgroup's lanes of one channel merge their counts in f32 (by subgroup shuffles),
    /// exact to 2^24: on a device of so few workgroups per dimension that one split of an
    /// (N, 1) tensor of 2^28 rows would take more loads than that, the shape is refused, and
    /// one workgroup per dimension more lets it run.
    #[test]
    fn a_split_past_what_f32_counts_exactly_is_refused() {
        let shape = Shape::new(&[1 << 28, 1], Layout::ChannelsFirst).unwrap();
        for device in [wgpu::DeviceType::Cpu, wgpu::DeviceType::DiscreteGpu] {
            let tuning = Tuning::for_device(Some(device));
            let limits = |most| wgpu::Limits {
                max_compute_workgroups_per_dimension: most,
                max_storage_buffer_binding_size: 1 << 31,
                max_buffer_size: 1 << 40,
                ..wgpu::Limits::default()
            };
            match Geometry::new(&shape, &limits(8), tuning) {
                Err(BnError::Limit { what, value, limit }) => {
                    assert_eq!(what, "loads of one channel that a workgroup merges");
                    assert_eq!((value, limit), (1 << 25, 1 << 24));
                }
                other => panic!("{device:?}: {:?}", other.map(|_| ())),
            }
            let g = Geometry::new(&shape, &limits(16), tuning).unwrap();
            for c in &g.chunks {
                let p = &c.params;
                assert!(p.rows_per_split as u64 * p.inner_per_split as u64 <= 1 << 24);
            }
        }
    }

    /// A device may be made with fewer workgroups per dimension than WebGPU's 65,535: every
    /// dispatch a geometry makes stays within what the device allows, where few long rows
    /// would have the reductions split along inner for a GPU's 512 workgroups, where a row
    /// has more columns than one dimension holds, and where a GPU's tuning would give the
    /// channels too few lanes; a shape is refused only past what x and z or the layer hold.
    #[test]
    fn every_dispatch_fits_a_device_with_few_workgroups_per_dimension() {
        let gpu = Tuning::for_device(Some(wgpu::DeviceType::DiscreteGpu));
        let cpu = Tuning::for_device(Some(wgpu::DeviceType::Cpu));
        for most in [16u32, 64, 100, 300] {
            let limits = wgpu::Limits {
                max_compute_workgroups_per_dimension: most,
                ..wgpu::Limits::default()
            };
            // Planes as long as the element-wise kernels' columns allow (most·1024 values),
            // under few rows and many: the reductions want 512 workgroups on a GPU, and
            // split such planes along inner as well as along rows.
            let long = most as usize * 1024;
            let wide = most as usize * 64;
            let cases = [
                (&[2, 1, long][..], Layout::ChannelsFirst),
                (&[1, 2, long / 2][..], Layout::ChannelsFirst),
                (&[3, 1, long - 4][..], Layout::ChannelsFirst),
                (&[16, 1, long][..], Layout::ChannelsFirst),
                (&[64, 1, long][..], Layout::ChannelsFirst),
                (&[64, 1, long / 4][..], Layout::ChannelsFirst),
                // Planes of more columns than a dimension holds, scalar and vec4: wrapped.
                (&[2, 1, long / 3][..], Layout::ChannelsFirst),
                (&[2, 3, long + 1][..], Layout::ChannelsFirst),
                (&[1, 8, long * 2][..], Layout::ChannelsFirst),
                // As many channels as the layer takes, under planes that would give a
                // GPU's tuning 256 lanes along inner (scalar, grouped, vec4) and channels-last.
                (&[2, wide, 257][..], Layout::ChannelsFirst),
                (&[2, wide, 130][..], Layout::ChannelsFirst),
                (&[2, wide, 1024][..], Layout::ChannelsFirst),
                (&[4, 3, wide][..], Layout::ChannelsLast),
                (&[64, 256, 14, 14][..], Layout::ChannelsFirst),
                (&[1024, 4096][..], Layout::ChannelsFirst),
            ];
            for (dims, layout) in cases {
                let shape = Shape::new(dims, layout).unwrap();
                // Refused only for more channels than the layer takes, or for a row of more
                // columns than x and z hold together (never with 65,535 per dimension).
                let (_, channels, inner) = shape.view();
                let plane = (channels * inner) as u64;
                let lanes = if plane.is_multiple_of(4) {
                    plane / 4
                } else {
                    plane
                };
                let refusal = if channels as u64 > max_channels(&limits) {
                    Some("channels")
                } else if lanes > most as u64 * most as u64 * WORKGROUP as u64 {
                    Some("element-wise column workgroups, wrapped")
                } else {
                    None
                };
                for tuning in [gpu, cpu] {
                    let g = match Geometry::new(&shape, &limits, tuning) {
                        Ok(g) if refusal.is_none() => g,
                        Err(BnError::Limit { what, .. }) if Some(what) == refusal => continue,
                        other => panic!("{dims:?} under {most}: {other:?}, expected {refusal:?}"),
                    };
                    for c in &g.chunks {
                        let (a, b) = (c.reduce_groups, c.apply_groups);
                        for n in [a.0, a.1, a.2, b.0, b.1, b.2, g.merge_groups.0] {
                            assert!(n <= most, "{dims:?} under {most}: {a:?} {b:?}");
                        }
                        // Every column of the row has a lane.
                        let p = c.params;
                        let vec4 = (p.channels * p.inner).is_multiple_of(4);
                        let lanes = p.apply_width / if vec4 { 4 } else { 1 };
                        assert!(
                            b.0 as u64 * b.2 as u64 * WORKGROUP as u64 >= lanes as u64,
                            "{dims:?} under {most}: {b:?} for {lanes} lanes"
                        );
                    }
                }
            }
        }
    }

    /// Rows over one binding run in blocks of channels, and planes over one in slices: each
    /// (row, channel, value) in exactly one block, blocks within one binding and at aligned
    /// offsets, the records of each channel's slice j of row n at (n·slices + j)·block splits,
    /// as many in every block; and what cannot be cut so is refused.
    #[test]
    fn rows_over_one_binding_run_in_blocks_of_channels() {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 64 << 10,
            ..wgpu::Limits::default()
        };
        let align = limits.min_storage_buffer_offset_alignment as u64;
        let gpu = Tuning::for_device(Some(wgpu::DeviceType::DiscreteGpu));
        let cpu = Tuning::for_device(Some(wgpu::DeviceType::Cpu));
        // (dims, slices of a plane)
        for (dims, slices) in [
            (&[2, 40, 32, 32][..], 1),
            (&[3, 384, 7, 7], 1),
            (&[1, 350, 7, 7], 1),
            (&[2, 256, 130], 1),
            (&[2, 6, 64, 64], 1),
            (&[2, 3, 64, 96], 1),
            (&[2, 3, 128, 160], 2),
            (&[1, 2, 96, 320], 2),
        ] {
            for tuning in [gpu, cpu] {
                let shape = Shape::new(dims, Layout::ChannelsFirst).unwrap();
                let (outer, channels, inner) = shape.view();
                let g = Geometry::new(&shape, &limits, tuning).unwrap();
                assert!(g.fused.is_none() && g.channels as usize == channels);
                let per_row = g.chunks.len() / outer;
                assert!(per_row > 1 && g.chunks.len() == per_row * outer, "{dims:?}");
                let block_splits = g.chunks[0].reduce_groups.0;
                assert_eq!(g.splits, block_splits * (outer * slices) as u32, "{dims:?}");
                assert!(g.chunks.iter().all(|c| c.reduce_groups.0 == block_splits));
                let slice = inner / slices;
                let mut seen = vec![0u32; outer * channels * slices];
                for (i, chunk) in g.chunks.iter().enumerate() {
                    let (n, p) = (i / per_row, chunk.params);
                    let c0 = p.channel_base as usize;
                    assert_eq!(p.inner as usize, slice, "{dims:?}");
                    let channel_start = ((n * channels + c0) * inner * 4) as u64;
                    let j = ((chunk.offset - channel_start) / (slice as u64 * 4)) as usize;
                    assert!(j < slices, "{dims:?}");
                    assert_eq!(chunk.offset, channel_start + (j * slice * 4) as u64);
                    assert_eq!(chunk.bytes, (p.channels as usize * slice * 4) as u64);
                    assert!(chunk.bytes <= 64 << 10, "{dims:?}");
                    assert_eq!(chunk.offset % align, 0, "{dims:?}");
                    assert_eq!(
                        p.split_offset,
                        c0 as u32 * g.splits + ((n * slices + j) as u32) * block_splits
                    );
                    assert_eq!((p.outer, p.count), (1, (outer * inner) as u32));
                    for c in c0..c0 + p.channels as usize {
                        seen[(n * channels + c) * slices + j] += 1;
                    }
                }
                assert!(seen.iter().all(|&k| k == 1), "{dims:?}: {seen:?}");
                assert_eq!(g.channel_params().channels as usize, channels);
            }
        }
        let refused = |dims: &[usize], layout, reason: &str| {
            let shape = Shape::new(dims, layout).unwrap();
            match Geometry::new(&shape, &limits, gpu) {
                Err(BnError::Limit { what, .. }) => assert!(what.contains(reason), "{what}"),
                other => panic!("{dims:?}: {other:?}"),
            }
        };
        // Records of every block of every slice share one binding: where a GPU's tuning would
        // split each slice of 8192 vec4 in two, 1024 channels × 4 rows × 2 slices × 2 splits
        // would be 256 KiB of records on a 128 KiB binding; one split per slice fits.
        let narrow = wgpu::Limits {
            max_storage_buffer_binding_size: 128 << 10,
            ..limits.clone()
        };
        let shape = Shape::new(&[4, 1024, 256, 256], Layout::ChannelsFirst).unwrap();
        let g = Geometry::new(&shape, &narrow, gpu).unwrap();
        assert_eq!((g.chunks.len(), g.splits), (4 * 1024 * 2, 4 * 2));
        // Samples of 78,400 bytes, not a multiple of 256: the second would start unaligned.
        refused(&[2, 400, 7, 7], Layout::ChannelsFirst, "one sample");
        // A plane of 129×129 is over 64 KiB, and odd: no aligned slices of whole vec4.
        refused(&[2, 4, 129, 129], Layout::ChannelsFirst, "fewest channels");
        // A plane of 64×257 values (65,792 bytes, a multiple of 256, but whose slices of whole
        // multiples of 256 bytes number 257) is over 64 KiB.
        refused(&[1, 2, 64, 257], Layout::ChannelsFirst, "fewest channels");
        // One sample of 400 such channels is fine.
        Geometry::new(
            &Shape::new(&[1, 400, 7, 7], Layout::ChannelsFirst).unwrap(),
            &limits,
            gpu,
        )
        .unwrap();
    }

    /// A layer's per-channel records are 16 bytes and bound whole: on a device whose buffers
    /// or bindings hold fewer than 16 bytes per channel that the workgroups would reach, the
    /// smaller bound counts.
    #[test]
    fn max_channels_is_bounded_by_buffers_and_bindings() {
        let limits = wgpu::Limits::default();
        let lanes = limits.max_compute_workgroups_per_dimension as u64 * 64;
        assert_eq!(max_channels(&limits), lanes);
        let small_binding = wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 20,
            ..limits.clone()
        };
        assert_eq!(max_channels(&small_binding), 1 << 16);
        let small_buffer = wgpu::Limits {
            max_buffer_size: 1 << 18,
            ..limits
        };
        assert_eq!(max_channels(&small_buffer), 1 << 14);
    }

    /// The shift's three samples lie in the chunk, in the channel, apart, and off its ends;
    /// and in channels-last sequences of 512 tokens or more (rows N·L, inner 1), at most one
    /// is a sequence's first or last token, for every N up to 512.
    #[test]
    fn shift_samples_avoid_the_ends() {
        for (rows, channels, inner) in [(1, 1, 7), (7, 1, 1), (2, 3, 4100), (9, 64, 3136)]
            .into_iter()
            .chain((1..300).map(|n| (n, 4, 49)))
        {
            let at = shift_offsets(rows, channels, inner);
            let values = rows * inner;
            let mut seen = Vec::new();
            for &o in &at {
                let o = o as u64;
                assert!(o + (channels - 1) * inner < rows * channels * inner);
                assert_eq!(o / inner % channels, 0, "{o} is not channel 0's");
                let j = o / (channels * inner) * inner + o % inner;
                if values >= 7 {
                    assert!(j > 0 && j < values - 1, "{j} of {values}");
                }
                seen.push(j);
            }
            seen.sort();
            seen.dedup();
            assert!(values < 3 || seen.len() == 3, "{seen:?}");
        }
        for len in [512, 1024, 3136] {
            for n in 1..=512 {
                let at = shift_offsets(n * len, 4, 1);
                let ends = at
                    .iter()
                    .filter(|&&o| {
                        let token = o as u64 / 4 % len;
                        token == 0 || token == len - 1
                    })
                    .count();
                assert!(ends <= 1, "{n}×{len}: {at:?}");
            }
        }
    }

    /// A tensor run in chunks of rows samples each chunk's shift from that chunk's rows: the
    /// last chunk, shorter, has its own places.
    #[test]
    fn each_chunk_samples_its_own_rows() {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 64 << 10,
            ..wgpu::Limits::default()
        };
        let tuning = Tuning::for_device(Some(wgpu::DeviceType::DiscreteGpu));
        let shape = Shape::new(&[41, 2, 64, 64], Layout::ChannelsFirst).unwrap();
        let g = Geometry::new(&shape, &limits, tuning).unwrap();
        assert_eq!(g.chunks.len(), 21);
        for chunk in &g.chunks {
            let rows = chunk.params.outer as u64;
            assert_eq!(chunk.params.shift_at, shift_offsets(rows, 2, 4096));
        }
        assert_eq!(g.chunks[20].params.outer, 1);
        assert_ne!(g.chunks[20].params.shift_at, g.chunks[0].params.shift_at);
    }

    /// The finalize kernels give each channel a power of two of lanes, enough that none
    /// merges more than MERGES_PER_LANE splits, up to a workgroup's worth, and fewer only
    /// where the channels would otherwise need more workgroups than a dimension holds.
    #[test]
    fn merge_lanes_share_the_splits() {
        let limits = wgpu::Limits::default();
        let max_groups = limits.max_compute_workgroups_per_dimension;
        let gpu = Tuning::for_device(Some(wgpu::DeviceType::DiscreteGpu));
        let cpu = Tuning::for_device(Some(wgpu::DeviceType::Cpu));
        let most = max_channels(&limits) as usize;
        // A GPU that binds 2 GiB at once, as an H100 does (our cap).
        let wide = wgpu::Limits {
            max_storage_buffer_binding_size: MAX_BINDING_BYTES,
            ..limits.clone()
        };
        // (dims, layout, tuning, limits, splits, lanes) worked out by hand from the split
        // rules.
        type Case<'a> = (&'a [usize], Layout, Tuning, &'a wgpu::Limits, u32, u32);
        let cases: [Case; 5] = [
            // 32×64×56×56 channels-last, the H100's slow merge (PERF.md 41): 100,352 rows of
            // 16 vec4, cut for 512 workgroups into splits of 208 rows, so 483 splits.
            (
                &[32, 56, 56, 64],
                Layout::ChannelsLast,
                gpu,
                &limits,
                483,
                64,
            ),
            // (N, C) with 4096 channels: 1024 rows over 128 splits of 8 rows.
            (&[1024, 4096], Layout::ChannelsFirst, gpu, &limits, 128, 16),
            // 3·2^20 channels, 12 MiB rows: 11 chunks of 170 rows, each 3 splits of at most
            // 64, so 33 splits (1.66 GB of records) and 8 lanes; but 8 lanes would take
            // 98,304 workgroups, more than a dimension holds, so 4.
            (&[1870, 3 << 20], Layout::ChannelsFirst, gpu, &wide, 33, 4),
            // The same 32×64×56×56 under a CPU rasterizer's tuning: few, long splits.
            (&[32, 56, 56, 64], Layout::ChannelsLast, cpu, &limits, 32, 4),
            // The most channels a layer takes: one split each, one lane.
            (&[2, most], Layout::ChannelsFirst, gpu, &limits, 1, 1),
        ];
        for (dims, layout, tuning, limits, splits, lanes) in cases {
            let shape = Shape::new(dims, layout).unwrap();
            let g = Geometry::new(&shape, limits, tuning).unwrap();
            let p = g.chunks[0].params;
            assert_eq!((g.splits, p.merge_lanes), (splits, lanes), "{dims:?}");
            assert!(g.chunks.iter().all(|c| c.params.merge_lanes == lanes));
            let per_group = MERGE_WORKGROUP / lanes;
            assert_eq!(
                g.merge_groups,
                (p.channels.div_ceil(per_group), 1, 1),
                "{dims:?}"
            );
            assert!(g.merge_groups.0 <= max_groups);
            // Fewer than the splits ask for only where twice as many would not fit.
            let wanted = splits
                .div_ceil(MERGES_PER_LANE)
                .next_power_of_two()
                .min(MERGE_WORKGROUP);
            assert!(
                lanes == wanted || p.channels.div_ceil(per_group / 2) > max_groups,
                "{dims:?}"
            );
        }
    }

    /// On a device of 16 workgroups per dimension and a 1 MiB binding (large.rs runs it), an
    /// (N, C) tensor of 1024 channels takes three chunks and 48 splits, whose 8 merging lanes
    /// per channel would need 32 workgroups: 4 then, on 16.
    #[test]
    fn merge_lanes_give_way_to_few_workgroups() {
        let limits = wgpu::Limits {
            max_compute_workgroups_per_dimension: 16,
            max_storage_buffer_binding_size: 1 << 20,
            ..wgpu::Limits::default()
        };
        let gpu = Tuning::for_device(Some(wgpu::DeviceType::DiscreteGpu));
        let shape = Shape::new(&[768, 1024], Layout::ChannelsFirst).unwrap();
        let g = Geometry::new(&shape, &limits, gpu).unwrap();
        let p = g.chunks[0].params;
        assert_eq!((g.chunks.len(), g.splits, p.merge_lanes), (3, 48, 4));
        assert_eq!(g.merge_groups, (16, 1, 1));
    }

    /// Lane records under a CPU rasterizer's tuning where they add no records (a workgroup
    /// with one lane per unit) and in the grouped reductions (a record per lane along rows
    /// and position of a channel); the fold everywhere else and under a GPU's tuning.
    #[test]
    fn lane_records_where_the_tiling_asks() {
        let limits = wgpu::Limits::default();
        let gpu = Tuning::for_device(Some(wgpu::DeviceType::DiscreteGpu));
        let cpu = Tuning::for_device(Some(wgpu::DeviceType::Cpu));
        // (dims, layout, tuning, lane records, records per channel) worked out by hand.
        let cases: [(&[usize], Layout, Tuning, bool, u32); 6] = [
            // Groups of four 7×7 channels: 64 lanes along inner, 4 groups, 1 along rows; all
            // 16 rows in one split; a channel spans 13 of a group's 49 positions.
            (&[16, 2048, 7, 7], Layout::ChannelsFirst, cpu, true, 13),
            // The same under a GPU's tuning: four splits wanted, but at least 8 loads per
            // lane (11 rows), so two splits, folded.
            (&[16, 2048, 7, 7], Layout::ChannelsFirst, gpu, false, 2),
            // 512 units of four channels: 256 lanes along channels, one along rows; 392
            // rows over 16 splits of 25 for the 32 workgroups wanted.
            (&[8, 7, 7, 2048], Layout::ChannelsLast, cpu, true, 16),
            // 16 units: 16 lanes along rows, so folded.
            (&[32, 56, 56, 64], Layout::ChannelsLast, cpu, false, 32),
            // (N, C) of 1024 units: 1024 rows over 8 splits of 128 for 32 workgroups.
            (&[1024, 4096], Layout::ChannelsFirst, cpu, true, 8),
            // Channels-first vec4 reductions always fold (here over 8 splits of 4 rows, each
            // cut into 4 ranges along inner for the 32 workgroups wanted).
            (&[32, 64, 56, 56], Layout::ChannelsFirst, cpu, false, 32),
        ];
        for (dims, layout, tuning, lane_records, splits) in cases {
            let shape = Shape::new(dims, layout).unwrap();
            let g = Geometry::new(&shape, &limits, tuning).unwrap();
            assert_eq!(
                (g.lane_records, g.splits),
                (lane_records, splits),
                "{dims:?}"
            );
        }
        // Every channel's positions fit its records: channel c spans positions c·inner / 4
        // ..= ((c + 1)·inner − 1) / 4 of its group.
        for inner in 2..=256u32 {
            let most = (0..4)
                .map(|c| ((c + 1) * inner - 1) / 4 - c * inner / 4 + 1)
                .max()
                .unwrap();
            assert!(most <= grouped_positions(inner), "inner {inner}");
            assert!(grouped_positions(inner) <= most + 1, "inner {inner}");
        }
    }

    /// Many channels over many chunks: where the splits chosen for workgroups would make more
    /// partial records than one binding holds, the splits grow longer until they fit.
    #[test]
    fn partial_records_fit_one_binding() {
        let wide = wgpu::Limits {
            max_storage_buffer_binding_size: MAX_BINDING_BYTES,
            ..wgpu::Limits::default()
        };
        let gpu = Tuning::for_device(Some(wgpu::DeviceType::DiscreteGpu));
        // 3·2^20 channels, 12 MiB rows: 15 chunks of up to 170 rows. Splits of 64 rows make
        // 3 per chunk, 45 in all, 2.26 GB of records; 2 GiB holds 42 splits, so 2 per chunk
        // of 85 rows (the last chunk's 20 rows one): 29 splits, 1.46 GB.
        let shape = Shape::new(&[2400, 3 << 20], Layout::ChannelsFirst).unwrap();
        let g = Geometry::new(&shape, &wide, gpu).unwrap();
        assert_eq!(g.chunks.len(), 15);
        assert_eq!(g.splits, 29);
        assert!(g.chunks.iter().all(|c| c.params.rows_per_split == 85));
        assert!(g.partials_bytes() <= MAX_BINDING_BYTES);
    }
}
