//! GPU kernels against the f64 CPU reference on random inputs: many shapes, ranks, both
//! layouts, training and eval, forward and backward.

mod common;

use common::check::{
    assert_no_mismatches, channels_of, compare, compare_by_channel, compare_channels, compare_dx,
    cross_check, cross_check_config, cross_check_input, flat, switch_configs, with_channel_levels,
    with_outliers_at_ends,
};
use common::{gpu, gpu_caller, Rng};
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, Device, Layout};

/// Every case on the default context, on one whose forward always takes two passes, on
/// caller devices (a GPU's tuning) with and without subgroup operations, and with them and
/// the single-read forward, and on a caller device tuned as a CPU rasterizer (so that its
/// pipelines run on a GPU machine too).
fn run_all(cases: &[(&[usize], Layout, f64, f64)]) {
    let mut errors = Vec::new();
    for (i, &(dims, layout, mean, std)) in cases.iter().enumerate() {
        for ctx in [
            gpu(),
            common::gpu_two_pass(),
            gpu_caller(true),
            gpu_caller(false),
            common::gpu_caller_single_read(),
            common::gpu_cpu_tuned(),
        ] {
            errors.extend(cross_check(ctx, dims, layout, 100 + i as u64, mean, std));
        }
    }
    assert_no_mismatches(&errors);
}

use Layout::{ChannelsFirst as CF, ChannelsLast as CL};

/// The comparisons themselves: a small channel's error must not hide behind channels of
/// large values, as it did in one L2 norm over all of them (a running mean of 0 where 21.5
/// was due, beside channels at c·1e4; a y off by one beta in one channel of many).
#[test]
fn per_channel_comparisons_catch_an_error_in_a_small_channel() {
    let want: Vec<f32> = (0..96).map(|c| 21.5 + c as f32 * 1e4).collect();
    let mut got = want.clone();
    got[0] = 0.0;
    let mut errors = Vec::new();
    compare(&mut errors, "L2 over all", &got, &want);
    assert!(errors.is_empty(), "one norm over all channels: {errors:?}");
    compare_channels(&mut errors, "running_mean", &got, &want, |_| 1.0);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("channel 0's"), "{errors:?}");

    let want = with_channel_levels(Rng::new(1).array(&[4, 96, 5], 0.0, 1.0), CF, 1e4);
    let mut got = want.clone();
    got.index_axis_mut(ndarray::Axis(1), 0)
        .mapv_inplace(|v| v + 1.0);
    let mut errors = Vec::new();
    compare(&mut errors, "y over all", &flat(&got), &flat(&want));
    assert!(errors.is_empty(), "one norm over all channels: {errors:?}");
    compare_by_channel(&mut errors, "y", &got, &want, CF);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("channel 0's"), "{errors:?}");
    // And what agrees passes.
    let mut errors = Vec::new();
    compare_by_channel(&mut errors, "y", &want, &want, CF);
    compare_channels(&mut errors, "mean", &flat(&want), &flat(&want), |_| 0.0);
    assert!(errors.is_empty(), "{errors:?}");
}

#[test]
fn odd_and_small_shapes_should_match_reference() {
    run_all(&[
        (&[3, 5, 7, 11], CF, 0.5, 2.0),
        (&[3, 7, 11, 5], CL, 0.5, 2.0),
        (&[6, 5], CF, -1.0, 3.0),
        (&[6, 5], CL, -1.0, 3.0),
        (&[4, 3, 9], CF, 0.0, 1.0),
        (&[4, 9, 3], CL, 0.0, 1.0),
        (&[2, 3, 4, 5, 6], CF, 1.0, 0.5),
        (&[2, 4, 5, 6, 3], CL, 1.0, 0.5),
        // Ranks 5 and 3 channels-last with C a multiple of four: four channels per vec4.
        (&[2, 3, 4, 5, 8], CL, 1.0, 0.5),
        (&[16, 9, 8], CL, 1.0, 0.5),
        // M = 2
        (&[2, 6], CF, 0.0, 1.0),
        (&[1, 4, 2], CF, 0.0, 1.0),
        (&[1, 2, 4], CL, 0.0, 1.0),
        // C = 1
        (&[64, 1, 33], CF, 3.0, 1.0),
        (&[64, 33, 1], CL, 3.0, 1.0),
        (&[500, 1], CF, 3.0, 1.0),
    ]);
}

/// Planes that do not divide by four with channel counts that do: the grouped reductions.
#[test]
fn grouped_planes_should_match_reference() {
    run_all(&[
        (&[16, 8, 7, 7], CF, 0.5, 2.0),
        (&[6, 8, 5, 5], CF, 0.5, 2.0),
        (&[5, 8, 3], CF, -1.0, 1.0),
        (&[3, 4, 255], CF, 0.0, 1.0),
        (&[2, 12, 2], CF, 0.0, 1.0),
        (&[16, 4, 7, 7], CF, 1e4, 1e-2),
        (&[4096, 4, 7, 7], CF, 1.0, 3.0),
    ]);
}

#[test]
fn wide_channel_counts_should_match_reference() {
    run_all(&[
        (&[4, 2048], CF, 0.0, 1.0),
        (&[3, 64], CF, 0.0, 1.0),
        (&[5, 3, 7, 48], CL, 0.5, 2.0),
        (&[2, 2048, 3, 3], CF, 0.0, 1.0),
        (&[2, 3, 3, 2048], CL, 0.0, 1.0),
        (&[8, 64, 56, 56], CF, 0.2, 1.5),
        (&[8, 56, 56, 64], CL, 0.2, 1.5),
    ]);
}

/// Mean 1e4 with std 1e-2: the one-pass E[x²]−E[x]² loses everything here in f32.
#[test]
fn large_mean_small_spread_should_match_reference() {
    run_all(&[
        (&[8, 3, 16, 16], CF, 1e4, 1e-2),
        (&[8, 16, 16, 3], CL, 1e4, 1e-2),
        (&[1000, 4], CF, -1e4, 1e-2),
        (&[8, 16, 16, 4], CL, 1e4, 1e-2),
        (&[64, 16, 16, 32], CL, 1e4, 1e-2),
        (&[1000, 16], CF, -1e4, 1e-2),
        (&[4, 8, 16, 16], CF, 1e4, 1e-2),
    ]);
}

/// Outliers as each channel's first and last value (borders, a sequence's first token) among
/// N(3, 1) (a mean away from 0, whose relative error would measure only f32's rounding of a
/// sum near 0). Shifted by one of them, as when the reductions shifted by a channel's first value
/// (or by the median of its first, middle and last), every value was rounded to 1e-3 and y
/// was off by 4e-5 relative, the mean by 1e-2. The channels lie 1e4 apart, so that a shift
/// sampled from another channel is seen too. Each shape takes another reduction: vec4
/// planes, channels-last vec4 (with a fold, and with lane records under the CPU tuning where
/// a workgroup has one lane per unit), scalar (C = 1), grouped 7×7 planes, rows split along
/// inner, and each single-read forward (tests/large.rs has chunks of rows).
#[test]
fn outliers_at_the_ends_should_match_reference() {
    let cases: [(&[usize], Layout); 9] = [
        (&[64, 1, 128, 128], CF),
        (&[1 << 18, 4], CL),
        (&[96, 1024], CL),
        (&[64, 128, 128, 1], CL),
        (&[5000, 4, 7, 7], CF),
        (&[2, 3, 4100], CF),
        // Channels whose values fit a workgroup: the single-read forward, vec4 along inner,
        // vec4 across channels, scalar.
        (&[16, 4, 32, 32], CF),
        (&[4096, 4], CL),
        (&[256, 3, 7, 7], CF),
    ];
    let mut errors = Vec::new();
    for (i, (dims, layout)) in cases.into_iter().enumerate() {
        for ctx in [
            gpu(),
            gpu_caller(true),
            gpu_caller(false),
            common::gpu_caller_single_read(),
            common::gpu_cpu_tuned(),
        ] {
            let mut rng = Rng::new(400 + i as u64);
            let x = with_channel_levels(rng.array(dims, 3.0, 1.0), layout, 1e4);
            let x = with_outliers_at_ends(x, layout, 1e4);
            errors.extend(cross_check_input(ctx, x, layout, &mut rng));
        }
    }
    assert_no_mismatches(&errors);
}

/// The single-read forward with several channels per workgroup, and a last workgroup that
/// holds fewer than the others (its writer lanes past the channels write nothing): vec4
/// along inner with four channels a workgroup, vec4 with eight and a last of four, scalar
/// with sixteen and a last of six, channels-last with two units and a last of one
/// (kernels.rs, single_read_tilings_with_several_channels, pins these tilings). Channels lie
/// 100 apart, so that a workgroup that normalized with another channel's statistics misses
/// by far more than the tolerance.
#[test]
fn single_read_with_several_channels_per_workgroup_should_match_reference() {
    let cases: [(&[usize], Layout); 4] = [
        (&[2, 256, 4, 4], CF),
        (&[2, 516, 4], CF),
        (&[2, 1030, 3], CF),
        (&[2, 3, 516], CL),
    ];
    let mut errors = Vec::new();
    for (i, (dims, layout)) in cases.into_iter().enumerate() {
        for ctx in [
            gpu(),
            common::gpu_caller_single_read(),
            common::gpu_caller_single_read_no_subgroups(),
        ] {
            let mut rng = Rng::new(700 + i as u64);
            let x = with_channel_levels(rng.array(dims, 0.0, 1.0), layout, 100.0);
            errors.extend(cross_check_input(ctx, x, layout, &mut rng));
        }
    }
    assert_no_mismatches(&errors);
}

/// Few rows, long planes: reductions also split each row along inner (so that a GPU gets
/// workgroups enough), and lanes read runs that a split's end cuts short.
#[test]
fn few_long_rows_should_match_reference() {
    run_all(&[
        (&[2, 1, 512, 512], CF, 0.5, 2.0),
        (&[2, 3, 4100], CF, -1.0, 1.0),
        (&[1, 2, 3, 30001], CF, 1e4, 1e-2),
        (&[3, 5, 6, 10], CF, 0.0, 1.0),
        (&[1, 1, 1 << 20], CF, 1.0, 0.5),
    ]);
}

/// Lanes that read several rows each, under the CPU tuning's runs (gpu_cpu_tuned): the run
/// cursor steps from a row's last run to the next row's first (prelude, next_run). 65×96×512
/// also cuts rows along inner into two ranges, leaves a last split of one row, and gives some
/// lanes no row at all.
#[test]
fn lanes_over_several_rows_should_match_reference() {
    run_all(&[(&[65, 96, 512], CF, 0.5, 2.0)]);
}

/// Channels-last 32×64×56×56: under a GPU's tuning (gpu_caller) its reduction makes 483
/// splits per channel, which stats_finalize and grad_finalize merge with 64 lanes each
/// (kernels::tests::merge_lanes_share_the_splits); a CPU rasterizer's tuning makes 32.
#[test]
fn hundreds_of_splits_per_channel_should_match_reference() {
    run_all(&[(&[32, 56, 56, 64], CL, 0.5, 2.0)]);
}

/// M ≥ 2^20 values per channel.
#[test]
fn over_a_million_values_per_channel_should_match_reference() {
    run_all(&[
        (&[16, 2, 256, 256], CF, 1.0, 2.0),
        (&[16, 256, 256, 2], CL, 1.0, 2.0),
        (&[1 << 20, 1], CF, -2.0, 0.5),
        (&[1 << 20, 4], CF, -2.0, 0.5),
    ]);
}

/// Values near 1e19 whose variance still fits f32 (its M2 is 2.4e38) stay finite. Written when
/// the reductions shifted by a channel's first value (0 here): a lane's first pair then lay
/// 1.9e19 from the shift, whose square overflows, times the lane's count so far, 0, which
/// Chan's merges must make 0, not 0·inf = NaN. Since the shift is the median of three values
/// (prelude, shift_samples), no pair can lie 1.845e19 from it unless M2 itself overflows (the
/// two sampled values on the other side add at least that distance squared), so this now
/// guards the end-to-end result; the merges keep their order for lone values, which can.
#[test]
fn huge_values_whose_variance_fits_f32_stay_finite() {
    let (rows, channels) = (514, 4);
    let mut rng = Rng::new(29);
    let mut x = rng.array(&[rows, channels], 0.0, 1.0);
    for r in 0..rows {
        x[[r, 0]] = match r {
            0 => 0.0,
            1 | 257 => 1.9e19,
            _ => 1.267e19,
        };
    }
    let mut errors = Vec::new();
    let mut c = BatchNorm::new(BatchNormConfig::new(channels), Device::Cpu).unwrap();
    let want = c.forward(x.view(), CF).unwrap();
    let want_var = &want.stats.as_ref().unwrap().var;
    assert!(
        want_var[0].is_finite(),
        "the reference's variance: {}",
        want_var[0]
    );
    for (k, ctx) in [
        gpu(),
        gpu_caller(false),
        gpu_caller(true),
        common::gpu_cpu_tuned(),
    ]
    .into_iter()
    .enumerate()
    {
        let mut g = BatchNorm::new(BatchNormConfig::new(channels), Device::Gpu(ctx)).unwrap();
        let got = g.forward(x.view(), CF).unwrap();
        let tag = format!("context {k}");
        compare(
            &mut errors,
            &format!("{tag} y"),
            &flat(&got.y),
            &flat(&want.y),
        );
        // Channel by channel: channel 0's variance (4.7e35) would hide the others' in one
        // norm.
        let (running_var, want_running_var) = (g.running_var().unwrap(), c.running_var().unwrap());
        for channel in 0..channels {
            let at = channel..channel + 1;
            compare(
                &mut errors,
                &format!("{tag} var[{channel}]"),
                &got.stats.as_ref().unwrap().var[at.clone()],
                &want_var[at.clone()],
            );
            compare(
                &mut errors,
                &format!("{tag} running_var[{channel}]"),
                &running_var[at.clone()],
                &want_running_var[at],
            );
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

/// The cross-check must catch a wrong answer: a result off by 1e-3 in one element, and a
/// GPU layer whose eps differs from the reference's.
#[test]
fn cross_check_catches_wrong_results() {
    let mut rng = Rng::new(7);
    let x = rng.array(&[4, 3, 5, 5], 0.0, 1.0);
    let mut cpu = BatchNorm::new(BatchNormConfig::new(3), Device::Cpu).unwrap();
    let want = flat(&cpu.forward(x.view(), CF).unwrap().y);

    let mut perturbed = want.clone();
    let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt();
    perturbed[17] += 1e-3 * norm;
    let mut errors = Vec::new();
    compare(&mut errors, "perturbed", &perturbed, &want);
    assert_eq!(errors.len(), 1, "a perturbed result passed the comparison");

    let mut config = BatchNormConfig::new(3);
    config.eps = 1e-3;
    let mut wrong = BatchNorm::new(config, Device::Gpu(gpu())).unwrap();
    let got = flat(&wrong.forward(x.view(), CF).unwrap().y);
    let mut errors = Vec::new();
    compare(&mut errors, "wrong eps", &got, &want);
    assert_eq!(
        errors.len(),
        1,
        "a GPU result with the wrong eps passed the comparison"
    );

    let mut right = BatchNorm::new(BatchNormConfig::new(3), Device::Gpu(gpu())).unwrap();
    let got = flat(&right.forward(x.view(), CF).unwrap().y);
    let mut errors = Vec::new();
    compare(&mut errors, "right", &got, &want);
    assert!(errors.is_empty(), "{errors:?}");

    // The cancellation-aware dx measure still catches a dx that is off by 1e-3 of its norm.
    let mut dx = want.clone();
    dx[3] += 1e-3 * norm;
    let mut errors = Vec::new();
    compare_dx(&mut errors, "perturbed dx", &dx, &want, norm as f64);
    assert_eq!(errors.len(), 1, "a perturbed dx passed the comparison");
}

/// The subgroup reductions above must really run where the CI's adapters offer subgroups
/// (lavapipe's Vulkan driver does; its GL driver does not): under a GPU's tuning, on the
/// caller device made with them. Never on one made without them, nor under a CPU
/// rasterizer's tuning, which folds without them (Tuning::subgroups).
#[test]
fn subgroup_reductions_run_where_offered() {
    let ctx = gpu();
    let offered = ctx.device().features().contains(wgpu::Features::SUBGROUP);
    let info = ctx.adapter_info().expect("our own adapter").clone();
    if info.name.contains("llvmpipe") && info.backend == wgpu::Backend::Vulkan {
        assert!(offered, "lavapipe offers subgroups");
    }
    let rasterizer = info.device_type == wgpu::DeviceType::Cpu;
    assert_eq!(ctx.subgroups(), offered && !rasterizer, "{}", info.name);
    assert_eq!(gpu_caller(true).subgroups(), offered);
    assert!(!gpu_caller(false).subgroups());
    assert!(!common::gpu_cpu_tuned().subgroups());
}

/// The suite runs on a backend WGPU_BACKEND names, in any of the spellings wgpu reads
/// (.ci/run runs it on Vulkan, then on GL), not on another one wgpu fell back to: a GL run
/// that quietly took Vulkan would test nothing of GL. Where WGPU_BACKEND is unset, any
/// backend was asked for.
#[test]
fn the_suite_runs_on_the_backend_it_was_asked_for() {
    let info = gpu().adapter_info().expect("our own adapter").clone();
    if let Some(asked) = wgpu::Backends::from_env() {
        assert!(
            asked.contains(wgpu::Backends::from(info.backend)),
            "{} runs on {:?}, WGPU_BACKEND asked for {asked:?}",
            info.name,
            info.backend
        );
    }
}

/// In eval with running statistics dx = gamma·dy/sqrt(running_var + eps), which PyTorch forms
/// without reading x: a NaN or ±Inf in x reaches dgamma but not dx (through 0·(x − mean) it
/// would make dx NaN). Checked against that closed form on every element-wise kernel.
#[test]
fn eval_dx_does_not_read_x() {
    let cases: [(&[usize], Layout); 4] = [
        (&[4, 8, 7, 7], CF),   // vec4 over two channels
        (&[4, 8, 16, 16], CF), // vec4 of one channel
        (&[4, 7, 7, 8], CL),   // vec4 of four channels
        (&[3, 5, 7, 11], CF),  // one value per load
    ];
    for (dims, layout) in cases {
        let axis = layout.channel_axis(dims.len());
        let channels = dims[axis];
        let running_mean: Vec<f32> = (0..channels).map(|c| 0.3 * c as f32 - 1.0).collect();
        let running_var: Vec<f32> = (0..channels).map(|c| 0.5 + 0.25 * c as f32).collect();
        let gamma: Vec<f32> = (0..channels).map(|c| 1.0 + 0.5 * c as f32).collect();
        let mut x = Rng::new(13).array(dims, 0.5, 2.0);
        // NaN, +Inf and −Inf in channels 0, 1 and 2 of the last sample.
        let poison = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY];
        for (c, value) in poison.into_iter().enumerate() {
            let mut index = vec![0; dims.len()];
            index[0] = dims[0] - 1;
            index[axis] = c;
            x[index.as_slice()] = value;
        }
        let dy = Rng::new(14).array(dims, 0.0, 1.0);
        let mut devices: Vec<Device> = [
            gpu(),
            gpu_caller(true),
            gpu_caller(false),
            common::gpu_cpu_tuned(),
        ]
        .into_iter()
        .map(Device::Gpu)
        .collect();
        devices.push(Device::Cpu);
        for device in devices {
            let mut bn = BatchNorm::new(BatchNormConfig::new(channels), device).unwrap();
            bn.set_running_mean(&running_mean).unwrap();
            bn.set_running_var(&running_var).unwrap();
            bn.set_gamma(&gamma).unwrap();
            bn.eval();
            bn.forward(x.view(), layout).unwrap();
            let grads = bn.backward(x.view(), dy.view(), layout).unwrap();
            for (c, (dx, dy)) in grads
                .dx
                .axis_iter(ndarray::Axis(axis))
                .zip(dy.axis_iter(ndarray::Axis(axis)))
                .enumerate()
            {
                let g = gamma[c] as f64 / (running_var[c] as f64 + 1e-5).sqrt();
                for (&got, &d) in dx.iter().zip(dy.iter()) {
                    let want = g * d as f64;
                    assert!(
                        (got as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                        "{dims:?} {layout:?} channel {c}: dx {got}, want {want}"
                    );
                }
            }
            let dgamma = grads.dgamma.unwrap();
            for (c, g) in dgamma.iter().enumerate() {
                assert_eq!(
                    g.is_finite(),
                    c >= poison.len(),
                    "{dims:?}: dgamma {c} = {g}"
                );
            }
        }
    }
}

/// A NaN in one channel's input makes that channel's statistics, output, dx and dgamma NaN,
/// as in PyTorch, and leaves every other channel as the reference has it: no kernel may mix
/// channels, not even the grouped and channels-last ones whose vec4 span several.
#[test]
fn a_nan_stays_in_its_channel() {
    let cases: [(&[usize], Layout); 5] = [
        (&[4, 8, 7, 7], CF),   // grouped: four channels per run of vec4
        (&[4, 8, 16, 16], CF), // vec4 along inner
        (&[2, 8, 32, 32], CF), // vec4 along inner, in runs on CPU devices
        (&[4, 7, 7, 8], CL),   // four channels per vec4
        (&[3, 5, 7, 11], CF),  // one value per load
    ];
    for (dims, layout) in cases {
        let channels = dims[layout.channel_axis(dims.len())];
        let poisoned = 2;
        let mut x = Rng::new(11).array(dims, 0.5, 2.0);
        let mut index = vec![0; dims.len()];
        index[0] = dims[0] - 1;
        index[layout.channel_axis(dims.len())] = poisoned;
        x[index.as_slice()] = f32::NAN;
        for ctx in [
            gpu(),
            gpu_caller(true),
            gpu_caller(false),
            common::gpu_cpu_tuned(),
        ] {
            let mut gpu_layer =
                BatchNorm::new(BatchNormConfig::new(channels), Device::Gpu(ctx)).unwrap();
            let mut cpu = BatchNorm::new(BatchNormConfig::new(channels), Device::Cpu).unwrap();
            let got = gpu_layer.forward(x.view(), layout).unwrap();
            let want = cpu.forward(x.view(), layout).unwrap();
            let (got_stats, want_stats) = (got.stats.unwrap(), want.stats.unwrap());
            for c in 0..channels {
                let (g, w) = (got_stats.mean[c], want_stats.mean[c]);
                if c == poisoned {
                    assert!(
                        g.is_nan() && got_stats.var[c].is_nan(),
                        "{dims:?}: channel {c}"
                    );
                } else {
                    assert!(
                        (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                        "{dims:?}: {c}: {g} {w}"
                    );
                    let (g, w) = (got_stats.var[c], want_stats.var[c]);
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs(),
                        "{dims:?}: channel {c} var {g} {w}"
                    );
                }
            }
            // The running statistics too: NaN in the poisoned channel only.
            for (what, g, w) in [
                ("running_mean", gpu_layer.running_mean(), cpu.running_mean()),
                ("running_var", gpu_layer.running_var(), cpu.running_var()),
            ] {
                let (g, w) = (g.unwrap(), w.unwrap());
                for c in 0..channels {
                    if c == poisoned {
                        assert!(g[c].is_nan(), "{dims:?}: {what} {c}: {}", g[c]);
                    } else {
                        assert!(
                            (g[c] - w[c]).abs() <= 1e-5 * (1.0 + w[c].abs()),
                            "{dims:?}: {what} {c}: {} {}",
                            g[c],
                            w[c]
                        );
                    }
                }
            }
            let axis = layout.channel_axis(dims.len());
            let dy = Rng::new(12).array(dims, 0.0, 1.0);
            let grads = gpu_layer.backward(x.view(), dy.view(), layout).unwrap();
            let want_grads = cpu.backward(x.view(), dy.view(), layout).unwrap();
            // The poisoned channel is all NaN; every other matches the reference (dx within
            // 1e-4: a channel that met the NaN, or another's statistics, is off by far more).
            for (what, out, reference, tol) in [
                ("y", &got.y, &want.y, 1e-5),
                ("dx", &grads.dx, &want_grads.dx, 1e-4),
            ] {
                let lanes = out.axis_iter(ndarray::Axis(axis));
                let reference = reference.axis_iter(ndarray::Axis(axis));
                for (c, (lane, want_lane)) in lanes.zip(reference).enumerate() {
                    let nan = lane.iter().filter(|v| v.is_nan()).count();
                    let expected = if c == poisoned { lane.len() } else { 0 };
                    assert_eq!(
                        nan, expected,
                        "{dims:?} {layout:?}: NaNs in {what}, channel {c}"
                    );
                    if c != poisoned {
                        let e = common::rel_l2(lane.iter(), want_lane.iter().map(|&v| v as f64));
                        assert!(
                            e <= tol,
                            "{dims:?} {layout:?}: {what}, channel {c}: {e:.2e}"
                        );
                    }
                }
            }
            let dgamma = grads.dgamma.unwrap();
            let want_dgamma = want_grads.dgamma.unwrap();
            for (c, g) in dgamma.iter().enumerate() {
                assert_eq!(g.is_nan(), c == poisoned, "{dims:?} {layout:?}: dgamma {c}");
                if c != poisoned {
                    let w = want_dgamma[c];
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{dims:?} {layout:?}: dgamma {c}: {g} {w}"
                    );
                }
            }
        }
    }
}

/// Every switch (momentum None, affine and tracking off, a biased running variance, another
/// eps) on each kind of reduction (vec4 inner, vec4 channels, (N, C), grouped 7×7, scalar),
/// under a GPU's tuning (with and without subgroups, and with the single-read forward with
/// and without them) and a CPU rasterizer's, train, eval and train again: the default
/// configuration is what every other cross-check runs.
#[test]
fn every_switch_should_match_reference() {
    let cases: [(&[usize], Layout); 5] = [
        (&[6, 8, 12, 12], CF),
        (&[5, 6, 6, 8], CL),
        (&[64, 12], CF),
        (&[9, 8, 7, 7], CF),
        (&[7, 3, 5, 5], CF),
    ];
    let mut errors = Vec::new();
    for (i, (dims, layout)) in cases.into_iter().enumerate() {
        let channels = channels_of(dims, layout);
        for config in switch_configs(channels) {
            for ctx in [
                gpu(),
                gpu_caller(true),
                gpu_caller(false),
                common::gpu_caller_single_read(),
                common::gpu_caller_single_read_no_subgroups(),
                common::gpu_cpu_tuned(),
            ] {
                let mut rng = Rng::new(900 + i as u64);
                let x = rng.array(dims, 1.0, 2.0);
                errors.extend(cross_check_config(ctx, x, layout, &mut rng, &config));
            }
        }
    }
    assert_no_mismatches(&errors);
}
