//! Adapter, device and queue (our own or the caller's), their limits, and the pipelines,
//! built once per context.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use crate::error::{BnError, Result};
use crate::gpu::kernels::{Kernels, Tuning};

/// A device, its queue, and every batch-norm pipeline compiled for it.
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) kernels: Kernels,
    limits: wgpu::Limits,
    adapter_info: Option<wgpu::AdapterInfo>,
    buffers_created: AtomicU64,
    /// SINGLE_READ_AUTO, or a choice made by set_single_read_forward.
    single_read: AtomicU8,
}

const SINGLE_READ_AUTO: u8 = 0;
const SINGLE_READ_ON: u8 = 1;
const SINGLE_READ_OFF: u8 = 2;

/// One adapter as `batchnorm info` reports it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub info: wgpu::AdapterInfo,
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

/// Every adapter wgpu finds on the backends that WGPU_BACKEND allows.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let instance = instance();
    let backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all());
    pollster::block_on(instance.enumerate_adapters(backends))
        .into_iter()
        .map(|a| AdapterSummary {
            info: a.get_info(),
            compute_shaders: has_compute(&a),
        })
        .collect()
}

impl GpuContext {
    /// Picks an adapter (WGPU_ADAPTER_NAME, WGPU_BACKEND and WGPU_POWER_PREF are honoured),
    /// requests a device with the adapter's full limits, and builds the pipelines.
    pub fn new() -> Result<Arc<Self>> {
        let instance = instance();
        let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
            &instance, None,
        ))
        .map_err(|e| BnError::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        if !has_compute(&adapter) {
            return Err(BnError::NoAdapter(format!(
                "adapter {} ({:?}) has no compute shaders",
                info.name, info.backend
            )));
        }
        // Timestamps let the benchmark time kernels rather than submissions.
        let timestamps =
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("batchnorm"),
            required_features: adapter.features() & timestamps,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| BnError::RequestDevice(e.to_string()))?;
        Self::build(device, queue, Some(info)).map(Arc::new)
    }

    /// Uses the caller's device and queue; pipelines are built here, once.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Self> {
        Self::build(device, queue, None)
    }

    fn build(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter_info: Option<wgpu::AdapterInfo>,
    ) -> Result<Self> {
        let kernels = Kernels::new(&device)?;
        Ok(Self {
            limits: device.limits(),
            device,
            queue,
            kernels,
            adapter_info,
            buffers_created: AtomicU64::new(0),
            single_read: AtomicU8::new(SINGLE_READ_AUTO),
        })
    }

    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Whether kernels can be timed with timestamps written between commands.
    pub fn has_timestamps(&self) -> bool {
        self.device.features().contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
        )
    }

    /// Work sizes for this kind of device (a caller's device is taken to be a GPU).
    pub(crate) fn tuning(&self) -> Tuning {
        let tuning = Tuning::for_device(self.adapter_info.as_ref().map(|i| i.device_type));
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
    /// what suits the device (single read on GPUs, two passes on CPU rasterizers). For tests
    /// and comparisons; it applies to input shapes that layers meet from then on.
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
    /// every buffer is made once per layer or per input shape and then reused.
    pub fn buffers_created(&self) -> u64 {
        self.buffers_created.load(Ordering::Relaxed)
    }

    /// Runs `work` inside validation, internal and out-of-memory error scopes, and returns
    /// the first error wgpu raised in them (naming `what`) instead of leaving it to wgpu's
    /// panicking default handler.
    pub(crate) fn scoped<T>(&self, what: &str, work: impl FnOnce() -> Result<T>) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let internal = self.device.push_error_scope(wgpu::ErrorFilter::Internal);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
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

    /// Maps the first `bytes` of a MAP_READ buffer and copies them out as f32.
    pub(crate) fn read_mapped(&self, staging: &wgpu::Buffer, bytes: u64) -> Result<Vec<f32>> {
        let slice = staging.slice(..bytes);
        let (sender, receiver) = futures_intrusive::channel::shared::oneshot_channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = sender.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| BnError::Readback(e.to_string()))?;
        pollster::block_on(receiver.receive())
            .ok_or_else(|| BnError::Readback("map callback dropped".into()))?
            .map_err(|e| BnError::Readback(e.to_string()))?;
        let values = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| BnError::Readback(e.to_string()))?;
            bytemuck::cast_slice::<u8, f32>(&view).to_vec()
        };
        staging.unmap();
        Ok(values)
    }
}
