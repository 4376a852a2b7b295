//! The layer on your own wgpu device and buffers: a training forward and a backward recorded
//! into your own encoder, submitted and read back by you, then checked against the crate's
//! f64 CPU reference. Run with `cargo run --release --example own_device`.

use wgpu_batchnorm::ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::wgpu;
use wgpu_batchnorm::{
    BatchNorm, BatchNormConfig, BnError, Device, GpuBatchNorm, GpuContext, GpuTensor, Layout,
};

fn main() -> Result<(), BnError> {
    // Your device, made with at least the limits the kernels need.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))
        .map_err(|e| BnError::NoAdapter(e.to_string()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: GpuContext::required_limits(),
        ..Default::default()
    }))
    .map_err(|e| BnError::RequestDevice(e.to_string()))?;
    let ctx = GpuContext::from_adapter_device(device.clone(), queue.clone(), adapter.get_info())?;

    let dims = [8, 16, 12, 12];
    let layout = Layout::ChannelsFirst;
    let numel: usize = dims.iter().product();
    let values = |seed: u32| -> Vec<f32> {
        let mut state = seed;
        (0..numel)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 * 4.0 - 1.0
            })
            .collect()
    };
    let (x, dy) = (values(1), values(2));

    // x and dy share one buffer, each at an offset the device aligns storage bindings to;
    // y and dx, outputs, get buffers of their own.
    let bytes = (numel * 4) as u64;
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    let dy_offset = bytes.next_multiple_of(align);
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let buffer = |size| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let arena = buffer(dy_offset + bytes);
    let (y_buf, dx_buf) = (buffer(bytes), buffer(bytes));
    queue.write_buffer(&arena, 0, bytemuck::cast_slice(&x));
    queue.write_buffer(&arena, dy_offset, bytemuck::cast_slice(&dy));

    let config = BatchNormConfig::new(dims[1]);
    let gamma: Vec<f32> = (0..dims[1]).map(|c| 0.5 + 0.1 * c as f32).collect();
    let mut layer = GpuBatchNorm::new(ctx.clone(), config.clone())?;
    layer.set_gamma(&gamma)?;

    let x_t = GpuTensor::with_offset(&arena, 0, &dims, layout)?;
    let dy_t = GpuTensor::with_offset(&arena, dy_offset, &dims, layout)?;
    let mut encoder = device.create_command_encoder(&Default::default());
    layer.forward(&mut encoder, &x_t, &GpuTensor::new(&y_buf, &dims, layout)?)?;
    layer.backward(
        &mut encoder,
        &x_t,
        &dy_t,
        &GpuTensor::new(&dx_buf, &dims, layout)?,
    )?;
    queue.submit([encoder.finish()]);

    let y = read_back(&device, &queue, &y_buf, bytes);
    let dx = read_back(&device, &queue, &dx_buf, bytes);
    let dgamma = read_back(&device, &queue, layer.dgamma_buffer(), 4 * dims[1] as u64);

    // The same step on the CPU reference.
    let mut reference = BatchNorm::new(config, Device::Cpu)?;
    reference.set_gamma(&gamma)?;
    let array =
        |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&dims), v).expect("dims hold the values");
    let (x, dy) = (array(x), array(dy));
    let want = reference.forward(x.view(), layout)?;
    let grads = reference.backward(x.view(), dy.view(), layout)?;

    let worst = [
        (
            "y",
            relative_error(&y, want.y.as_slice().expect("standard layout")),
        ),
        (
            "dx",
            relative_error(&dx, grads.dx.as_slice().expect("standard layout")),
        ),
        (
            "dgamma",
            relative_error(&dgamma, &grads.dgamma.expect("affine")),
        ),
        (
            "running_var",
            relative_error(&layer.running_var()?, &reference.running_var()?),
        ),
    ];
    println!(
        "{} ({:?})",
        adapter.get_info().name,
        adapter.get_info().backend
    );
    for (name, error) in worst {
        println!("{name:12} largest error against the CPU reference: {error:.1e}");
        assert!(error < 1e-5, "{name} is off by {error:e}");
    }
    Ok(())
}

/// Copies a buffer into a mappable one and reads it as f32.
fn read_back(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    buffer: &wgpu::Buffer,
    bytes: u64,
) -> Vec<f32> {
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
    queue.submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |result| result.expect("mapped"));
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("the device finished");
    let view = staging
        .slice(..)
        .get_mapped_range()
        .expect("a mapped range");
    bytemuck::cast_slice(&view).to_vec()
}

/// Largest difference, relative to the largest magnitude of `want`.
fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0, |worst, (g, w)| worst.max((g - w).abs() / scale))
}
