//! PyTorch semantics checked by hand on tiny tensors, on the GPU and the CPU reference.

mod common;

use ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, BnError, Device, Layout, RunningVar};

const CF: Layout = Layout::ChannelsFirst;

fn devices() -> [(&'static str, Device); 2] {
    [("gpu", Device::Gpu(common::gpu())), ("cpu", Device::Cpu)]
}

/// One channel holding `values`, as a (M, 1) BatchNorm1d input.
fn column(values: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(&[values.len(), 1]), values.to_vec()).unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 2e-6 * w.abs().max(1.0);
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}[{i}]: got {g}, expected {w}"
        );
    }
}

#[test]
fn momentum_updates_running_stats_with_unbiased_variance() {
    for (name, device) in devices() {
        let mut bn = BatchNorm::new(BatchNormConfig::new(1), device).unwrap();
        // Running statistics away from PyTorch's initial 0 and 1, so that each term of the
        // update shows.
        bn.set_running_mean(&[2.0]).unwrap();
        bn.set_running_var(&[3.0]).unwrap();
        let out = bn.forward(column(&[1., 2., 3., 4.]).view(), CF).unwrap();
        // mean 2.5, biased var 1.25 normalizes; unbiased 5/3 feeds running_var.
        let invstd = 1.0 / (1.25f64 + 1e-5).sqrt();
        let y: Vec<f32> = out.y.iter().copied().collect();
        assert_close(
            &format!("{name} y"),
            &y,
            &[-1.5 * invstd, -0.5 * invstd, 0.5 * invstd, 1.5 * invstd],
        );
        let stats = out.stats.unwrap();
        assert_close(&format!("{name} mean"), &stats.mean, &[2.5]);
        assert_close(&format!("{name} var"), &stats.var, &[1.25]);
        assert_close(&format!("{name} invstd"), &stats.invstd, &[invstd]);
        assert_close(
            &format!("{name} rm"),
            &bn.running_mean().unwrap(),
            &[0.9 * 2.0 + 0.1 * 2.5],
        );
        assert_close(
            &format!("{name} rv"),
            &bn.running_var().unwrap(),
            &[0.9 * 3.0 + 0.1 * 5.0 / 3.0],
        );
        assert_eq!(bn.num_batches_tracked(), Some(1), "{name}");
    }
}

#[test]
fn biased_running_variance_mode_uses_the_batch_variance() {
    for (name, device) in devices() {
        let mut config = BatchNormConfig::new(1);
        config.running_var = RunningVar::Biased;
        let mut bn = BatchNorm::new(config, device).unwrap();
        bn.forward(column(&[1., 2., 3., 4.]).view(), CF).unwrap();
        assert_close(
            &format!("{name} rv"),
            &bn.running_var().unwrap(),
            &[0.9 + 0.1 * 1.25],
        );
    }
}

#[test]
fn momentum_none_is_a_cumulative_average_over_three_steps() {
    for (name, device) in devices() {
        let mut config = BatchNormConfig::new(1);
        config.momentum = None;
        let mut bn = BatchNorm::new(config, device).unwrap();
        // Batch means 2.5, 5, 1; unbiased variances 5/3, 20/3, 4.
        let batches = [[1., 2., 3., 4.], [2., 4., 6., 8.], [0., 0., 0., 4.]];
        let expected = [
            (2.5, 5.0 / 3.0),
            (3.75, 25.0 / 6.0),
            (8.5 / 3.0, 37.0 / 9.0),
        ];
        for (step, (batch, (rm, rv))) in batches.iter().zip(expected).enumerate() {
            bn.forward(column(batch).view(), CF).unwrap();
            assert_close(
                &format!("{name} step {step} rm"),
                &bn.running_mean().unwrap(),
                &[rm],
            );
            assert_close(
                &format!("{name} step {step} rv"),
                &bn.running_var().unwrap(),
                &[rv],
            );
            assert_eq!(bn.num_batches_tracked(), Some(step as u64 + 1));
        }
    }
}

#[test]
fn eval_uses_running_stats_and_freezes_them() {
    for (name, device) in devices() {
        let mut bn = BatchNorm::new(BatchNormConfig::new(1), device).unwrap();
        bn.set_running_mean(&[1.0]).unwrap();
        bn.set_running_var(&[4.0]).unwrap();
        bn.set_gamma(&[2.0]).unwrap();
        bn.set_beta(&[0.5]).unwrap();
        bn.eval();
        let x = column(&[1., 3., 5.]);
        let out = bn.forward(x.view(), CF).unwrap();
        assert!(
            out.stats.is_none(),
            "{name}: eval reported batch statistics"
        );
        let s = 1.0 / (4.0f64 + 1e-5).sqrt();
        let y: Vec<f32> = out.y.iter().copied().collect();
        assert_close(
            &format!("{name} y"),
            &y,
            &[0.5, 2.0 * 2.0 * s + 0.5, 4.0 * 2.0 * s + 0.5],
        );
        let grads = bn
            .backward(x.view(), column(&[1., -2., 0.5]).view(), CF)
            .unwrap();
        let dx: Vec<f32> = grads.dx.iter().copied().collect();
        assert_close(&format!("{name} dx"), &dx, &[2.0 * s, -4.0 * s, 1.0 * s]);
        assert_close(
            &format!("{name} dgamma"),
            &grads.dgamma.unwrap(),
            &[(0.0 * 1.0 + 2.0 * -2.0 + 4.0 * 0.5) * s],
        );
        assert_close(&format!("{name} dbeta"), &grads.dbeta.unwrap(), &[-0.5]);
        assert_close(&format!("{name} rm"), &bn.running_mean().unwrap(), &[1.0]);
        assert_close(&format!("{name} rv"), &bn.running_var().unwrap(), &[4.0]);
        assert_eq!(bn.num_batches_tracked(), Some(0));
    }
}

#[test]
fn eval_without_tracked_stats_uses_batch_stats_and_full_backward() {
    for (name, device) in devices() {
        let mut config = BatchNormConfig::new(1);
        config.track_running_stats = false;
        // A tiny eps, so that Σdx·x̂ = Σdy·x̂·eps/(var + eps) is zero to f32 precision.
        config.eps = 1e-10;
        let mut bn = BatchNorm::new(config, device).unwrap();
        bn.eval();
        let x = column(&[1., 2., 3., 4.]);
        let out = bn.forward(x.view(), CF).unwrap();
        assert_close(&format!("{name} mean"), &out.stats.unwrap().mean, &[2.5]);
        // y by the batch statistics (biased variance 1.25), not the running ones it lacks.
        let invstd = 1.0 / (1.25f64 + 1e-10).sqrt();
        let y: Vec<f32> = out.y.iter().copied().collect();
        assert_close(
            &format!("{name} y"),
            &y,
            &[-1.5, -0.5, 0.5, 1.5].map(|d| d * invstd),
        );
        // Through the batch statistics, dx sums to zero and is orthogonal to x̂.
        let grads = bn
            .backward(x.view(), column(&[1., 0., 0., 0.]).view(), CF)
            .unwrap();
        let dx: Vec<f64> = grads.dx.iter().map(|&v| v as f64).collect();
        let xhat = [-1.5, -0.5, 0.5, 1.5];
        assert!(dx.iter().sum::<f64>().abs() < 1e-6, "{name}: Σdx = {dx:?}");
        let dot: f64 = dx.iter().zip(xhat).map(|(d, h)| d * h).sum();
        assert!(dot.abs() < 1e-6, "{name}: Σdx·x̂ = {dot}");
        // And in closed form: invstd·(dy − mean(dy) − x̂·mean(dy·x̂)), which is
        // (0.3, −0.4, −0.1, 0.2)·invstd here.
        let want = [0.3, -0.4, -0.1, 0.2].map(|k| k * invstd);
        let got: Vec<f32> = grads.dx.iter().copied().collect();
        assert_close(&format!("{name} dx"), &got, &want);
        assert_eq!(bn.num_batches_tracked(), None);
    }
}

#[test]
fn affine_off_has_no_parameter_gradients() {
    for (name, device) in devices() {
        let mut config = BatchNormConfig::new(2);
        config.affine = false;
        let mut bn = BatchNorm::new(config, device).unwrap();
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1., 10., 3., 30.]).unwrap();
        let out = bn.forward(x.view(), CF).unwrap();
        let y: Vec<f32> = out.y.iter().copied().collect();
        let s = 1.0 / (1.0f64 + 1e-5).sqrt();
        let s2 = 1.0 / (100.0f64 + 1e-5).sqrt();
        assert_close(&format!("{name} y"), &y, &[-s, -10.0 * s2, s, 10.0 * s2]);
        let grads = bn.backward(x.view(), x.view(), CF).unwrap();
        assert!(grads.dgamma.is_none() && grads.dbeta.is_none(), "{name}");
    }
}

#[test]
fn one_value_per_channel_is_an_error_when_batch_stats_are_used() {
    for (name, device) in devices() {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1., 2., 3.]).unwrap();
        let mut bn = BatchNorm::new(BatchNormConfig::new(3), device.clone()).unwrap();
        let err = bn.forward(x.view(), CF).unwrap_err();
        assert!(
            matches!(err, BnError::SingleValuePerChannel { .. }),
            "{name}: {err}"
        );
        assert!(err
            .to_string()
            .contains("expected more than 1 value per channel when training"));
        let x4 = x
            .clone()
            .into_shape_with_order(IxDyn(&[1, 3, 1, 1]))
            .unwrap();
        assert!(bn.forward(x4.view(), CF).is_err(), "{name}: (1,3,1,1)");
        assert_eq!(
            bn.num_batches_tracked(),
            Some(0),
            "{name}: a refused step counted"
        );

        // Eval with running statistics needs no batch statistics.
        bn.eval();
        assert!(bn.forward(x.view(), CF).is_ok(), "{name}");

        let mut config = BatchNormConfig::new(3);
        config.track_running_stats = false;
        let mut untracked = BatchNorm::new(config, device).unwrap();
        untracked.eval();
        assert!(
            untracked.forward(x.view(), CF).is_err(),
            "{name}: untracked eval"
        );
    }
}

/// A channel whose sum of squared deviations passes f32::MAX (here 2e40) has an infinite
/// variance in PyTorch, which keeps that sum in f32 (aten's _var_sum): invstd is 0, y is
/// beta, running_var infinite. The f64 reference must not report a finite variance there.
#[test]
fn a_variance_past_f32_gives_invstd_zero_and_y_beta_as_in_pytorch() {
    for (name, device) in devices() {
        let mut bn = BatchNorm::new(BatchNormConfig::new(1), device).unwrap();
        bn.set_beta(&[0.25]).unwrap();
        let out = bn
            .forward(column(&[1e20, -1e20]).view(), Layout::ChannelsFirst)
            .unwrap();
        let stats = out.stats.unwrap();
        assert_eq!(stats.var, [f32::INFINITY], "{name}: var");
        assert_eq!(stats.invstd, [0.0], "{name}: invstd");
        assert_eq!(out.y.as_slice().unwrap(), [0.25, 0.25], "{name}: y");
        assert_eq!(
            bn.running_var().unwrap(),
            [f32::INFINITY],
            "{name}: running_var"
        );
    }
}

#[test]
fn bad_configs_and_shapes_are_refused() {
    for (name, device) in devices() {
        for (eps, momentum) in [
            (0.0, Some(0.1)),
            (f32::NAN, Some(0.1)),
            // Subnormal: a GPU that flushes it to 0 would give a constant channel NaN.
            (1e-40, Some(0.1)),
            (1e-5, Some(1.5)),
            (1e-5, Some(f32::NAN)),
        ] {
            let mut config = BatchNormConfig::new(2);
            config.eps = eps;
            config.momentum = momentum;
            assert!(
                matches!(
                    BatchNorm::new(config, device.clone()),
                    Err(BnError::Config { .. })
                ),
                "{name}: eps {eps} momentum {momentum:?} accepted"
            );
        }
        // Channel counts are u32 in the kernels: more is refused before anything is allocated.
        for features in [u32::MAX as usize + 1, 1 << 62, usize::MAX] {
            assert!(
                matches!(
                    BatchNorm::new(BatchNormConfig::new(features), device.clone()),
                    Err(BnError::Limit {
                        what: "num_features",
                        ..
                    })
                ),
                "{name}: {features} features accepted"
            );
        }
        let mut bn = BatchNorm::new(BatchNormConfig::new(2), device).unwrap();
        let x = ArrayD::<f32>::zeros(IxDyn(&[4, 3]));
        assert!(matches!(
            bn.forward(x.view(), CF),
            Err(BnError::Channels { .. })
        ));
        // Two channels read in the wrong layout: the error says where it looked.
        let x = ArrayD::<f32>::zeros(IxDyn(&[4, 2, 3]));
        let e = bn.forward(x.view(), Layout::ChannelsLast).unwrap_err();
        assert!(
            e.to_string().ends_with(
                "got 3 in shape [4, 2, 3], read as ChannelsLast (channels at index 2 of the shape)"
            ),
            "{e}"
        );
        let x = ArrayD::<f32>::zeros(IxDyn(&[4]));
        assert!(matches!(
            bn.forward(x.view(), CF),
            Err(BnError::Rank { rank: 1 })
        ));
        assert!(matches!(
            bn.set_gamma(&[1.0; 3]),
            Err(BnError::Length { .. })
        ));
        let x = ArrayD::<f32>::zeros(IxDyn(&[4, 2]));
        let dy = ArrayD::<f32>::zeros(IxDyn(&[2, 2]));
        bn.forward(x.view(), CF).unwrap();
        assert!(matches!(
            bn.backward(x.view(), dy.view(), CF),
            Err(BnError::ShapeMismatch { .. })
        ));
        let other = ArrayD::<f32>::zeros(IxDyn(&[6, 2]));
        assert!(matches!(
            bn.backward(other.view(), other.view(), CF),
            Err(BnError::NoSavedStatistics { .. })
        ));
    }
}

#[test]
fn batch_counter_stays_within_its_u32_range_on_both_devices() {
    for (name, device) in devices() {
        let mut bn = BatchNorm::new(BatchNormConfig::new(1), device).unwrap();
        assert!(
            bn.set_num_batches_tracked(u32::MAX as u64 + 1).is_err(),
            "{name}"
        );
        bn.set_num_batches_tracked(u32::MAX as u64 - 1).unwrap();
        let x = column(&[1., 2., 3., 4.]);
        bn.forward(x.view(), CF).unwrap();
        assert_eq!(bn.num_batches_tracked(), Some(u32::MAX as u64), "{name}");
        let err = bn.forward(x.view(), CF).unwrap_err();
        // The message names the count the step would make, not one the caller gave.
        assert!(
            matches!(
                err,
                BnError::Limit {
                    what: "num_batches_tracked after this training step",
                    value: 4_294_967_296,
                    limit: 4_294_967_295,
                }
            ),
            "{name}: {err}"
        );
        assert_eq!(bn.num_batches_tracked(), Some(u32::MAX as u64), "{name}");
    }
}

/// As PyTorch's `weight` and `bias` are None when not affine: reading or setting them is an
/// error, not a value that does nothing.
#[test]
fn a_layer_without_affine_has_no_gamma_or_beta() {
    for (name, device) in devices() {
        let mut config = BatchNormConfig::new(2);
        config.affine = false;
        let mut bn = BatchNorm::new(config, device).unwrap();
        let not_affine = |r: Result<_, BnError>| matches!(r, Err(BnError::NotAffine { .. }));
        assert!(not_affine(bn.set_gamma(&[2.0, 2.0])), "{name}");
        assert!(not_affine(bn.set_beta(&[1.0, 1.0])), "{name}");
        assert!(not_affine(bn.gamma().map(drop)), "{name}");
        assert!(not_affine(bn.beta().map(drop)), "{name}");
        // Running statistics are no parameters: still there.
        bn.set_running_mean(&[1.0, 1.0]).unwrap();
        assert_eq!(bn.running_mean().unwrap(), [1.0, 1.0], "{name}");
    }
}

/// As PyTorch's `running_mean`, `running_var` and `num_batches_tracked` are None when
/// track_running_stats is off: reading or setting them is an error (setting one did nothing
/// before), and the count is None. A training step leaves that so.
#[test]
fn a_layer_without_tracking_has_no_running_statistics() {
    for (name, device) in devices() {
        let mut config = BatchNormConfig::new(1);
        config.track_running_stats = false;
        let mut bn = BatchNorm::new(config, device).unwrap();
        bn.forward(column(&[1., 2., 3.]).view(), CF).unwrap();
        let not_tracked = |r: Result<_, BnError>| matches!(r, Err(BnError::NotTracked { .. }));
        assert!(not_tracked(bn.running_mean().map(drop)), "{name}");
        assert!(not_tracked(bn.running_var().map(drop)), "{name}");
        assert!(not_tracked(bn.set_running_mean(&[5.0])), "{name}");
        assert!(not_tracked(bn.set_running_var(&[5.0])), "{name}");
        assert!(not_tracked(bn.set_num_batches_tracked(3)), "{name}");
        assert_eq!(bn.num_batches_tracked(), None, "{name}");
        // Parameters are still there.
        assert_eq!(bn.gamma().unwrap(), [1.0], "{name}");
    }
}

/// PyTorch's empty batch: y (and dx) empty, no batch statistics, the running statistics
/// untouched, a training step counted all the same (so momentum None weighs the next batch
/// by 1/(count + 1)), dgamma and dbeta zero; in eval nothing is counted. A batch of one
/// value per channel is still refused: the check is for exactly one, as PyTorch's.
#[test]
fn an_empty_batch_is_counted_and_changes_nothing_else() {
    for (name, device) in devices() {
        let mut config = BatchNormConfig::new(2);
        config.momentum = None;
        config.eps = 1e-10;
        let mut bn = BatchNorm::new(config, device).unwrap();
        let rows =
            |v: &[f32]| ArrayD::from_shape_vec(IxDyn(&[v.len() / 2, 2]), v.to_vec()).unwrap();
        // One batch: the running statistics become its own (factor 1/1).
        let x = rows(&[0., 10., 2., 20.]);
        bn.forward(x.view(), CF).unwrap();
        let g = bn
            .backward(x.view(), rows(&[1., 0., 0., 1.]).view(), CF)
            .unwrap();
        assert_close(&format!("{name} dgamma"), &g.dgamma.unwrap(), &[-1.0, 1.0]);

        for dims in [vec![0, 2], vec![0, 2, 5], vec![3, 2, 0], vec![1, 2, 0, 4]] {
            let x = ArrayD::<f32>::zeros(IxDyn(&dims));
            let out = bn.forward(x.view(), CF).unwrap();
            assert_eq!(out.y.shape(), &dims[..], "{name}");
            assert!(out.stats.is_none(), "{name} {dims:?}");
            let g = bn.backward(x.view(), x.view(), CF).unwrap();
            assert_eq!(g.dx.shape(), &dims[..], "{name}");
            assert_eq!(g.dgamma, Some(vec![0.0; 2]), "{name} {dims:?}");
            assert_eq!(g.dbeta, Some(vec![0.0; 2]), "{name} {dims:?}");
        }
        assert_eq!(bn.num_batches_tracked(), Some(5), "{name}");
        assert_close(
            &format!("{name} rm"),
            &bn.running_mean().unwrap(),
            &[1.0, 15.0],
        );
        assert_close(
            &format!("{name} rv"),
            &bn.running_var().unwrap(),
            &[2.0, 50.0],
        );

        // The sixth batch: mean (5, 20), unbiased var (2, 800), factor 1/6.
        bn.forward(rows(&[4., 0., 6., 40.]).view(), CF).unwrap();
        let rm = [1.0 + 4.0 / 6.0, 15.0 + 5.0 / 6.0];
        assert_close(
            &format!("{name} rm after"),
            &bn.running_mean().unwrap(),
            &rm,
        );
        let rv = [2.0, 50.0 + 750.0 / 6.0];
        assert_close(&format!("{name} rv after"), &bn.running_var().unwrap(), &rv);

        bn.eval();
        bn.forward(ArrayD::<f32>::zeros(IxDyn(&[0, 2])).view(), CF)
            .unwrap();
        assert_eq!(bn.num_batches_tracked(), Some(6), "{name}: eval counted");
        bn.train();
        let one = ArrayD::<f32>::zeros(IxDyn(&[1, 2, 1]));
        assert!(
            matches!(
                bn.forward(one.view(), CF),
                Err(BnError::SingleValuePerChannel { .. })
            ),
            "{name}"
        );
    }
}

/// reset_running_stats and reset_parameters do what PyTorch's do: after them a layer with
/// momentum None starts its cumulative average again, so the next training batch's mean and
/// unbiased variance become the running statistics exactly; reset_running_stats leaves gamma
/// and beta alone, and does nothing (and fails nothing) on a layer that tracks nothing.
#[test]
fn resets_start_the_running_statistics_and_parameters_again() {
    let values = [1.0f32, 2.0, 4.0, 9.0];
    let mean = 4.0f64;
    let unbiased = (9.0 + 4.0 + 0.0 + 25.0) / 3.0;
    for (name, device) in devices() {
        let mut config = BatchNormConfig::new(1);
        config.momentum = None;
        let mut layer = BatchNorm::new(config.clone(), device.clone()).unwrap();
        layer.set_gamma(&[3.0]).unwrap();
        layer.set_beta(&[-2.0]).unwrap();
        for k in 0..3 {
            let x = column(&[k as f32, 10.0, -5.0 * k as f32]);
            layer.forward(x.view(), CF).unwrap();
        }

        layer.reset_running_stats().unwrap();
        assert_eq!(layer.num_batches_tracked(), Some(0), "{name}");
        assert_eq!(layer.running_mean().unwrap(), vec![0.0], "{name}");
        assert_eq!(layer.running_var().unwrap(), vec![1.0], "{name}");
        assert_eq!(layer.gamma().unwrap(), vec![3.0], "{name}: gamma kept");
        assert_eq!(layer.beta().unwrap(), vec![-2.0], "{name}: beta kept");

        layer.forward(column(&values).view(), CF).unwrap();
        assert_eq!(layer.num_batches_tracked(), Some(1), "{name}");
        assert_close(
            &format!("{name} running_mean"),
            &layer.running_mean().unwrap(),
            &[mean],
        );
        assert_close(
            &format!("{name} running_var"),
            &layer.running_var().unwrap(),
            &[unbiased],
        );

        layer.reset_parameters().unwrap();
        assert_eq!(layer.gamma().unwrap(), vec![1.0], "{name}");
        assert_eq!(layer.beta().unwrap(), vec![0.0], "{name}");
        assert_eq!(layer.running_mean().unwrap(), vec![0.0], "{name}");
        assert_eq!(layer.running_var().unwrap(), vec![1.0], "{name}");
        assert_eq!(layer.num_batches_tracked(), Some(0), "{name}");

        config.track_running_stats = false;
        config.affine = false;
        let mut bare = BatchNorm::new(config, device).unwrap();
        bare.reset_parameters().unwrap();
        assert!(bare.running_mean().is_err(), "{name}");
        assert_eq!(bare.num_batches_tracked(), None, "{name}");
    }
}

/// `steps` on a GPU and a CPU layer of 100 channels with momentum None, given batches a and b
/// of (6, 100) and an empty one: both must count `count` batches and hold the same running
/// statistics.
fn wide_layers_agree(seed: u64, count: u64, steps: impl Fn(&mut BatchNorm, [&ArrayD<f32>; 3])) {
    let channels = 100;
    let mut config = BatchNormConfig::new(channels);
    config.momentum = None;
    let mut rng = common::Rng::new(seed);
    let (a, b) = (
        rng.array(&[6, channels], 1.0, 2.0),
        rng.array(&[6, channels], -3.0, 0.5),
    );
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, channels]));
    let mut results = Vec::new();
    for device in [Device::Gpu(common::gpu()), Device::Cpu] {
        let mut bn = BatchNorm::new(config.clone(), device).unwrap();
        steps(&mut bn, [&a, &b, &empty]);
        assert_eq!(bn.num_batches_tracked(), Some(count));
        results.push((bn.running_mean().unwrap(), bn.running_var().unwrap()));
    }
    let (gpu, cpu) = (&results[0], &results[1]);
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    assert_close("running_mean", &gpu.0, &wide(&cpu.0));
    assert_close("running_var", &gpu.1, &wide(&cpu.1));
}

/// An empty batch is counted for every channel of a wide layer, not only the first
/// workgroup's (the GPU counts in count_batch.wgsl, 64 channels per workgroup): with momentum
/// None the batch after it is weighed 1/3 on all 100 channels, as on the CPU reference.
#[test]
fn an_empty_batch_is_counted_for_every_channel_of_a_wide_layer() {
    wide_layers_agree(77, 3, |bn, [a, b, empty]| {
        for x in [a, empty, b] {
            bn.forward(x.view(), CF).unwrap();
        }
    });
}

/// A count set (or reset) and then an empty batch: the empty batch counts on top of the set
/// count, on the GPU as on the CPU (the set count's copy is recorded before count_batch's
/// increment), so with momentum None the batch after it is weighed 1/7 after a count of 5,
/// and 1/2 after a reset.
#[test]
fn an_empty_batch_counts_on_top_of_a_set_count() {
    for (reset, count) in [(false, 7), (true, 2)] {
        wide_layers_agree(78, count, |bn, [a, b, empty]| {
            bn.forward(a.view(), CF).unwrap();
            if reset {
                bn.reset_running_stats().unwrap();
            } else {
                bn.set_num_batches_tracked(5).unwrap();
            }
            bn.forward(empty.view(), CF).unwrap();
            bn.forward(b.view(), CF).unwrap();
        });
    }
}
