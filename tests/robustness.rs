//! Non-finite inputs and a lost device: results or errors as documented, never a panic.

mod common;

use ndarray::{ArrayD, IxDyn};
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, BnError, Device, GpuContext, Layout};

/// A NaN or an infinity in one channel makes that channel's y and statistics non-finite, as
/// in PyTorch, and leaves the other channels exactly as they would be.
#[test]
fn non_finite_values_stay_in_their_channel() {
    let devices = [("gpu", Device::Gpu(common::gpu())), ("cpu", Device::Cpu)];
    for (name, device) in devices {
        for bad in [f32::NAN, f32::INFINITY] {
            let mut rng = common::Rng::new(9);
            let mut x = rng.array(&[4, 3, 5], 0.0, 1.0);
            x[[2, 1, 3]] = bad;
            let mut clean = x.clone();
            clean[[2, 1, 3]] = 0.0;
            let mut bn = BatchNorm::new(BatchNormConfig::new(3), device.clone()).unwrap();
            let mut reference = BatchNorm::new(BatchNormConfig::new(3), Device::Cpu).unwrap();
            let out = bn.forward(x.view(), Layout::ChannelsFirst).unwrap();
            let want = reference
                .forward(clean.view(), Layout::ChannelsFirst)
                .unwrap();
            for ((idx, &y), &w) in out.y.indexed_iter().zip(want.y.iter()) {
                if idx[1] == 1 {
                    assert!(y.is_nan(), "{name} {bad}: y{idx:?} = {y}");
                } else {
                    assert!(
                        (y - w).abs() <= 1e-5 * w.abs().max(1.0),
                        "{name} {bad}: y{idx:?}"
                    );
                }
            }
            let close = |what: &str, got: f32, want: f32| {
                assert!(
                    (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{name} {bad}: {what} {got} against {want}"
                );
            };
            let stats = out.stats.unwrap();
            let want_stats = want.stats.unwrap();
            assert!(
                stats.var[1].is_nan() && !stats.mean[1].is_finite(),
                "{name} {bad}"
            );
            let running_var = bn.running_var().unwrap();
            let want_running_var = reference.running_var().unwrap();
            let running_mean = bn.running_mean().unwrap();
            let want_running_mean = reference.running_mean().unwrap();
            // NaN, or (an Inf on the CPU) ±Inf: README, Limits.
            assert!(running_var[1].is_nan(), "{name} {bad}");
            assert!(
                !running_mean[1].is_finite(),
                "{name} {bad}: {running_mean:?}"
            );
            for c in [0, 2] {
                close("mean", stats.mean[c], want_stats.mean[c]);
                close("var", stats.var[c], want_stats.var[c]);
                close("running_mean", running_mean[c], want_running_mean[c]);
                close("running_var", running_var[c], want_running_var[c]);
            }
            let dy = rng.array(&[4, 3, 5], 0.0, 1.0);
            let grads = bn
                .backward(x.view(), dy.view(), Layout::ChannelsFirst)
                .unwrap();
            let want_grads = reference
                .backward(clean.view(), dy.view(), Layout::ChannelsFirst)
                .unwrap();
            let (dgamma, dbeta) = (grads.dgamma.unwrap(), grads.dbeta.unwrap());
            assert!(dgamma[1].is_nan(), "{name} {bad}");
            for c in [0, 2] {
                close("dgamma", dgamma[c], want_grads.dgamma.as_ref().unwrap()[c]);
                close("dbeta", dbeta[c], want_grads.dbeta.as_ref().unwrap()[c]);
            }
            for ((idx, &d), &w) in grads.dx.indexed_iter().zip(want_grads.dx.iter()) {
                if idx[1] == 1 {
                    assert!(d.is_nan(), "{name} {bad}: dx{idx:?} = {d}");
                } else {
                    close(&format!("dx{idx:?}"), d, w);
                }
            }
        }
    }
}

/// A constant channel and one with a spread of 1e-14, under the smallest normal eps PyTorch's
/// rules leave (1e-30): invstd reaches 1e15, and gamma·invstd³ passes f32's range, so the
/// backward must scale the means by invstd² before it multiplies by gamma·invstd, as PyTorch
/// does; formed the other way the constant channel's dx was 0·inf = NaN and the narrow
/// one's ±inf. dx and dgamma must match the f64 reference, and the constant channel's dx is
/// gamma·invstd·(dy − mean(dy)) in closed form.
#[test]
fn tiny_variance_under_tiny_eps_gives_finite_gradients() {
    let mut rng = common::Rng::new(31);
    let mut x = rng.array(&[16, 3, 9], 0.0, 1.0);
    x.index_axis_mut(ndarray::Axis(1), 0).fill(3.0);
    x.index_axis_mut(ndarray::Axis(1), 1)
        .mapv_inplace(|v| v * 1e-14);
    let dy = rng.array(&[16, 3, 9], 0.0, 1.0);
    let mut config = BatchNormConfig::new(3);
    config.eps = 1e-30;
    let mut reference = BatchNorm::new(config.clone(), Device::Cpu).unwrap();
    reference.forward(x.view(), Layout::ChannelsFirst).unwrap();
    let want = reference
        .backward(x.view(), dy.view(), Layout::ChannelsFirst)
        .unwrap();
    let invstd = 1.0 / (1e-30f64).sqrt();
    let dy0 = dy.index_axis(ndarray::Axis(1), 0);
    let mean_dy0 = dy0.iter().map(|&v| v as f64).sum::<f64>() / dy0.len() as f64;
    let closed: Vec<f32> = dy0
        .iter()
        .map(|&v| (invstd * (v as f64 - mean_dy0)) as f32)
        .collect();
    let want0: Vec<f32> = want
        .dx
        .index_axis(ndarray::Axis(1), 0)
        .iter()
        .copied()
        .collect();
    assert!(common::rel_l2(&want0, closed.iter().map(|&v| v as f64)) < 1e-6);
    for ctx in [
        common::gpu(),
        common::gpu_caller(true),
        common::gpu_caller(false),
        common::gpu_cpu_tuned(),
    ] {
        let mut bn = BatchNorm::new(config.clone(), Device::Gpu(ctx)).unwrap();
        bn.forward(x.view(), Layout::ChannelsFirst).unwrap();
        let got = bn
            .backward(x.view(), dy.view(), Layout::ChannelsFirst)
            .unwrap();
        for c in 0..3 {
            let got_c: Vec<f32> = got
                .dx
                .index_axis(ndarray::Axis(1), c)
                .iter()
                .copied()
                .collect();
            let want_c = want.dx.index_axis(ndarray::Axis(1), c);
            let e = common::rel_l2(&got_c, want_c.iter().map(|&v| v as f64));
            assert!(e <= 1e-5, "channel {c}: dx relative L2 error {e:e}");
        }
        let e = common::rel_l2(
            got.dgamma.as_deref().unwrap(),
            want.dgamma.as_deref().unwrap().iter().map(|&v| v as f64),
        );
        assert!(e <= 1e-5, "dgamma relative L2 error {e:e}");
    }
}

/// After the device is destroyed, every call returns an error.
#[test]
fn a_lost_device_gives_errors_not_panics() {
    common::set_runtime_dir();
    let ctx = GpuContext::new().unwrap();
    let mut bn = BatchNorm::new(BatchNormConfig::new(2), Device::Gpu(ctx.clone())).unwrap();
    let x = ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![1., 2., 3., 4., 5., 7.]).unwrap();
    bn.forward(x.view(), Layout::ChannelsFirst).unwrap();
    ctx.device().destroy();
    assert!(bn.forward(x.view(), Layout::ChannelsFirst).is_err());
    // Its results were lost with the device, so it counts for nothing.
    assert_eq!(bn.num_batches_tracked(), Some(1));
    assert!(bn
        .backward(x.view(), x.view(), Layout::ChannelsFirst)
        .is_err());
    assert!(bn.running_mean().is_err());
    assert!(BatchNorm::new(BatchNormConfig::new(2), Device::Gpu(ctx)).is_err());
}

/// A broadcast view too large to copy (2^56 values of one) is an `Allocation` error on the
/// CPU engine, which copies views to standard layout, and a limit error on the GPU engine,
/// which checks its bindings first; neither aborts, and the layer keeps its state.
#[test]
fn a_view_too_large_to_copy_is_an_error() {
    let one = ArrayD::from_elem(IxDyn(&[1, 4, 1, 1]), 1.0f32);
    let huge = one
        .broadcast(IxDyn(&[1 << 20, 4, 1 << 20, 1 << 14]))
        .unwrap();
    let mut cpu = BatchNorm::new(BatchNormConfig::new(4), Device::Cpu).unwrap();
    match cpu.forward(huge.view(), Layout::ChannelsFirst) {
        Err(BnError::Allocation { what, bytes }) => {
            assert_eq!((what, bytes), ("x in standard layout", 1 << 58));
        }
        other => panic!("expected an allocation error, got {other:?}"),
    }
    assert_eq!(cpu.num_batches_tracked().unwrap(), 0);
    assert_eq!(cpu.running_mean().unwrap(), vec![0.0; 4]);
    let mut gpu = BatchNorm::new(BatchNormConfig::new(4), Device::Gpu(common::gpu())).unwrap();
    assert!(matches!(
        gpu.forward(huge.view(), Layout::ChannelsFirst),
        Err(BnError::Limit { .. })
    ));
    assert_eq!(gpu.num_batches_tracked().unwrap(), 0);
}

/// A view that is not in standard layout (axes permuted, a reversed axis) gives what its
/// standard-layout copy gives, bit for bit, on both engines, forward and backward: the
/// engines copy such views to standard layout, and a copy in memory order instead of
/// logical order would differ here though the two engines agreed with each other.
#[test]
fn views_out_of_standard_layout_give_their_copies_results() {
    let devices = [("gpu", Device::Gpu(common::gpu())), ("cpu", Device::Cpu)];
    for (name, device) in devices {
        let mut rng = common::Rng::new(31);
        // Stored (N, H, W, C), viewed (N, C, H, W).
        let stored = rng.array(&[3, 4, 5, 6], 1.0, 2.0);
        let permuted = stored.view().permuted_axes(vec![0, 3, 1, 2]);
        let mut reversed = rng.array(&[3, 6, 4, 5], -1.0, 1.0);
        reversed.invert_axis(ndarray::Axis(2));
        let dy = rng.array(&[3, 6, 4, 5], 0.0, 1.0);
        for (what, x) in [("permuted", permuted), ("reversed", reversed.view())] {
            assert!(!x.is_standard_layout(), "{what}");
            let copy = x.as_standard_layout().to_owned();
            let run = |x: ndarray::ArrayViewD<f32>| {
                let mut bn = BatchNorm::new(BatchNormConfig::new(6), device.clone()).unwrap();
                let y = bn.forward(x.view(), Layout::ChannelsFirst).unwrap().y;
                let dx = bn
                    .backward(x.view(), dy.view(), Layout::ChannelsFirst)
                    .unwrap()
                    .dx;
                (y, dx, bn.running_mean().unwrap())
            };
            assert_eq!(run(x.view()), run(copy.view()), "{name} {what}");
        }
    }
}
