//! Tensors past the device's limits: over one storage binding (run in chunks of rows), over
//! 65535 workgroups in a line, and channels with more than 2^24 values. The tensors over
//! 128 MiB are `#[ignore]`d (each takes a minute or so on lavapipe); `.ci/run` runs them.

mod common;

use std::sync::Arc;

use common::check::{
    assert_no_mismatches, channels_of, cross_check, cross_check_config, cross_check_input,
    switch_configs, with_channel_levels, with_outliers_at_ends,
};
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, BnError, Device, GpuContext, Layout};

use Layout::{ChannelsFirst as CF, ChannelsLast as CL};

/// A context on a device that binds at most `binding` bytes of storage at once, so that small
/// tensors take the chunked path that large ones take on real limits; with subgroups where
/// the adapter has them and `subgroups` is set.
fn small_binding_context(binding: u64, subgroups: bool) -> Arc<GpuContext> {
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: binding,
        ..wgpu::Limits::default()
    };
    let (device, queue) = common::caller_device(subgroups, Some(limits));
    let ctx = GpuContext::from_device(device, queue).unwrap();
    assert_eq!(ctx.limits().max_storage_buffer_binding_size, binding);
    ctx
}

/// The same, described as a CPU rasterizer whatever the adapter is: its reductions write
/// lane records (grouped planes, and channels-last rows of one lane per unit), whose record
/// offsets run on from chunk to chunk.
fn small_binding_cpu_tuned_context(binding: u64) -> Arc<GpuContext> {
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: binding,
        ..wgpu::Limits::default()
    };
    let (device, queue, info) = common::caller_adapter_device(false, Some(limits));
    let info = wgpu::AdapterInfo {
        device_type: wgpu::DeviceType::Cpu,
        ..info
    };
    GpuContext::from_adapter_device(device, queue, info).unwrap()
}

fn check_all(ctx: Arc<GpuContext>, cases: &[(&[usize], Layout, f64, f64)]) {
    let mut errors = Vec::new();
    for (i, &(dims, layout, mean, std)) in cases.iter().enumerate() {
        errors.extend(cross_check(
            ctx.clone(),
            dims,
            layout,
            300 + i as u64,
            mean,
            std,
        ));
    }
    assert_no_mismatches(&errors);
}

/// Every reduction and element-wise variant, cut into chunks of a 64 KiB binding, with and
/// without subgroup merges.
#[test]
fn chunked_bindings_should_match_reference() {
    for subgroups in [true, false] {
        chunked_bindings(small_binding_context(64 << 10, subgroups));
    }
    chunked_bindings(small_binding_cpu_tuned_context(64 << 10));
}

/// Outliers as each channel's first and last value, channels 1e4 apart, in chunks of rows (the
/// last one shorter): each chunk shifts by its own samples of the channel (prelude,
/// shift_samples), and stats_finalize merges them.
#[test]
fn chunked_outliers_at_the_ends_should_match_reference() {
    for ctx in [
        small_binding_context(64 << 10, true),
        small_binding_context(64 << 10, false),
        small_binding_cpu_tuned_context(64 << 10),
    ] {
        let mut errors = Vec::new();
        for (i, (dims, layout)) in [(&[41, 2, 64, 64][..], CF), (&[8190, 4][..], CL)]
            .into_iter()
            .enumerate()
        {
            let mut rng = common::Rng::new(320 + i as u64);
            let x = with_channel_levels(rng.array(dims, 3.0, 1.0), layout, 1e4);
            let x = with_outliers_at_ends(x, layout, 1e4);
            errors.extend(cross_check_input(ctx.clone(), x, layout, &mut rng));
        }
        assert_no_mismatches(&errors);
    }
}

/// Every switch of switch_configs on tensors cut into chunks (a 64 KiB binding), with the
/// GPU's tuning (with and without subgroups) and the CPU rasterizer's: momentum None's count
/// and the running statistics of an untracked layer go through the chunks' merge too.
#[test]
fn chunked_switches_should_match_reference() {
    let mut errors = Vec::new();
    for ctx in [
        small_binding_context(64 << 10, true),
        small_binding_context(64 << 10, false),
        small_binding_cpu_tuned_context(64 << 10),
    ] {
        for (i, (dims, layout)) in [
            (&[40, 8, 12, 12][..], CF),
            (&[300, 8, 7, 7][..], CF),
            (&[2100, 8][..], CL),
        ]
        .into_iter()
        .enumerate()
        {
            let channels = channels_of(dims, layout);
            for config in switch_configs(channels) {
                let mut rng = common::Rng::new(950 + i as u64);
                let x = rng.array(dims, 0.5, 2.0);
                errors.extend(cross_check_config(
                    ctx.clone(),
                    x,
                    layout,
                    &mut rng,
                    &config,
                ));
            }
        }
    }
    assert_no_mismatches(&errors);
}

fn chunked_bindings(ctx: Arc<GpuContext>) {
    check_all(
        ctx,
        &[
            (&[40, 8, 12, 12], CF, 0.5, 2.0),  // vec4 inner, 4.5 KiB rows
            (&[40, 12, 12, 8], CL, 0.5, 2.0),  // vec4 channels
            (&[300, 8, 7, 7], CF, 1e4, 1e-2),  // grouped, large mean
            (&[200, 3, 5, 11], CF, -1.0, 1.0), // scalar, 129 KiB: 3 chunks
            (&[200, 5, 9, 3], CL, -1.0, 1.0),  // scalar, channels last, 105 KiB: 2 chunks
            (&[20000, 3], CF, 2.0, 0.5),       // (N, C), many small rows
            (&[300, 8, 5, 5], CF, 0.5, 2.0),   // grouped, two positions per channel
            // (N, C) of 256 units, one lane per unit, over 3 chunks of 16 rows: a CPU
            // rasterizer's tuning wants two splits per chunk, the binding holds four records
            // per channel, so one per chunk.
            (&[48, 1024], CF, -1.0, 1.0),
            // 256 channels over 10 chunks of 64 rows: the splits that a GPU's tuning wants,
            // two per chunk, would make more records than the binding holds; one per chunk.
            (&[640, 256], CF, 0.5, 2.0),
        ],
    );
}

/// Chunks of one row each, whose rows the reductions also cut along inner: a 1 MiB binding
/// holds one 512×512 sample, and one row gives too few workgroups without inner splits.
#[test]
fn chunks_with_rows_cut_along_inner_should_match_reference() {
    for subgroups in [true, false] {
        check_all(
            small_binding_context(1 << 20, subgroups),
            &[
                (&[6, 1, 512, 512], CF, 0.5, 2.0),
                (&[5, 3, 200, 200], CF, -1.0, 1.0),
            ],
        );
    }
}

/// Samples bigger than one binding, run in blocks of channels (Geometry::row_blocks), and
/// planes bigger than one in slices: every reduction (vec4, grouped, scalar) and
/// element-wise variant (one channel per vec4, two, scalar), a last block shorter than the
/// others, one sample and several, under both tunings, with and without subgroup merges,
/// and every switch on one of them.
#[test]
fn rows_over_one_binding_run_in_blocks_of_channels_should_match_reference() {
    let small: &[(&[usize], Layout, f64, f64)] = &[
        (&[2, 40, 32, 32], CF, 0.5, 2.0),  // vec4, blocks of 16: 16, 16, 8
        (&[3, 384, 7, 7], CF, 1e4, 1e-2),  // grouped, blocks of 320: 320, 64
        (&[1, 350, 7, 7], CF, -1.0, 1.0),  // scalar (350 is not a multiple of 4)
        (&[2, 256, 130], CF, 0.5, 2.0),    // grouped, two channels per vec4 in the apply
        (&[2, 6, 64, 64], CF, -2.0, 0.5),  // 16 KiB planes: blocks of 4 and 2
        (&[2, 3, 64, 96], CF, 1.0, 3.0),   // 24 KiB planes: blocks of 2 and 1
        (&[2, 3, 128, 160], CF, 0.5, 2.0), // 80 KiB planes, each in 2 slices
        (&[1, 2, 96, 320], CF, 1e4, 1e-2), // 120 KiB planes in 2 slices, large mean
    ];
    let wide: &[(&[usize], Layout, f64, f64)] = &[
        (&[1, 100, 3001], CF, 0.5, 2.0),    // scalar over inner, blocks of 64
        (&[2, 20, 128, 128], CF, 3.0, 1.5), // vec4, 64 KiB planes: blocks of 16 and 4
    ];
    for subgroups in [true, false] {
        check_all(small_binding_context(64 << 10, subgroups), small);
        check_all(small_binding_context(1 << 20, subgroups), wide);
    }
    check_all(small_binding_cpu_tuned_context(64 << 10), small);
    check_all(small_binding_cpu_tuned_context(1 << 20), wide);

    let mut errors = Vec::new();
    for ctx in [
        small_binding_context(64 << 10, true),
        small_binding_context(64 << 10, false),
        small_binding_cpu_tuned_context(64 << 10),
    ] {
        for config in switch_configs(40) {
            let mut rng = common::Rng::new(970);
            let x = rng.array(&[2, 40, 32, 32], 0.5, 2.0);
            errors.extend(cross_check_config(ctx.clone(), x, CF, &mut rng, &config));
        }
    }
    assert_no_mismatches(&errors);
}

/// A sample that can be cut neither into blocks of channels nor into slices of a plane is
/// refused, naming the limit: planes of 129×129 values, each over 64 KiB, whose odd size
/// gives no slices at aligned offsets and makes a block take 64 channels.
#[test]
fn a_sample_over_one_binding_is_refused() {
    let ctx = small_binding_context(64 << 10, false);
    let mut bn = BatchNorm::new(BatchNormConfig::new(4), Device::Gpu(ctx)).unwrap();
    let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[2, 4, 129, 129]));
    match bn.forward(x.view(), CF) {
        Err(BnError::Limit { what, value, limit }) => {
            assert!(what.contains("fewest channels"), "{what}");
            assert_eq!(value, 64 * 129 * 129 * 4);
            assert_eq!(limit, 64 << 10);
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}

/// 1024 channels over 64 chunks of a 64 KiB binding: even one split per chunk makes 64
/// records per channel, 1 MiB of them, which no binding holds; refused before anything runs.
#[test]
fn partial_records_over_one_binding_are_refused() {
    let ctx = small_binding_context(64 << 10, false);
    let mut bn = BatchNorm::new(BatchNormConfig::new(1024), Device::Gpu(ctx)).unwrap();
    let before = bn.running_mean().unwrap();
    let x = ndarray::ArrayD::<f32>::ones(ndarray::IxDyn(&[1024, 1024]));
    match bn.forward(x.view(), CF) {
        Err(BnError::Limit { what, value, limit }) => {
            assert!(what.contains("partial records"), "{what}");
            assert!(value >= 1024 * 64 * 16, "{value}");
            assert_eq!(limit, 64 << 10);
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    assert_eq!(bn.running_mean().unwrap(), before);
    assert_eq!(bn.num_batches_tracked(), Some(0));
}

/// (N, C) with N·C > 65535·256: more workgroups than fit one dispatch dimension, were they
/// laid out in a line; and M > 2^24 values in one channel, where an f32 count would stop
/// counting.
#[test]
#[ignore = "tens of MB per tensor; run by .ci/run with --ignored"]
fn past_the_dispatch_and_f32_count_limits_should_match_reference() {
    check_all(
        common::gpu(),
        &[
            (&[40000, 512], CF, 0.5, 2.0),
            (&[(1 << 24) + 1001, 2], CF, 3.0, 1.5),
        ],
    );
}

/// A device of 16 workgroups per dimension, under a GPU's tuning and a CPU rasterizer's:
/// rows of more element-wise columns than x holds (scalar and vec4 planes), which wrap into
/// z; and many channels on planes for which a GPU's tuning would put many lanes along inner:
/// 600 on planes of 257 and 130 (256 lanes, one channel per workgroup, 600 workgroups along
/// y), and as many as the layer then takes, 1024, on planes of 65 (128 lanes, 512
/// workgroups). Refused as over the device's limits before the columns wrapped and the lanes
/// along inner were capped.
#[test]
fn few_workgroups_per_dimension_should_match_reference() {
    let limits = wgpu::Limits {
        max_compute_workgroups_per_dimension: 16,
        ..wgpu::Limits::default()
    };
    let (device, queue) = common::caller_device(false, Some(limits.clone()));
    let gpu_tuned = GpuContext::from_device(device, queue).unwrap();
    let (device, queue, info) = common::caller_adapter_device(false, Some(limits));
    let info = wgpu::AdapterInfo {
        device_type: wgpu::DeviceType::Cpu,
        ..info
    };
    let cpu_tuned = GpuContext::from_adapter_device(device, queue, info).unwrap();
    for ctx in [gpu_tuned, cpu_tuned] {
        assert_eq!(ctx.limits().max_compute_workgroups_per_dimension, 16);
        check_all(
            ctx,
            &[
                (&[2, 3, 4099], CF, 0.5, 2.0),
                (&[1, 8, 4096], CF, -1.0, 0.5),
                (&[3, 8, 4096], CF, 2.0, 1.0),
                (&[2, 600, 257], CF, 0.5, 2.0),
                (&[2, 600, 130], CF, 0.5, 2.0),
                (&[3, 1024, 65], CF, 0.5, 2.0),
                (&[4, 5, 3, 1000], CL, 0.5, 2.0),
            ],
        );
    }
}

/// Fewer merging lanes per channel than the splits ask for, where a device of 16 workgroups
/// per dimension could not give every channel as many (kernels.rs,
/// merge_lanes_give_way_to_few_workgroups: 1024 channels in three chunks of a 1 MiB binding,
/// 48 splits, 4 lanes instead of 8), with and without subgroups.
#[test]
fn merge_lanes_on_few_workgroups_should_match_reference() {
    let limits = wgpu::Limits {
        max_compute_workgroups_per_dimension: 16,
        max_storage_buffer_binding_size: 1 << 20,
        ..wgpu::Limits::default()
    };
    for subgroups in [true, false] {
        let (device, queue) = common::caller_device(subgroups, Some(limits.clone()));
        let ctx = GpuContext::from_device(device, queue).unwrap();
        check_all(ctx, &[(&[768, 1024], CF, 0.5, 2.0)]);
    }
}

/// The test context, or where its adapter binds `bytes` or more at once (a GPU's 2 GiB), a
/// context of the adapter's limits but a 128 MiB binding: either way `bytes` is over one.
fn binding_under(bytes: u64) -> Arc<GpuContext> {
    let mut ctx = common::gpu();
    if ctx.limits().max_storage_buffer_binding_size >= bytes {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 128 << 20,
            ..ctx.limits().clone()
        };
        let (device, queue) = common::caller_device(false, Some(limits));
        ctx = GpuContext::from_device(device, queue).unwrap();
    }
    assert!(bytes > ctx.limits().max_storage_buffer_binding_size);
    ctx
}

/// One 64×1024×1024 sample is 256 MiB, two of lavapipe's 128 MiB bindings: run in blocks of
/// channels; one 8192×8192 plane is 256 MiB too: run in two slices. On an adapter that binds
/// more at once, a context of a 128 MiB binding.
#[test]
#[ignore = "256 MiB tensors; run by .ci/run with --ignored"]
fn a_sample_over_the_binding_limit_should_match_reference() {
    let bytes = 64 * 1024 * 1024 * 4;
    let ctx = binding_under(bytes);
    check_all(
        ctx,
        &[
            (&[1, 64, 1024, 1024], CF, 0.5, 2.0),
            (&[1, 1, 8192, 8192], CF, -3.0, 0.5),
        ],
    );
}

/// 64×256×56×56 float32 is 205 MB: two chunks of rows at lavapipe's 128 MiB binding. On an
/// adapter that binds more at once (a GPU's 2 GiB or more), a context of its own limits but
/// a 128 MiB binding, so that the tensor is still chunked.
#[test]
#[ignore = "205 MB tensors; run by .ci/run with --ignored"]
fn resnet_sized_activation_over_the_binding_limit_should_match_reference() {
    let bytes = 64 * 256 * 56 * 56 * 4;
    let ctx = binding_under(bytes);
    check_all(
        ctx,
        &[
            (&[64, 256, 56, 56], CF, 0.5, 2.0),
            (&[64, 56, 56, 256], CL, 0.5, 2.0),
        ],
    );
}
