//! Adapter, device and queue (our own or the caller's), their limits, and the pipelines,
//! built once per context.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::error::{BnError, Result};
use crate::gpu::kernels::{Kernel, Kernels, Tuning};

/// A device, its queue, and every batch-norm pipeline compiled for it.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) kernels: Kernels,
    limits: wgpu::Limits,
    adapter_info: Option<wgpu::AdapterInfo>,
    /// Work sizes for this kind of device, fixed at creation (the pipelines follow them).
    tuning: Tuning,
    buffers_created: AtomicU64,
    /// SINGLE_READ_AUTO, or a choice made by set_single_read_forward.
    single_read: AtomicU8,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.adapter_info.as_ref().map(|i| &i.name))
            .field("backend", &self.adapter_info.as_ref().map(|i| i.backend))
            .field("subgroups", &self.subgroups())
            .field("buffers_created", &self.buffers_created())
            .finish_non_exhaustive()
    }
}

const SINGLE_READ_AUTO: u8 = 0;
const SINGLE_READ_ON: u8 = 1;
const SINGLE_READ_OFF: u8 = 2;

/// One adapter as `batchnorm info` reports it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Name, backend, device type and driver, as wgpu gives them.
    pub info: wgpu::AdapterInfo,
    /// Whether the adapter runs compute shaders, which every kernel here needs.
    pub compute_shaders: bool,
}

fn instance() -> wgpu::Instance {
    // Honours WGPU_BACKEND (vulkan, gl, metal, dx12) and the other WGPU_* variables.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn has_compute(adapter: &wgpu::Adapter) -> bool {
    adapter
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
}

/// Every adapter wgpu finds on the backends that WGPU_BACKEND allows; a WGPU_BACKEND that
/// names something other than a backend is refused, as `GpuContext::new` refuses it.
pub fn list_adapters() -> Result<Vec<AdapterSummary>> {
    check_backend_env()?;
    let instance = instance();
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    Ok(pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .map(|a| AdapterSummary {
            info: a.get_info(),
            compute_shaders: has_compute(&a),
        })
        .collect())
}

/// The adapter whose name contains WGPU_ADAPTER_NAME (ignoring case), where it is set, or
/// else wgpu's default for WGPU_POWER_PREF. wgpu's own helper for this panics when no name
/// matches; this says which adapters there are instead. Among adapters of that name, one
/// with compute shaders is taken first (a GL adapter may lack them where its Vulkan twin has
/// them), then the kind WGPU_POWER_PREF prefers (discrete for high, integrated for low),
/// then a GPU before a CPU rasterizer (`adapter_rank`).
fn pick_adapter(instance: &wgpu::Instance) -> Result<wgpu::Adapter> {
    check_backend_env()?;
    let power_preference = power_preference_env()?;
    let wanted = match std::env::var("WGPU_ADAPTER_NAME") {
        Err(std::env::VarError::NotPresent) => {
            return pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference,
                ..Default::default()
            }))
            .map_err(|e| BnError::NoAdapter(e.to_string()));
        }
        Err(std::env::VarError::NotUnicode(value)) => {
            return Err(BnError::Config {
                name: "WGPU_ADAPTER_NAME",
                value: value.to_string_lossy().into_owned(),
                reason: "is not UTF-8",
            })
        }
        // Empty would match every adapter: the first listed, whatever the preference.
        Ok(value) if value.trim().is_empty() => {
            return Err(BnError::Config {
                name: "WGPU_ADAPTER_NAME",
                value,
                reason: "is empty: unset it, or give a part of an adapter's name",
            })
        }
        Ok(value) => value,
    };
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    let adapters = pollster::block_on(instance.enumerate_adapters(backends));
    let found: Vec<String> = adapters
        .iter()
        .map(|a| {
            let info = a.get_info();
            format!("{} ({:?})", info.name, info.backend)
        })
        .collect();
    let needle = wanted.to_lowercase();
    // min_by_key keeps the first of equals: enumeration order breaks ties.
    adapters
        .into_iter()
        .filter(|a| a.get_info().name.to_lowercase().contains(&needle))
        .min_by_key(|a| adapter_rank(power_preference, a.get_info().device_type, has_compute(a)))
        .ok_or(BnError::NoSuchAdapter { wanted, found })
}

/// How an adapter of the wanted name ranks (lowest first): one with compute shaders, then
/// the kind the power preference asks for, then any GPU before a CPU rasterizer (a name
/// that two adapters share is taken to mean the GPU, with or without a preference).
fn adapter_rank(
    preference: wgpu::PowerPreference,
    kind: wgpu::DeviceType,
    compute: bool,
) -> (bool, u8) {
    use wgpu::DeviceType::*;
    let order = match (preference, kind) {
        (wgpu::PowerPreference::HighPerformance, DiscreteGpu)
        | (wgpu::PowerPreference::LowPower, IntegratedGpu) => 0,
        (_, Cpu) => 2,
        _ => 1,
    };
    (!compute, order)
}

/// WGPU_BACKEND, where set, must name backends only: wgpu skips unknown names with a log
/// line, so "vulkan,metl" would quietly leave Metal out, and a list of none would end in "no
/// adapter found" with no word of the typo.
fn check_backend_env() -> Result<()> {
    let value = match std::env::var("WGPU_BACKEND") {
        Err(std::env::VarError::NotPresent) => return Ok(()),
        Err(std::env::VarError::NotUnicode(value)) => value.to_string_lossy().into_owned(),
        Ok(value) => value,
    };
    let native =
        wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12 | wgpu::Backends::GL;
    let unknown = value.split(',').any(|name| {
        let backends = wgpu::Backends::from_comma_list(name);
        backends.is_empty() || !native.contains(backends)
    });
    if unknown {
        return Err(BnError::Config {
            name: "WGPU_BACKEND",
            value,
            reason: "names something other than vulkan, metal, dx12 or gl",
        });
    }
    Ok(())
}

/// WGPU_POWER_PREF, where set, must be one of wgpu's values: wgpu reads anything else as
/// unset.
fn power_preference_env() -> Result<wgpu::PowerPreference> {
    match (
        std::env::var_os("WGPU_POWER_PREF"),
        wgpu::PowerPreference::from_env(),
    ) {
        (None, _) => Ok(wgpu::PowerPreference::default()),
        (Some(_), Some(preference)) => Ok(preference),
        (Some(value), None) => Err(BnError::Config {
            name: "WGPU_POWER_PREF",
            value: value.to_string_lossy().into_owned(),
            reason: "is none of low, high, none",
        }),
    }
}

impl GpuContext {
    /// Picks an adapter (WGPU_ADAPTER_NAME, WGPU_BACKEND and WGPU_POWER_PREF are honoured),
    /// requests a device with the adapter's full limits, and builds the pipelines.
    pub fn new() -> Result<Arc<Self>> {
        let adapter = pick_adapter(&instance())?;
        let info = adapter.get_info();
        if !has_compute(&adapter) {
            return Err(BnError::NoAdapter(format!(
                "adapter {} ({:?}) has no compute shaders",
                info.name, info.backend
            )));
        }
        // Timestamps let the benchmark time kernels rather than submissions; subgroups let
        // the reductions merge lanes without shared memory.
        let wanted = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::SUBGROUP;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("batchnorm"),
            required_features: adapter.features() & wanted,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| BnError::RequestDevice(e.to_string()))?;
        Self::build(device, queue, Some(info)).map(Arc::new)
    }

    /// Uses the caller's device and queue; pipelines are built here, once, with a GPU's work
    /// sizes. The reductions use subgroup operations if the device was created with
    /// `wgpu::Features::SUBGROUP` and its subgroups pass the lane-layout check.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Arc<Self>> {
        Self::build(device, queue, None).map(Arc::new)
    }

    /// As `from_device`, for a device made from the adapter that `info` describes
    /// (`adapter.get_info()`): its work sizes follow the adapter's type, so that a CPU
    /// rasterizer (lavapipe, llvmpipe, WARP) gets the ones measured for it.
    pub fn from_adapter_device(
        device: wgpu::Device,
        queue: wgpu::Queue,
        info: wgpu::AdapterInfo,
    ) -> Result<Arc<Self>> {
        Self::build(device, queue, Some(info)).map(Arc::new)
    }

    /// Limits to request, at least, when you make the device for `from_device`: wgpu's
    /// `Limits::downlevel_defaults()` with what the kernels need set exactly (eight storage
    /// buffers per stage where those defaults allow four; stats_finalize binds eight),
    /// which tests/shader_portability.rs checks against every kernel. `from_device` refuses a
    /// device short of any of those four compute limits with `BnError::Limit` before it
    /// builds a pipeline. Buffer and binding sizes and workgroup counts are checked per shape
    /// instead: a smaller device runs what fits and refuses the rest with `Limit`.
    pub fn required_limits() -> wgpu::Limits {
        wgpu::Limits {
            max_storage_buffers_per_shader_stage: 8,
            // The largest fold (common/fold_stats.wgsl, 9,216 bytes) beside forward_fused_vec4's
            // shifts (4,096) and the subgroup size (4).
            max_compute_workgroup_storage_size: 13_316,
            max_compute_invocations_per_workgroup: 256,
            max_compute_workgroup_size_x: 256,
            ..wgpu::Limits::downlevel_defaults()
        }
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
    ) -> Result<Self> {
        check_limits(&device.limits())?;
        // A caller's device is taken to be a GPU.
        let tuning = Tuning::for_device(adapter_info.as_ref().map(|i| i.device_type));
        let subgroups = tuning.subgroups
            && device.features().contains(wgpu::Features::SUBGROUP)
            && subgroups_are_lane_runs(&device, &queue)?;
        let kernels = Kernels::new(&device, subgroups, tuning)?;
        Ok(Self {
            limits: device.limits(),
            device,
            queue,
            kernels,
            adapter_info,
            tuning,
            buffers_created: AtomicU64::new(0),
            single_read: AtomicU8::new(SINGLE_READ_AUTO),
        })
    }

    /// The device the pipelines are built for: tensors' buffers and encoders must be of it.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue the layers write parameters through and submit their read-backs on.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The device's limits, which size the kernels' work and bound the shapes a layer takes.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether the reductions merge lanes with subgroup operations: the device offers them,
    /// its subgroups are runs of consecutive invocations (checked once, at creation), and it
    /// is not a CPU rasterizer (where they saved nothing, PERF.md 18).
    pub fn subgroups(&self) -> bool {
        self.kernels.subgroups
    }

    /// Whether kernels can be timed with timestamps written between commands.
    pub fn has_timestamps(&self) -> bool {
        self.device.features().contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
        )
    }

    /// Work sizes for this kind of device, with the single-read choice made here.
    pub(crate) fn tuning(&self) -> Tuning {
        let tuning = self.tuning;
        Tuning {
            single_read: match self.single_read.load(Ordering::Relaxed) {
                SINGLE_READ_ON => true,
                SINGLE_READ_OFF => false,
                _ => tuning.single_read,
            },
            ..tuning
        }
    }

    /// Makes the training forward read x once where a workgroup can hold whole channels
    /// (`true`), or always in two passes, statistics then normalize (`false`), instead of
    /// what suits the device (two passes on lavapipe and on an H100, where they measured
    /// faster). For tests and comparisons; it applies to input shapes that layers meet from
    /// then on.
    pub fn set_single_read_forward(&self, enabled: bool) {
        let choice = if enabled {
            SINGLE_READ_ON
        } else {
            SINGLE_READ_OFF
        };
        self.single_read.store(choice, Ordering::Relaxed);
    }

    /// None when the context was built on a caller's device.
    pub fn adapter_info(&self) -> Option<&wgpu::AdapterInfo> {
        self.adapter_info.as_ref()
    }

    /// How many buffers this crate has made on the context: flat in steady state, since
    /// every buffer is made once per layer or per input shape and then reused (but for one
    /// small buffer per call of `set_num_batches_tracked` or `reset_running_stats`, the count
    /// they carry to the GPU, and one per `forward_for_backward`, the statistics it keeps).
    pub fn buffers_created(&self) -> u64 {
        self.buffers_created.load(Ordering::Relaxed)
    }

    /// Runs `work` inside validation, internal and out-of-memory error scopes, and returns
    /// the first error wgpu raised in them (naming `what`) instead of leaving it to wgpu's
    /// panicking default handler.
    pub(crate) fn scoped<T>(&self, what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
        scoped(&self.device, what, work)
    }

    /// Submits `encoder`, returning the errors it raised.
    pub(crate) fn submit(&self, encoder: wgpu::CommandEncoder, what: &str) -> Result<()> {
        self.scoped(what, || {
            self.queue.submit([encoder.finish()]);
            Ok(())
        })
    }

    /// Creates a buffer, turning allocation and validation failures into errors.
    pub(crate) fn create_buffer(
        &self,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        self.scoped(&format!("buffer {label} ({size} bytes)"), || {
            Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            }))
        })
    }

    /// Creates a buffer holding `contents`, with create_buffer's error handling.
    pub(crate) fn create_buffer_init(
        &self,
        label: &str,
        contents: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        use wgpu::util::DeviceExt;
        self.buffers_created.fetch_add(1, Ordering::Relaxed);
        self.scoped(
            &format!("buffer {label} ({} bytes)", contents.len()),
            || {
                Ok(self
                    .device
                    .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(label),
                        contents,
                        usage,
                    }))
            },
        )
    }

    /// Maps the first `bytes` of a MAP_READ buffer and copies them out as f32.
    pub(crate) fn read_mapped(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<f32>> {
        read_staging(&self.device, staging, bytes)
    }

    /// `read_mapped`, appending to `into`: a caller that reserved its room before any GPU
    /// work (`cpu::with_room`) cannot then fail to allocate after that work has run.
    pub(crate) fn read_mapped_into(
        &self,
        staging: &wgpu::Buffer,
        bytes: u64,
        into: Vec<f32>,
    ) -> Result<Vec<f32>> {
        read_staging_into(&self.device, staging, bytes, into)
    }
}

/// Refuses a device whose limits fall short of `GpuContext::required_limits`, naming the
/// first limit that does: without this, the shortfall would surface as a pipeline error, or
/// (workgroup storage, which wgpu does not check) in the driver. The limits that every
/// kernel needs a little of are checked against that little (`LEAST_LIMITS`), not against
/// WebGPU's defaults, which a caller may lower: a device smaller than those runs what fits.
fn check_limits(device: &wgpu::Limits) -> Result<()> {
    let needed = GpuContext::required_limits();
    let least = LEAST_LIMITS.map(|(what, need, has)| (what, need, has(device)));
    let pairs = [
        (
            "storage buffers per shader stage that the kernels need",
            needed.max_storage_buffers_per_shader_stage,
            device.max_storage_buffers_per_shader_stage,
        ),
        (
            "bytes of workgroup storage that the kernels need",
            needed.max_compute_workgroup_storage_size,
            device.max_compute_workgroup_storage_size,
        ),
        (
            "invocations per workgroup that the kernels need",
            needed.max_compute_invocations_per_workgroup,
            device.max_compute_invocations_per_workgroup,
        ),
        (
            "workgroup size along x that the kernels need",
            needed.max_compute_workgroup_size_x,
            device.max_compute_workgroup_size_x,
        ),
    ];
    match pairs
        .into_iter()
        .chain(least)
        .find(|&(_, need, has)| need > has)
    {
        Some((what, need, has)) => Err(BnError::Limit {
            what,
            value: need as u64,
            limit: has as u64,
        }),
        None => Ok(()),
    }
}

/// The least of a limit that any kernel works with: (what, least, the device's).
type LeastLimit = (&'static str, u32, fn(&wgpu::Limits) -> u32);
const LEAST_LIMITS: [LeastLimit; 5] = [
    // Every kernel binds group 0.
    ("bind groups that the kernels need", 1, |l| {
        l.max_bind_groups
    }),
    // The kernels' bindings run from 0 to 8.
    ("bindings per bind group that the kernels need", 9, |l| {
        l.max_bindings_per_bind_group
    }),
    (
        "uniform buffers per shader stage that the kernels need",
        1,
        |l| l.max_uniform_buffers_per_shader_stage,
    ),
    (
        "bytes of one uniform binding that the kernels need",
        std::mem::size_of::<crate::gpu::kernels::Params>() as u32,
        |l| l.max_uniform_buffer_binding_size.min(u32::MAX as u64) as u32,
    ),
    ("workgroups per dimension that the kernels need", 1, |l| {
        l.max_compute_workgroups_per_dimension
    }),
];

/// GpuContext::scoped, for work on a device before its context exists.
fn scoped<T>(device: &wgpu::Device, what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = work();
    let v = pollster::block_on(validation.pop());
    let i = pollster::block_on(internal.pop());
    let o = pollster::block_on(oom.pop());
    match v.or(i).or(o) {
        Some(e) => Err(BnError::Wgpu {
            kernel: what.to_string(),
            message: e.to_string(),
        }),
        None => result,
    }
}

/// Maps the first `bytes` of a MAP_READ buffer, waits for the device, and copies them out.
pub(crate) fn read_staging<T: bytemuck::Pod>(
    device: &wgpu::Device,
    staging: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<T>> {
    read_staging_into(device, staging, bytes, Vec::new())
}

/// `read_staging`, appending the values to `into`, which grows only where its room is short.
pub(crate) fn read_staging_into<T: bytemuck::Pod>(
    device: &wgpu::Device,
    staging: &wgpu::Buffer,
    bytes: u64,
    mut into: Vec<T>,
) -> Result<Vec<T>> {
    let slice = staging.slice(..bytes);
    let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = sender.send(r);
    });
    // Every return after the map was asked for leaves the buffer unmapped (a pending map is
    // aborted), so that the next read of it can copy into it. After a map that failed, wgpu
    // still counts the buffer as mapped on the client's side until unmap(), which then also
    // raises a NotMapped error on the device's: caught here, as the map's own error is the
    // one to return.
    if let Err(e) = device.poll(wgpu::PollType::wait_indefinitely()) {
        staging.unmap();
        return Err(BnError::Readback(e.to_string()));
    }
    let failed = |why: String| {
        let _ = scoped(device, "unmapping a failed read-back", || {
            staging.unmap();
            Ok(())
        });
        BnError::Readback(why)
    };
    pollster::block_on(receiver.receive())
        .ok_or_else(|| failed("map callback dropped".into()))?
        .map_err(|e| failed(e.to_string()))?;
    let values = slice
        .get_mapped_range()
        .map(|view| into.extend_from_slice(bytemuck::cast_slice::<u8, T>(&view)))
        .map_err(|e| BnError::Readback(e.to_string()));
    staging.unmap();
    values.map(|()| into)
}

/// Runs shaders/subgroup_probe.wgsl once and checks what common/subgroups_on.wgsl assumes:
/// every subgroup of a 256-invocation workgroup is a run of consecutive
/// local_invocation_index, aligned to its size, a power of two. WGSL does not promise this
/// layout (drivers do it for one-dimensional workgroups), so it is checked, not assumed; a
/// device that fails it runs the workgroup-memory reductions.
fn subgroups_are_lane_runs(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<bool> {
    const BYTES: u64 = 256 * 16;
    let probe = Kernel::from_source(
        device,
        "subgroup_probe",
        include_str!("../../shaders/subgroup_probe.wgsl").to_string(),
        &[],
    )?;
    let staging = scoped(device, "subgroup probe", || {
        let buffer = |label, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: BYTES,
                usage,
                mapped_at_creation: false,
            })
        };
        let lanes = buffer(
            "subgroup probe",
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        );
        let staging = buffer(
            "subgroup probe readback",
            wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        );
        let bind = probe.bind(device, &[lanes.as_entire_binding()]);
        let mut encoder = device.create_command_encoder(&Default::default());
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            probe.dispatch(&mut pass, &bind, (1, 1, 1));
        }
        encoder.copy_buffer_to_buffer(&lanes, 0, &staging, 0, BYTES);
        queue.submit([encoder.finish()]);
        Ok(staging)
    })?;
    Ok(lanes_form_runs(&read_staging::<u32>(
        device, &staging, BYTES,
    )?))
}

/// Per lane (id in subgroup, subgroup size, first lane's index, active lanes): the check of
/// subgroups_are_lane_runs. Every subgroup must be as large as the first lane's: the kernels
/// take that one size for the whole workgroup (subgroups_on.wgsl, subgroup_span), where
/// Vulkan, with the varying subgroup size that wgpu allows, need not give one.
fn lanes_form_runs(words: &[u32]) -> bool {
    let first_size = words.get(1).copied();
    words.chunks_exact(4).enumerate().all(|(lid, w)| {
        let (id, size, first, active) = (w[0], w[1], w[2], w[3]);
        let lid = lid as u32;
        Some(size) == first_size
            && size.is_power_of_two()
            && 256 % size == 0
            && active == size
            && id == lid % size
            && first == lid - id
    })
}

#[cfg(test)]
mod tests {
    use super::{adapter_rank, check_limits, lanes_form_runs, GpuContext};
    use crate::error::BnError;

    /// Each limit check_limits compares refuses a device one short of it, naming that limit
    /// and both numbers; the required limits themselves pass.
    #[test]
    fn each_compute_limit_one_short_is_refused_by_name() {
        let required = GpuContext::required_limits();
        assert!(check_limits(&required).is_ok());
        type Field = fn(&mut wgpu::Limits) -> &mut u32;
        let cases: [(&str, Field); 4] = [
            ("storage buffers", |l| {
                &mut l.max_storage_buffers_per_shader_stage
            }),
            ("workgroup storage", |l| {
                &mut l.max_compute_workgroup_storage_size
            }),
            ("invocations per workgroup", |l| {
                &mut l.max_compute_invocations_per_workgroup
            }),
            ("workgroup size along x", |l| {
                &mut l.max_compute_workgroup_size_x
            }),
        ];
        for (name, field) in cases {
            let mut short = required.clone();
            let need = *field(&mut short);
            *field(&mut short) -= 1;
            match check_limits(&short) {
                Err(BnError::Limit { what, value, limit }) => {
                    assert!(what.contains(name), "{name}: {what}");
                    assert_eq!((value, limit), (need as u64, need as u64 - 1), "{name}");
                }
                other => panic!("{name}: expected a Limit error, got {other:?}"),
            }
        }
        // And those the kernels need a little of, at that little and one short of it.
        let least: [(&str, u32, Field); 4] = [
            ("bind groups", 1, |l| &mut l.max_bind_groups),
            ("bindings per bind group", 9, |l| {
                &mut l.max_bindings_per_bind_group
            }),
            ("uniform buffers", 1, |l| {
                &mut l.max_uniform_buffers_per_shader_stage
            }),
            ("workgroups per dimension", 1, |l| {
                &mut l.max_compute_workgroups_per_dimension
            }),
        ];
        let mut short = required.clone();
        short.max_uniform_buffer_binding_size = 95;
        assert!(matches!(
            check_limits(&short),
            Err(BnError::Limit {
                value: 96,
                limit: 95,
                ..
            })
        ));
        for (name, need, field) in least {
            let mut short = required.clone();
            *field(&mut short) = need;
            assert!(check_limits(&short).is_ok(), "{name} at {need}");
            *field(&mut short) = need - 1;
            match check_limits(&short) {
                Err(BnError::Limit { what, value, limit }) => {
                    assert!(what.contains(name), "{name}: {what}");
                    assert_eq!((value, limit), (need as u64, need as u64 - 1), "{name}");
                }
                other => panic!("{name}: expected a Limit error, got {other:?}"),
            }
        }
    }

    fn layout(size: u32, shuffle: impl Fn(u32) -> u32) -> Vec<u32> {
        (0..256u32)
            .flat_map(|lid| {
                let id = shuffle(lid) % size;
                [id, size, lid - id, size]
            })
            .collect()
    }

    /// Among adapters of the wanted name: compute first, then the preferred kind, and a CPU
    /// rasterizer after every GPU (with no preference too).
    #[test]
    fn adapters_of_a_name_rank_gpus_before_cpu_rasterizers() {
        use wgpu::{DeviceType::*, PowerPreference::*};
        for preference in [HighPerformance, LowPower, None] {
            for gpu in [DiscreteGpu, IntegratedGpu, VirtualGpu, Other] {
                assert!(
                    adapter_rank(preference, gpu, true) < adapter_rank(preference, Cpu, true),
                    "{preference:?} {gpu:?}"
                );
            }
            assert!(
                adapter_rank(preference, Cpu, true) < adapter_rank(preference, DiscreteGpu, false)
            );
        }
        assert!(
            adapter_rank(HighPerformance, DiscreteGpu, true)
                < adapter_rank(HighPerformance, IntegratedGpu, true)
        );
        assert!(
            adapter_rank(LowPower, IntegratedGpu, true) < adapter_rank(LowPower, DiscreteGpu, true)
        );
    }

    #[test]
    fn consecutive_aligned_subgroups_pass() {
        for size in [4, 8, 16, 32, 64, 128] {
            assert!(lanes_form_runs(&layout(size, |l| l)), "size {size}");
        }
    }

    #[test]
    fn other_layouts_fail() {
        // Lanes reversed within each subgroup of 32.
        let reversed: Vec<u32> = (0..256u32)
            .flat_map(|lid| {
                let id = 31 - lid % 32;
                [id, 32, lid - lid % 32 + 31, 32]
            })
            .collect();
        assert!(!lanes_form_runs(&reversed));
        // A size that is not a power of two, and partly filled subgroups.
        assert!(!lanes_form_runs(&layout(24, |l| l)));
        let mut partial = layout(32, |l| l);
        partial[3] = 16;
        assert!(!lanes_form_runs(&partial));
        // Aligned runs, but of two sizes: 32 for the first half, 16 for the second.
        let mixed: Vec<u32> = (0..256u32)
            .flat_map(|lid| {
                let size = if lid < 128 { 32 } else { 16 };
                [lid % size, size, lid - lid % size, size]
            })
            .collect();
        assert!(!lanes_form_runs(&mixed));
        // Subgroups that interleave lanes (lid % 8 picks the subgroup).
        let interleaved: Vec<u32> = (0..256u32)
            .flat_map(|lid| [lid / 8, 32, lid % 8, 32])
            .collect();
        assert!(!lanes_form_runs(&interleaved));
    }
}
