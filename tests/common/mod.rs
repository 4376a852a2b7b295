//! Helpers shared by the integration tests: a seeded generator, error measures, the context.
#![allow(dead_code)]

pub mod check;

use std::sync::{Arc, OnceLock};

use ndarray::ArrayD;
use wgpu_batchnorm::GpuContext;

/// Mesa prints "XDG_RUNTIME_DIR is invalid" on every start without one.
pub fn set_runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join(format!("batchnorm-xdg-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        std::env::set_var("XDG_RUNTIME_DIR", dir);
    }
}

/// The GPU context of this test binary, with the single-read forward on wherever shapes
/// allow it (no device's default since it measured slower on lavapipe and on an H100, but
/// callers can turn it on). No adapter is a failure, never a skip.
pub fn gpu() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        set_runtime_dir();
        let ctx = GpuContext::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
        ctx.set_single_read_forward(true);
        ctx
    })
    .clone()
}

/// A second context whose forward always runs in two passes (statistics, then normalize),
/// so that the tests cover that path on shapes the single-read forward would take.
pub fn gpu_two_pass() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        set_runtime_dir();
        let ctx = GpuContext::new().unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"));
        ctx.set_single_read_forward(false);
        ctx
    })
    .clone()
}

/// A device made here, as a caller makes one: with subgroups where `subgroups` is set and the
/// adapter has them, and `limits` (the adapter's own when None).
pub fn caller_device(subgroups: bool, limits: Option<wgpu::Limits>) -> (wgpu::Device, wgpu::Queue) {
    let (device, queue, _) = caller_adapter_device(subgroups, limits);
    (device, queue)
}

/// As caller_device, with the adapter's description.
pub fn caller_adapter_device(
    subgroups: bool,
    limits: Option<wgpu::Limits>,
) -> (wgpu::Device, wgpu::Queue, wgpu::AdapterInfo) {
    set_runtime_dir();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
        &instance, None,
    ))
    .expect("an adapter (install mesa-vulkan-drivers)");
    let features = if subgroups {
        adapter.features() & wgpu::Features::SUBGROUP
    } else {
        wgpu::Features::empty()
    };
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_features: features,
        required_limits: limits.unwrap_or_else(|| adapter.limits()),
        ..Default::default()
    }))
    .expect("a device");
    (device, queue, adapter.get_info())
}

/// A caller's device described as a CPU rasterizer whatever the adapter is, so that the
/// pipelines only CPU devices take (runs per lane, contiguous rows) run on every machine that
/// runs the tests, one with a GPU included.
pub fn gpu_cpu_tuned() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let (device, queue, info) = caller_adapter_device(true, None);
        let info = wgpu::AdapterInfo {
            device_type: wgpu::DeviceType::Cpu,
            ..info
        };
        GpuContext::from_adapter_device(device, queue, info).expect("a context")
    })
    .clone()
}

/// A context on a caller's device (so with a GPU's tuning whatever the adapter is), with
/// subgroups requested where the adapter offers them or not at all: the two ways the
/// reductions merge lanes.
pub fn gpu_caller(subgroups: bool) -> Arc<GpuContext> {
    static WITH: OnceLock<Arc<GpuContext>> = OnceLock::new();
    static WITHOUT: OnceLock<Arc<GpuContext>> = OnceLock::new();
    let cell = if subgroups { &WITH } else { &WITHOUT };
    cell.get_or_init(|| {
        let (device, queue) = caller_device(subgroups, None);
        GpuContext::from_device(device, queue).expect("a context")
    })
    .clone()
}

/// A caller's device with subgroups (a GPU's tuning) and the single-read forward on: its
/// kernels with subgroup merges, which the default context (a CPU rasterizer's tuning on
/// lavapipe, no subgroups) never runs.
pub fn gpu_caller_single_read() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| single_read_caller(true)).clone()
}

/// gpu_caller_single_read without subgroups: a GPU's tuning of the single-read forward with
/// its workgroup fold.
pub fn gpu_caller_single_read_no_subgroups() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| single_read_caller(false)).clone()
}

fn single_read_caller(subgroups: bool) -> Arc<GpuContext> {
    let (device, queue) = caller_device(subgroups, None);
    let ctx = GpuContext::from_device(device, queue).expect("a context");
    ctx.set_single_read_forward(true);
    ctx
}

/// A caller's tensor buffer of `bytes` (STORAGE, COPY_DST, COPY_SRC), holding `values` where
/// given.
pub fn storage_buffer(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    bytes: u64,
    values: Option<&[f32]>,
) -> wgpu::Buffer {
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    if let Some(values) = values {
        queue.write_buffer(&buffer, 0, bytemuck::cast_slice(values));
    }
    buffer
}

/// `n` f32 of `src` from byte `offset`, copied to a mappable buffer and read back.
pub fn read_buffer(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    src: &wgpu::Buffer,
    offset: u64,
    n: usize,
) -> Vec<f32> {
    let bytes = n as u64 * 4;
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
    queue.submit([encoder.finish()]);
    staging.map_async(wgpu::MapMode::Read, .., |r| r.unwrap());
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let values = bytemuck::cast_slice(&staging.get_mapped_range(..).unwrap()).to_vec();
    staging.unmap();
    values
}

/// SplitMix64 with Box-Muller normals: reproducible inputs without a dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    pub fn normal_vec(&mut self, n: usize, mean: f64, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| (mean + std * self.normal()) as f32)
            .collect()
    }

    pub fn array(&mut self, dims: &[usize], mean: f64, std: f64) -> ArrayD<f32> {
        let n = dims.iter().product();
        ArrayD::from_shape_vec(dims, self.normal_vec(n, mean, std)).unwrap()
    }
}

/// ‖got − want‖₂ / ‖want‖₂, with `want` in f64 (absolute when want is all zero).
pub fn rel_l2<'a>(
    got: impl IntoIterator<Item = &'a f32>,
    want: impl IntoIterator<Item = f64>,
) -> f64 {
    let (mut num, mut den, mut n_got, mut n_want) = (0.0f64, 0.0f64, 0usize, 0usize);
    let mut got = got.into_iter();
    for w in want {
        n_want += 1;
        let Some(&g) = got.next() else { break };
        n_got += 1;
        num += (g as f64 - w).powi(2);
        den += w * w;
    }
    n_got += got.count();
    if n_got != n_want {
        return f64::INFINITY;
    }
    if !num.is_finite() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}
