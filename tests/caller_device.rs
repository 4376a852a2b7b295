//! The layer on a caller's own device, queue and buffers, recorded into the caller's encoder.

mod common;

use common::{read_buffer as read, rel_l2, Rng};
use wgpu_batchnorm::{
    BatchNorm, BatchNormConfig, BnError, Device, GpuBatchNorm, GpuContext, GpuTensor, Layout,
};

#[test]
fn records_into_the_callers_encoder_on_the_callers_buffers() {
    let (device, queue) = common::caller_device(false, Some(wgpu::Limits::default()));
    let ctx = GpuContext::from_device(device.clone(), queue.clone()).unwrap();
    let dims = [4, 6, 5, 3];
    let n: usize = dims.iter().product();
    let mut rng = Rng::new(3);
    let x = rng.array(&dims, 1.0, 2.0);
    let dy = rng.array(&dims, 0.0, 1.0);

    // One buffer holding x and dy at aligned offsets, as an ML stack's arena might.
    let align = device.limits().min_storage_buffer_offset_alignment as u64;
    let dy_offset = (n as u64 * 4).div_ceil(align) * align + align;
    let usage =
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let arena = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("arena"),
        size: dy_offset + n as u64 * 4,
        usage,
        mapped_at_creation: false,
    });
    queue.write_buffer(&arena, 0, bytemuck::cast_slice(x.as_slice().unwrap()));
    queue.write_buffer(
        &arena,
        dy_offset,
        bytemuck::cast_slice(dy.as_slice().unwrap()),
    );
    let out = |label| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: n as u64 * 4,
            usage,
            mapped_at_creation: false,
        })
    };
    let (y, dx) = (out("y"), out("dx"));

    let layout = Layout::ChannelsFirst;
    let mut layer = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(6)).unwrap();
    let x_t = GpuTensor::new(&arena, &dims, layout).unwrap();
    let dy_t = GpuTensor::with_offset(&arena, dy_offset, &dims, layout).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    layer
        .forward(
            &mut encoder,
            &x_t,
            &GpuTensor::new(&y, &dims, layout).unwrap(),
        )
        .unwrap();
    layer
        .backward(
            &mut encoder,
            &x_t,
            &dy_t,
            &GpuTensor::new(&dx, &dims, layout).unwrap(),
        )
        .unwrap();
    // Setters go through the queue at once (README): set between recording and submit, these
    // reach the recorded passes, which would otherwise run with gamma 1 and beta 0.
    let gamma: Vec<f32> = (0..6).map(|_| (0.5 + rng.uniform()) as f32).collect();
    let beta = rng.normal_vec(6, 0.0, 1.0);
    layer.set_gamma(&gamma).unwrap();
    layer.set_beta(&beta).unwrap();
    queue.submit([encoder.finish()]);

    let mut cpu = BatchNorm::new(BatchNormConfig::new(6), Device::Cpu).unwrap();
    cpu.set_gamma(&gamma).unwrap();
    cpu.set_beta(&beta).unwrap();
    let want_y = cpu.forward(x.view(), layout).unwrap().y;
    let want = cpu.backward(x.view(), dy.view(), layout).unwrap();
    let close = |got: &[f32], want: &[f32]| rel_l2(got, want.iter().map(|&v| v as f64)) <= 1e-5;
    assert!(
        close(&read(&device, &queue, &y, 0, n), want_y.as_slice().unwrap()),
        "y"
    );
    assert!(
        close(
            &read(&device, &queue, &dx, 0, n),
            want.dx.as_slice().unwrap()
        ),
        "dx"
    );
    assert!(
        close(
            &read(&device, &queue, layer.dgamma_buffer(), 0, 6),
            &want.dgamma.unwrap()
        ),
        "dgamma"
    );
    assert!(
        close(
            &read(&device, &queue, layer.dbeta_buffer(), 0, 6),
            &want.dbeta.unwrap()
        ),
        "dbeta"
    );
    assert!(
        close(&layer.running_mean().unwrap(), &cpu.running_mean().unwrap()),
        "running_mean"
    );
    assert_eq!(layer.num_batches_tracked(), Some(1));

    // A misaligned offset, an output aliasing the input, and a short buffer are refused,
    // the first two naming the tensor at fault.
    if align > 4 {
        let t = GpuTensor::with_offset(&arena, 4, &dims, layout).unwrap();
        match layer.forward(
            &mut device.create_command_encoder(&Default::default()),
            &t,
            &GpuTensor::new(&y, &dims, layout).unwrap(),
        ) {
            Err(BnError::Buffer { name: "x", reason }) => {
                assert!(reason.contains("offset 4 "), "{reason}")
            }
            other => panic!("x at offset 4: {other:?}"),
        }
    }
    let mut encoder = device.create_command_encoder(&Default::default());
    match layer.forward(&mut encoder, &x_t, &x_t) {
        Err(e @ BnError::Buffer { name: "x", .. }) => {
            assert!(e.to_string().contains("shares its buffer with y"), "{e}")
        }
        other => panic!("in-place: {other:?}"),
    }
    assert!(
        GpuTensor::new(&y, &[4, 6, 5, 4], layout).is_err(),
        "short buffer accepted"
    );
    // An output of x's dims in the other layout, and a dx of other dims: each error names
    // the tensor at fault.
    let y_last = GpuTensor::new(&y, &dims, Layout::ChannelsLast).unwrap();
    match layer.forward(&mut encoder, &x_t, &y_last) {
        Err(BnError::LayoutMismatch {
            a_name,
            b_name,
            a,
            b,
        }) => {
            assert_eq!((a_name, b_name), ("x", "y"));
            assert_eq!((a, b), (layout, Layout::ChannelsLast));
        }
        other => panic!("expected a layout mismatch, got {other:?}"),
    }
    let dx_other = GpuTensor::new(&dx, &[4, 6, 3, 5], layout).unwrap();
    match layer.backward(&mut encoder, &x_t, &dy_t, &dx_other) {
        Err(BnError::ShapeMismatch { b_name, b, .. }) => {
            assert_eq!((b_name, b), ("dx", vec![4, 6, 3, 5]));
        }
        other => panic!("expected a shape mismatch, got {other:?}"),
    }
    // A shape whose byte count wraps u64 (2^61 · 2 · 4 = 2^66) must not pass as small.
    assert!(
        matches!(
            GpuTensor::new(&y, &[1 << 61, 2], layout),
            Err(wgpu_batchnorm::BnError::TooLarge { .. })
        ),
        "a wrapping byte count accepted"
    );
}

#[test]
fn steady_state_creates_no_buffers() {
    // A context of its own: other tests in this binary make buffers on the shared one.
    common::set_runtime_dir();
    let ctx = GpuContext::new().unwrap();
    let mut rng = Rng::new(5);
    let x = rng.array(&[8, 4, 6, 6], 0.0, 1.0);
    // Empty batches among them, which count on the GPU without a buffer of their own.
    let empty = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[0, 4, 6, 6]));
    let mut bn = BatchNorm::new(BatchNormConfig::new(4), Device::Gpu(ctx.clone())).unwrap();
    let step = |bn: &mut BatchNorm| {
        let out = bn.forward(x.view(), Layout::ChannelsFirst).unwrap();
        bn.backward(x.view(), out.y.view(), Layout::ChannelsFirst)
            .unwrap();
        bn.forward(empty.view(), Layout::ChannelsFirst).unwrap();
        bn.running_mean().unwrap();
    };
    step(&mut bn);
    let before = ctx.buffers_created();
    for _ in 0..20 {
        step(&mut bn);
    }
    assert_eq!(ctx.buffers_created(), before, "buffers made per call");
    // A new shape makes its own buffers once.
    let x2 = rng.array(&[2, 4, 6, 6], 0.0, 1.0);
    bn.forward(x2.view(), Layout::ChannelsFirst).unwrap();
    assert!(ctx.buffers_created() > before);
}

/// More shapes than a layer keeps plans for: the least recent are dropped and made again,
/// and results stay right. Counted on a context of its own, which no other test makes
/// buffers on: cycling through twelve shapes remakes every plan each round (a layer that
/// kept them all, or never evicted, would make none the second time), and cycling through
/// the eight it used last makes nothing (one that kept fewer than eight would).
#[test]
fn many_shapes_evict_and_remake_plans() {
    let ctx = GpuContext::new().unwrap();
    let mut gpu = BatchNorm::new(BatchNormConfig::new(3), Device::Gpu(ctx.clone())).unwrap();
    let mut cpu = BatchNorm::new(BatchNormConfig::new(3), Device::Cpu).unwrap();
    let mut rng = Rng::new(11);
    let mut step = |n: usize, round: usize| {
        let x = rng.array(&[n, 3, 5], 0.0, 1.0);
        let g = gpu.forward(x.view(), Layout::ChannelsFirst).unwrap();
        let c = cpu.forward(x.view(), Layout::ChannelsFirst).unwrap();
        let e = rel_l2(g.y.iter(), c.y.iter().map(|&v| v as f64));
        assert!(e <= 1e-5, "round {round}, N = {n}: {e}");
        let dy = rng.array(&[n, 3, 5], 0.0, 1.0);
        let gb = gpu
            .backward(x.view(), dy.view(), Layout::ChannelsFirst)
            .unwrap();
        let cb = cpu
            .backward(x.view(), dy.view(), Layout::ChannelsFirst)
            .unwrap();
        let e = rel_l2(gb.dx.iter(), cb.dx.iter().map(|&v| v as f64));
        assert!(e <= 1e-5, "round {round}, N = {n}: dx {e}");
    };
    let mut made = Vec::new();
    for round in 0..2 {
        let before = ctx.buffers_created();
        for n in 2..14 {
            step(n, round);
        }
        made.push(ctx.buffers_created() - before);
    }
    assert!(made[0] >= 12 * 7, "twelve plans made {}", made[0]);
    assert_eq!(made[1], made[0], "the second round remade every plan");
    let before = ctx.buffers_created();
    for n in 6..14 {
        step(n, 2);
    }
    assert_eq!(
        ctx.buffers_created(),
        before,
        "the eight shapes used last were kept"
    );
}

fn tensor_buffer(device: &wgpu::Device, queue: &wgpu::Queue, values: &[f32]) -> wgpu::Buffer {
    common::storage_buffer(device, queue, values.len() as u64 * 4, Some(values))
}

/// Both layers counted `count` batches and hold the same running mean.
fn same_count_and_running_mean(gpu: &GpuBatchNorm, cpu: &BatchNorm, count: u64) {
    assert_eq!(gpu.num_batches_tracked(), Some(count));
    assert_eq!(cpu.num_batches_tracked(), Some(count));
    let (g, c) = (gpu.running_mean().unwrap(), cpu.running_mean().unwrap());
    for (channel, (g, c)) in g.iter().zip(&c).enumerate() {
        assert!(
            (g - c).abs() <= 1e-5 * (1.0 + c.abs()),
            "channel {channel}: running_mean {g} on the GPU, {c} on the CPU"
        );
    }
}

/// The count's cases below: a caller's device and its context, and two batches x1 and x2 of
/// COUNT_DIMS for a layer of three channels with momentum None (so that the count weighs each
/// batch), channels first.
struct Counting {
    device: wgpu::Device,
    queue: wgpu::Queue,
    ctx: std::sync::Arc<GpuContext>,
    x1: ndarray::ArrayD<f32>,
    x2: ndarray::ArrayD<f32>,
    config: BatchNormConfig,
}

const COUNT_DIMS: [usize; 3] = [8, 3, 4];

impl Counting {
    fn new(seed: u64) -> Self {
        let (device, queue) = common::caller_device(false, Some(wgpu::Limits::default()));
        let ctx = GpuContext::from_device(device.clone(), queue.clone()).unwrap();
        let mut rng = Rng::new(seed);
        let (x1, x2) = (
            rng.array(&COUNT_DIMS, 1.0, 2.0),
            rng.array(&COUNT_DIMS, -3.0, 1.0),
        );
        let mut config = BatchNormConfig::new(3);
        config.momentum = None;
        Self {
            device,
            queue,
            ctx,
            x1,
            x2,
            config,
        }
    }

    /// Records a forward of x1 into `encoder`, on buffers of the caller's device.
    fn record_x1(&self, gpu: &mut GpuBatchNorm, encoder: &mut wgpu::CommandEncoder) {
        let x = tensor_buffer(&self.device, &self.queue, self.x1.as_slice().unwrap());
        let y = tensor_buffer(&self.device, &self.queue, &vec![0.0; self.x1.len()]);
        let t = |b| GpuTensor::new(b, &COUNT_DIMS, Layout::ChannelsFirst).unwrap();
        gpu.forward(encoder, &t(&x), &t(&y)).unwrap();
    }
}

/// `set_num_batches_tracked` between recording a training forward and submitting it: the
/// count follows the order of recording, as the host's does, so with momentum None the next
/// forward averages in its batch with 1/(k + 1), as the CPU engine does after the same calls.
/// (Written to the GPU at once, the count landed before the recorded forward, which counted
/// itself on top: 1/(k + 2) from then on.)
#[test]
fn a_count_set_before_submit_follows_recording_order() {
    let c = Counting::new(21);
    let (x1, x2, layout) = (&c.x1, &c.x2, Layout::ChannelsFirst);
    let mut gpu = GpuBatchNorm::new(c.ctx.clone(), c.config.clone()).unwrap();
    let mut encoder = c.device.create_command_encoder(&Default::default());
    c.record_x1(&mut gpu, &mut encoder);
    gpu.set_num_batches_tracked(4).unwrap();
    c.queue.submit([encoder.finish()]);
    gpu.forward_array(x2.view(), layout).unwrap();

    let mut cpu = BatchNorm::new(c.config.clone(), Device::Cpu).unwrap();
    cpu.forward(x1.view(), layout).unwrap();
    cpu.set_num_batches_tracked(4).unwrap();
    cpu.forward(x2.view(), layout).unwrap();

    same_count_and_running_mean(&gpu, &cpu, 5);
}

/// A count set by `reset_running_stats`, then an eval forward recorded into an encoder the
/// caller drops: an eval forward reads no count, so the reset count stays pending for the next
/// training forward, which with momentum None takes its batch's mean whole (1/1), as the CPU
/// engine does. (When the eval forward took the pending copy along, the GPU kept its count of
/// three and averaged with 1/4.)
#[test]
fn a_count_set_survives_a_dropped_eval_forward() {
    let c = Counting::new(23);
    let (x1, x2, layout) = (&c.x1, &c.x2, Layout::ChannelsFirst);
    let mut gpu = GpuBatchNorm::new(c.ctx.clone(), c.config.clone()).unwrap();
    let mut cpu = BatchNorm::new(c.config.clone(), Device::Cpu).unwrap();
    for _ in 0..3 {
        gpu.forward_array(x1.view(), layout).unwrap();
        cpu.forward(x1.view(), layout).unwrap();
    }
    gpu.reset_running_stats().unwrap();
    cpu.reset_running_stats().unwrap();

    gpu.set_training(false);
    let mut encoder = c.device.create_command_encoder(&Default::default());
    c.record_x1(&mut gpu, &mut encoder);
    drop(encoder);
    gpu.set_training(true);

    gpu.forward_array(x2.view(), layout).unwrap();
    cpu.forward(x2.view(), layout).unwrap();
    same_count_and_running_mean(&gpu, &cpu, 1);
}

/// An empty batch recorded into the caller's encoder runs no kernel but counts, as in
/// PyTorch, and the GPU's count follows: with momentum None the next batch enters the average
/// with 1/3 after one counted batch and one empty one, as on the CPU engine. Its backward
/// zeroes dgamma and dbeta.
#[test]
fn an_empty_batch_recorded_is_counted_on_the_gpu_too() {
    let c = Counting::new(22);
    let (device, queue) = (c.device.clone(), c.queue.clone());
    let (x1, x2, layout) = (&c.x1, &c.x2, Layout::ChannelsFirst);
    let empty = [0, 3, 4];
    let config = c.config.clone();
    let mut gpu = GpuBatchNorm::new(c.ctx.clone(), config.clone()).unwrap();
    gpu.forward_array(x1.view(), layout).unwrap();
    gpu.backward_array(x1.view(), x2.view(), layout).unwrap();
    let nothing = tensor_buffer(&device, &queue, &[0.0; 4]);
    let out = tensor_buffer(&device, &queue, &[0.0; 4]);
    let t = |b| GpuTensor::new(b, &empty, layout).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    gpu.forward(&mut encoder, &t(&nothing), &t(&out)).unwrap();
    gpu.backward(&mut encoder, &t(&nothing), &t(&nothing), &t(&out))
        .unwrap();
    queue.submit([encoder.finish()]);
    assert_eq!(gpu.num_batches_tracked(), Some(2));
    assert_eq!(read(&device, &queue, gpu.dgamma_buffer(), 0, 3), [0.0; 3]);
    assert_eq!(read(&device, &queue, gpu.dbeta_buffer(), 0, 3), [0.0; 3]);
    gpu.forward_array(x2.view(), layout).unwrap();

    let mut cpu = BatchNorm::new(config, Device::Cpu).unwrap();
    cpu.forward(x1.view(), layout).unwrap();
    cpu.forward(
        ndarray::ArrayD::zeros(ndarray::IxDyn(&empty)).view(),
        layout,
    )
    .unwrap();
    cpu.forward(x2.view(), layout).unwrap();

    same_count_and_running_mean(&gpu, &cpu, 3);
}

/// Input the layer refuses leaves the caller's encoder as it was: what the caller recorded
/// before still runs, and finish() raises nothing (a bind group made in the caller's pass
/// and found invalid failed the whole encoder). Refused: a destroyed buffer, a buffer of
/// another device of the same instance (wgpu 30 tells a buffer's device only within one
/// instance: README), and the layer's own buffers as tensors, which its passes write.
#[test]
fn a_refused_call_leaves_the_callers_encoder_usable() {
    common::set_runtime_dir();
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(
        &instance, None,
    ))
    .expect("an adapter");
    let device_of_instance = || {
        pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor::default()))
            .expect("a device")
    };
    let (device, queue) = device_of_instance();
    let ctx = GpuContext::from_device(device.clone(), queue.clone()).unwrap();
    let dims = [4, 3];
    let layout = Layout::ChannelsFirst;
    let mut layer = GpuBatchNorm::new(ctx, BatchNormConfig::new(3)).unwrap();
    let source = tensor_buffer(&device, &queue, &[1.0; 12]);
    let copied = tensor_buffer(&device, &queue, &[0.0; 12]);
    let y = tensor_buffer(&device, &queue, &[0.0; 12]);
    let gone = tensor_buffer(&device, &queue, &[2.0; 12]);
    gone.destroy();
    let (other_device, other_queue) = device_of_instance();
    let foreign = tensor_buffer(&other_device, &other_queue, &[3.0; 12]);

    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&source, 0, &copied, 0, 48);
    let t = |b| GpuTensor::new(b, &dims, layout).unwrap();
    assert!(
        layer.forward(&mut encoder, &t(&gone), &t(&y)).is_err(),
        "destroyed x"
    );
    // wgpu's own check, in the layer's error scope (not taken for one of the layer's buffers).
    match layer.forward(&mut encoder, &t(&foreign), &t(&y)) {
        Err(e @ wgpu_batchnorm::BnError::Wgpu { .. }) => {
            assert!(
                e.to_string().contains("match Device"),
                "x of another device: {e}"
            )
        }
        other => panic!("x of another device: {other:?}"),
    }
    assert_eq!(layer.num_batches_tracked(), Some(0));
    // The layer's own buffers, as an output and as an input ([1, 3] fits them in eval).
    layer.set_training(false);
    let one = [1, 3];
    let own = |b| GpuTensor::new(b, &one, layout).unwrap();
    let small = tensor_buffer(&device, &queue, &[0.0; 3]);
    let (running_mean, gamma, dbeta) = (
        layer.running_mean_buffer().clone(),
        layer.gamma_buffer().clone(),
        layer.dbeta_buffer().clone(),
    );
    for (what, x, out) in [
        ("y = running_mean", own(&small), own(&running_mean)),
        ("x = gamma", own(&gamma), own(&small)),
        ("y = dbeta", own(&small), own(&dbeta)),
    ] {
        match layer.forward(&mut encoder, &x, &out) {
            Err(wgpu_batchnorm::BnError::Buffer { name, reason }) => {
                assert!(what.starts_with(name), "{what}: the error names {name}");
                assert!(
                    reason.contains("the layer's own buffers"),
                    "{what}: {reason}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    queue.submit([encoder.finish()]);
    assert!(
        pollster::block_on(scope.pop()).is_none(),
        "the encoder failed"
    );
    assert_eq!(read(&device, &queue, &copied, 0, 12), vec![1.0; 12]);
    assert_eq!(layer.running_mean().unwrap(), vec![0.0; 3]);
}

/// The ndarray calls refuse what they can before they make any buffer (or evict a plan).
#[test]
fn refused_array_calls_make_no_buffers() {
    common::set_runtime_dir();
    let ctx = GpuContext::new().unwrap();
    let mut layer = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(8)).unwrap();
    let before = ctx.buffers_created();
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 8]));
    assert!(matches!(
        layer.forward_array(x.view(), Layout::ChannelsFirst),
        Err(wgpu_batchnorm::BnError::SingleValuePerChannel { .. })
    ));
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[64, 8, 32]));
    assert!(matches!(
        layer.backward_array(x.view(), x.view(), Layout::ChannelsFirst),
        Err(wgpu_batchnorm::BnError::NoSavedStatistics { .. })
    ));
    // A broadcast view larger than the device's largest buffer: refused before the buffer
    // of statistics that forward_array_for_backward keeps, and before the host copy of the
    // view (which would be larger than that buffer too).
    let past = (ctx.limits().max_buffer_size / 64 + 1) as usize;
    let zero = ndarray::arr0(0f32).into_dyn();
    let huge = zero.broadcast(ndarray::IxDyn(&[2, 8, past])).unwrap();
    for result in [
        layer
            .forward_array_for_backward(huge.view(), Layout::ChannelsFirst)
            .map(|_| ()),
        layer
            .forward_array(huge.view(), Layout::ChannelsFirst)
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(BnError::Limit { .. })),
            "{:?}",
            result.err()
        );
    }
    assert_eq!(ctx.buffers_created(), before);
}

/// A device made with exactly `GpuContext::required_limits()` (far below lavapipe's own) runs
/// every kernel a forward and a backward take, with the CPU reference's results; one storage
/// buffer per stage short of them is refused up front with the limit it falls short of,
/// where wgpu would otherwise fail a pipeline (or, for workgroup storage, not check at all).
#[test]
fn a_device_with_the_required_limits_runs_and_one_short_of_them_is_refused() {
    let required = GpuContext::required_limits();
    let (device, queue) = common::caller_device(false, Some(required.clone()));
    let ctx = GpuContext::from_device(device, queue).unwrap();
    // The cross-check of every other context: train, eval and train again, random
    // parameters and running statistics, every output against the reference.
    let mut errors = Vec::new();
    for (seed, (dims, layout)) in [
        (&[6, 8, 5, 5][..], Layout::ChannelsFirst),
        (&[4, 3, 3, 8][..], Layout::ChannelsLast),
        (&[10, 12][..], Layout::ChannelsFirst),
    ]
    .into_iter()
    .enumerate()
    {
        errors.extend(common::check::cross_check(
            ctx.clone(),
            dims,
            layout,
            41 + seed as u64,
            1.0,
            2.0,
        ));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    let short = wgpu::Limits {
        max_storage_buffers_per_shader_stage: required.max_storage_buffers_per_shader_stage - 1,
        ..required
    };
    let (device, queue) = common::caller_device(false, Some(short));
    match GpuContext::from_device(device, queue) {
        Err(BnError::Limit { what, value, limit }) => {
            assert!(what.contains("storage buffers"), "{what}");
            assert_eq!((value, limit), (8, 7));
        }
        other => panic!("expected a Limit error, got {:?}", other.map(|_| ())),
    }
}

/// Refusals that come from the device's limits (a tensor over max_buffer_size; a row over one
/// storage binding) make no buffer and cost none of the layer's kept plans its place: every
/// shape it kept runs again without a buffer made.
#[test]
fn refusals_by_the_devices_limits_keep_the_layers_plans() {
    let limits = wgpu::Limits {
        max_buffer_size: 1 << 20,
        max_storage_buffer_binding_size: 1 << 18,
        ..GpuContext::required_limits()
    };
    let (device, queue) = common::caller_device(false, Some(limits));
    let ctx = GpuContext::from_device(device, queue).unwrap();
    let mut layer = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(4)).unwrap();
    let mut rng = Rng::new(9);
    // Eight shapes: as many as a layer keeps plans for.
    let xs: Vec<_> = (2..10).map(|n| rng.array(&[n, 4, 3], 0.0, 1.0)).collect();
    for x in &xs {
        layer
            .forward_array(x.view(), Layout::ChannelsFirst)
            .unwrap();
    }
    let before = ctx.buffers_created();

    // 1 MiB of values, and the channel records beside them in the staging buffer: the
    // refusal counts (and names) both.
    let big = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1 << 16, 4]));
    match layer.forward_array(big.view(), Layout::ChannelsFirst) {
        Err(BnError::Limit { what, value, limit }) => {
            assert!(what.starts_with("read-back bytes"), "{what}");
            assert_eq!((value, limit), ((1 << 20) + 4 * 16, 1 << 20));
        }
        other => panic!("expected a Limit error, got {:?}", other.map(|_| ())),
    }
    // A sample of 4 × 16385 values is over one binding, and so is the fewest channels a block
    // of it could take (64, where a plane's bytes are odd multiples of four), and an odd
    // plane has no slices at aligned offsets.
    let wide = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 4, 16385]));
    match layer.forward_array(wide.view(), Layout::ChannelsFirst) {
        Err(BnError::Limit { what, .. }) => assert!(what.contains("fewest channels"), "{what}"),
        other => panic!("expected a Limit error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        ctx.buffers_created(),
        before,
        "buffers made by refused calls"
    );

    for x in &xs {
        layer
            .forward_array(x.view(), Layout::ChannelsFirst)
            .unwrap();
    }
    assert_eq!(
        ctx.buffers_created(),
        before,
        "kept plans dropped by refused calls"
    );
}

/// A recording call refused after its shape's plan was made (here: x destroyed, which
/// only bind-group creation sees) drops that plan and evicts none of the eight kept ones:
/// the least recently used shape then records without making a buffer.
#[test]
fn a_refused_recording_keeps_the_plans() {
    let (device, queue) = common::caller_device(false, Some(wgpu::Limits::default()));
    let ctx = GpuContext::from_device(device.clone(), queue.clone()).unwrap();
    let layout = Layout::ChannelsFirst;
    let mut layer = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(3)).unwrap();
    let record = |layer: &mut GpuBatchNorm, rows: usize, x: &wgpu::Buffer| {
        let y = tensor_buffer(&device, &queue, &vec![0.0; rows * 3]);
        let dims = [rows, 3];
        let mut encoder = device.create_command_encoder(&Default::default());
        let result = layer.forward(
            &mut encoder,
            &GpuTensor::new(x, &dims, layout).unwrap(),
            &GpuTensor::new(&y, &dims, layout).unwrap(),
        );
        queue.submit([encoder.finish()]);
        result
    };
    for rows in 2..10 {
        let x = tensor_buffer(&device, &queue, &vec![1.0; rows * 3]);
        record(&mut layer, rows, &x).unwrap();
    }
    let gone = tensor_buffer(&device, &queue, &[2.0; 30]);
    gone.destroy();
    assert!(record(&mut layer, 10, &gone).is_err(), "destroyed x");
    assert_eq!(layer.num_batches_tracked(), Some(8));
    let x = tensor_buffer(&device, &queue, &[1.0; 6]);
    let before = ctx.buffers_created();
    record(&mut layer, 2, &x).unwrap();
    assert_eq!(
        ctx.buffers_created(),
        before,
        "the least recently used plan was evicted by the refused call"
    );
}

/// The single-read forward binds whole tensors where they lie: x and y at different nonzero
/// offsets of buffers with other values around them give the reference's y and running
/// statistics, and leave the values around y as they were (scalar, and four channels per
/// vec4 channels-last).
#[test]
fn the_single_read_forward_runs_at_offsets() {
    let ctx = common::gpu_caller_single_read();
    let (device, queue) = (ctx.device().clone(), ctx.queue().clone());
    let align = device.limits().min_storage_buffer_offset_alignment as usize / 4;
    let cases: [(&[usize], Layout); 2] = [
        (&[4, 6, 5, 3], Layout::ChannelsFirst),
        (&[4, 5, 6, 8], Layout::ChannelsLast),
    ];
    for (i, (dims, layout)) in cases.into_iter().enumerate() {
        let n: usize = dims.iter().product();
        let channels = match layout {
            Layout::ChannelsFirst => dims[1],
            Layout::ChannelsLast => dims[dims.len() - 1],
        };
        let mut rng = Rng::new(60 + i as u64);
        let x = rng.array(dims, 1.0, 2.0);
        // x one alignment in, y two, each with a run of 7s before and after.
        let mut x_words = vec![7.0f32; align];
        x_words.extend(x.iter());
        x_words.extend(vec![7.0f32; align]);
        let y_words = vec![7.0f32; 3 * align + n];
        let x_buf =
            common::storage_buffer(&device, &queue, x_words.len() as u64 * 4, Some(&x_words));
        let y_buf =
            common::storage_buffer(&device, &queue, y_words.len() as u64 * 4, Some(&y_words));
        let mut layer = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(channels)).unwrap();
        let mut encoder = device.create_command_encoder(&Default::default());
        layer
            .forward(
                &mut encoder,
                &GpuTensor::with_offset(&x_buf, 4 * align as u64, dims, layout).unwrap(),
                &GpuTensor::with_offset(&y_buf, 8 * align as u64, dims, layout).unwrap(),
            )
            .unwrap();
        queue.submit([encoder.finish()]);

        let mut cpu = BatchNorm::new(BatchNormConfig::new(channels), Device::Cpu).unwrap();
        let want = cpu.forward(x.view(), layout).unwrap().y;
        let got = read(&device, &queue, &y_buf, 0, y_words.len());
        let tag = format!("{dims:?} {layout:?}");
        let e = rel_l2(
            &got[2 * align..2 * align + n],
            want.iter().map(|&v| v as f64),
        );
        assert!(e <= 1e-5, "{tag}: y {e:.2e}");
        assert!(
            got[..2 * align]
                .iter()
                .chain(&got[2 * align + n..])
                .all(|&v| v == 7.0),
            "{tag}: values around y changed"
        );
        for (what, got, want) in [
            ("running_mean", layer.running_mean(), cpu.running_mean()),
            ("running_var", layer.running_var(), cpu.running_var()),
        ] {
            let want = want.unwrap();
            let e = rel_l2(&got.unwrap(), want.iter().map(|&v| v as f64));
            assert!(e <= 1e-5, "{tag}: {what} {e:.2e}");
        }
    }
}
