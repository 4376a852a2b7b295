//! Statistics saved per forward call (`forward_for_backward`, `backward_from`): a layer applied
//! several times before its backwards differentiates each call with that call's statistics,
//! as PyTorch's autograd does, on the GPU (ndarray and recording APIs) and the CPU reference;
//! and dgamma, dbeta summed over such calls where the layer accumulates them.

mod common;

use common::{read_buffer, rel_l2, Rng};
use ndarray::ArrayD;
use wgpu_batchnorm::{
    BackwardOutput, BatchNorm, BatchNormConfig, BnError, Device, GpuBatchNorm, GpuTensor, Layout,
};

const TOL: f64 = 1e-5;

fn devices() -> [(&'static str, Device); 2] {
    [("gpu", Device::Gpu(common::gpu())), ("cpu", Device::Cpu)]
}

fn layer(device: Device, channels: usize, gamma: &[f32]) -> BatchNorm {
    let mut l = BatchNorm::new(BatchNormConfig::new(channels), device).unwrap();
    l.set_gamma(gamma).unwrap();
    l
}

fn f64s(a: &[f32]) -> Vec<f64> {
    a.iter().map(|&v| v as f64).collect()
}

/// The gradients of one forward and backward of x on a fresh CPU reference layer.
fn reference(gamma: &[f32], x: &ArrayD<f32>, dy: &ArrayD<f32>, layout: Layout) -> BackwardOutput {
    let mut l = layer(Device::Cpu, gamma.len(), gamma);
    l.forward(x.view(), layout).unwrap();
    l.backward(x.view(), dy.view(), layout).unwrap()
}

/// The largest relative L2 error of dx, dgamma and dbeta.
fn error(got: &BackwardOutput, want: &BackwardOutput) -> f64 {
    let dx = rel_l2(got.dx.iter(), want.dx.iter().map(|&v| v as f64));
    let dgamma = rel_l2(
        got.dgamma.as_ref().unwrap(),
        f64s(want.dgamma.as_ref().unwrap()),
    );
    let dbeta = rel_l2(
        got.dbeta.as_ref().unwrap(),
        f64s(want.dbeta.as_ref().unwrap()),
    );
    dx.max(dgamma).max(dbeta)
}

/// Two forwards of one shape on batches with different statistics, then their backwards in
/// either order: each matches its own forward and backward on a fresh layer. The plain
/// backward, which takes the last forward's statistics, misses the first call by far, so the
/// comparison would catch a saved copy that followed later forwards.
#[test]
fn each_call_differentiates_with_its_own_statistics() {
    for (name, device) in devices() {
        for (layout, dims) in [
            (Layout::ChannelsFirst, [4, 8, 5, 6]),
            (Layout::ChannelsLast, [4, 5, 6, 8]),
        ] {
            let mut rng = Rng::new(7);
            let gamma: Vec<f32> = (0..8).map(|_| (0.5 + rng.uniform()) as f32).collect();
            let xs = [rng.array(&dims, 0.5, 2.0), rng.array(&dims, -3.0, 0.4)];
            let dys = [rng.array(&dims, 0.0, 1.0), rng.array(&dims, 0.0, 1.0)];
            let want = [0, 1].map(|k| reference(&gamma, &xs[k], &dys[k], layout));
            for order in [[0, 1], [1, 0]] {
                let mut bn = layer(device.clone(), 8, &gamma);
                let saved =
                    [0, 1].map(|k| bn.forward_for_backward(xs[k].view(), layout).unwrap().1);
                for k in order {
                    let got = bn
                        .backward_from(&saved[k], xs[k].view(), dys[k].view(), layout)
                        .unwrap();
                    let e = error(&got, &want[k]);
                    assert!(
                        e <= TOL,
                        "{name} {layout:?} call {k} of order {order:?}: {e:.2e}"
                    );
                }
                let last_only = bn.backward(xs[0].view(), dys[0].view(), layout).unwrap();
                let e = error(&last_only, &want[0]);
                assert!(
                    e > 1e-2,
                    "{name} {layout:?}: the last forward's statistics fit call 0"
                );
            }
        }
    }
}

/// In eval the saved statistics are the running ones as they were at the forward: setting
/// them afterwards changes what later forwards use, not that forward's backward.
#[test]
fn eval_saves_the_running_statistics_of_its_forward() {
    let dims = [3, 4, 7];
    let mut rng = Rng::new(11);
    let x = rng.array(&dims, 1.0, 2.0);
    let dy = rng.array(&dims, 0.0, 1.0);
    let gamma = [0.5, 1.5, 2.0, 0.75];
    let (mean_then, var_then) = ([0.5, -1.0, 2.0, 0.0], [4.0, 0.25, 1.0, 2.0]);
    let want = {
        let mut l = layer(Device::Cpu, 4, &gamma);
        l.set_running_mean(&mean_then).unwrap();
        l.set_running_var(&var_then).unwrap();
        l.eval();
        l.forward(x.view(), Layout::ChannelsFirst).unwrap();
        l.backward(x.view(), dy.view(), Layout::ChannelsFirst)
            .unwrap()
    };
    for (name, device) in devices() {
        let mut bn = layer(device, 4, &gamma);
        bn.set_running_mean(&mean_then).unwrap();
        bn.set_running_var(&var_then).unwrap();
        bn.eval();
        let (_, saved) = bn
            .forward_for_backward(x.view(), Layout::ChannelsFirst)
            .unwrap();
        bn.set_running_mean(&[0.0; 4]).unwrap();
        bn.set_running_var(&[9.0; 4]).unwrap();
        bn.forward(x.view(), Layout::ChannelsFirst).unwrap();
        let got = bn
            .backward_from(&saved, x.view(), dy.view(), Layout::ChannelsFirst)
            .unwrap();
        let e = error(&got, &want);
        assert!(e <= TOL, "{name}: {e:.2e}");
    }
}

/// Gamma is the layer's when the backward runs (README): set between a forward and its
/// backward, the new one scales dx, dgamma keeps to the saved statistics.
#[test]
fn backward_from_takes_gamma_as_it_is_then() {
    let dims = [3, 4, 5];
    let cf = Layout::ChannelsFirst;
    let mut rng = Rng::new(31);
    let x = rng.array(&dims, 1.0, 2.0);
    let dy = rng.array(&dims, 0.0, 1.0);
    let (before, after) = ([1.0, 1.0, 1.0, 1.0], [0.5, 2.0, -1.5, 3.0]);
    let want = reference(&after, &x, &dy, cf);
    assert!(error(&reference(&before, &x, &dy, cf), &want) > 1e-2);
    for (name, device) in devices() {
        let mut bn = layer(device, 4, &before);
        let (_, saved) = bn.forward_for_backward(x.view(), cf).unwrap();
        bn.set_gamma(&after).unwrap();
        let got = bn.backward_from(&saved, x.view(), dy.view(), cf).unwrap();
        assert!(error(&got, &want) <= TOL, "{name}");
    }
}

/// Saved statistics go back only to their own layer, and only with x of their forward's shape
/// and layout; a refusal leaves them usable.
#[test]
fn saved_statistics_are_refused_by_other_layers_and_shapes() {
    let dims = [2, 4, 3, 4];
    let mut rng = Rng::new(5);
    let x = rng.array(&dims, 0.0, 1.0);
    let dy = rng.array(&dims, 0.0, 1.0);
    let other = rng.array(&[2, 4, 3, 5], 0.0, 1.0);
    let other_dy = rng.array(&[2, 4, 3, 5], 0.0, 1.0);
    let cf = Layout::ChannelsFirst;
    let gamma = [1.0; 4];
    let want = reference(&gamma, &x, &dy, cf);
    let mut cpu_twin = layer(Device::Cpu, 4, &gamma);
    let (_, cpu_saved) = cpu_twin.forward_for_backward(x.view(), cf).unwrap();
    for (name, device) in devices() {
        let mut bn = layer(device.clone(), 4, &gamma);
        let mut twin = layer(device, 4, &gamma);
        let (_, saved) = bn.forward_for_backward(x.view(), cf).unwrap();
        twin.forward(x.view(), cf).unwrap();
        let refusals = [
            (
                "another layer's",
                twin.backward_from(&saved, x.view(), dy.view(), cf),
            ),
            (
                "the CPU twin's",
                bn.backward_from(&cpu_saved, x.view(), dy.view(), cf),
            ),
            (
                "another shape",
                bn.backward_from(&saved, other.view(), other_dy.view(), cf),
            ),
            // (2, 4, 3, 4) channels-last has 4 channels too, but is another tensor.
            (
                "another layout",
                bn.backward_from(&saved, x.view(), dy.view(), Layout::ChannelsLast),
            ),
        ];
        for (what, result) in refusals {
            let ok = match what {
                "another shape" => matches!(result, Err(BnError::ShapeMismatch { .. })),
                "another layout" => matches!(result, Err(BnError::LayoutMismatch { .. })),
                _ => matches!(result, Err(BnError::ForeignSaved)),
            };
            assert!(ok, "{name}: {what}: {:?}", result.map(|_| ()));
        }
        assert_eq!(saved.dims(), dims);
        let got = bn.backward_from(&saved, x.view(), dy.view(), cf).unwrap();
        assert!(error(&got, &want) <= TOL, "{name}");
    }
}

/// A layer keeps buffers for its eight most recent shapes; a saved forward whose shape has
/// made way for nine others since still has its backward, through the ndarray API and
/// recorded into an encoder (which finds no buffers of that shape made for it).
#[test]
fn saved_statistics_outlive_the_plan_of_their_shape() {
    let dims = [3, 4, 6, 5];
    let n: usize = dims.iter().product();
    let cf = Layout::ChannelsFirst;
    let mut rng = Rng::new(13);
    let x = rng.array(&dims, 2.0, 1.5);
    let dy = rng.array(&dims, 0.0, 1.0);
    let gamma = [0.5, 1.0, 1.5, 2.0];
    let want = reference(&gamma, &x, &dy, cf);
    let others: Vec<ArrayD<f32>> = (2..11).map(|m| rng.array(&[m, 4, 3], 0.0, 1.0)).collect();

    let mut bn = layer(Device::Gpu(common::gpu()), 4, &gamma);
    let (_, saved) = bn.forward_for_backward(x.view(), cf).unwrap();
    for other in &others {
        bn.forward(other.view(), cf).unwrap();
    }
    let got = bn.backward_from(&saved, x.view(), dy.view(), cf).unwrap();
    assert!(error(&got, &want) <= TOL, "ndarray API");

    let ctx = common::gpu();
    let (device, queue) = (ctx.device().clone(), ctx.queue().clone());
    let [x_buf, dy_buf, y_buf, dx_buf] = [Some(&x), Some(&dy), None, None].map(|data| {
        common::storage_buffer(
            &device,
            &queue,
            n as u64 * 4,
            data.map(|d| d.as_slice().unwrap()),
        )
    });
    let t = |b| GpuTensor::new(b, &dims, cf).unwrap();
    let mut bn = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(4)).unwrap();
    bn.set_gamma(&gamma).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    let saved = bn
        .forward_for_backward(&mut encoder, &t(&x_buf), &t(&y_buf))
        .unwrap();
    queue.submit([encoder.finish()]);
    for other in &others {
        bn.forward_array(other.view(), cf).unwrap();
    }
    let mut encoder = device.create_command_encoder(&Default::default());
    bn.backward_from(&mut encoder, &saved, &t(&x_buf), &t(&dy_buf), &t(&dx_buf))
        .unwrap();
    queue.submit([encoder.finish()]);
    let dx = read_buffer(&device, &queue, &dx_buf, 0, n);
    let e = rel_l2(&dx, want.dx.iter().map(|&v| v as f64));
    assert!(e <= TOL, "recorded: {e:.2e}");
}

/// The mode is the forward's: a training forward differentiated after eval() takes the three
/// paths, an eval forward differentiated after train() takes dx = gamma·invstd·dy.
#[test]
fn saved_statistics_keep_their_forwards_mode() {
    let dims = [3, 4, 5];
    let cf = Layout::ChannelsFirst;
    let mut rng = Rng::new(19);
    let x = rng.array(&dims, 1.0, 2.0);
    let dy = rng.array(&dims, 0.0, 1.0);
    let gamma = [0.5, 1.5, 2.0, 0.75];
    let train_want = reference(&gamma, &x, &dy, cf);
    let eval_want = {
        let mut l = layer(Device::Cpu, 4, &gamma);
        l.eval();
        l.forward(x.view(), cf).unwrap();
        l.backward(x.view(), dy.view(), cf).unwrap()
    };
    assert!(
        error(&train_want, &eval_want) > 1e-2,
        "the modes differ here"
    );
    for (name, device) in devices() {
        let mut bn = layer(device.clone(), 4, &gamma);
        let (_, trained) = bn.forward_for_backward(x.view(), cf).unwrap();
        bn.eval();
        let got = bn.backward_from(&trained, x.view(), dy.view(), cf).unwrap();
        assert!(
            error(&got, &train_want) <= TOL,
            "{name}: train, then eval()"
        );

        let mut bn = layer(device, 4, &gamma);
        bn.eval();
        let (_, evaluated) = bn.forward_for_backward(x.view(), cf).unwrap();
        bn.train();
        let got = bn
            .backward_from(&evaluated, x.view(), dy.view(), cf)
            .unwrap();
        assert!(error(&got, &eval_want) <= TOL, "{name}: eval, then train()");
    }
}

/// A caller's buffers for two calls: x and dy holding `xs` and `dys`, y and dx to write.
fn caller_buffers(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    xs: &[ArrayD<f32>; 2],
    dys: &[ArrayD<f32>; 2],
) -> [[wgpu::Buffer; 2]; 4] {
    let bytes = xs[0].len() as u64 * 4;
    let buffer = |data: Option<&ArrayD<f32>>| {
        common::storage_buffer(device, queue, bytes, data.map(|d| d.as_slice().unwrap()))
    };
    [
        [buffer(Some(&xs[0])), buffer(Some(&xs[1]))],
        [buffer(Some(&dys[0])), buffer(Some(&dys[1]))],
        [buffer(None), buffer(None)],
        [buffer(None), buffer(None)],
    ]
}

/// The recording API: two forwards of one layer recorded into one encoder, their backwards
/// into another, on the caller's buffers; each dx and the last dgamma match the reference.
#[test]
fn recorded_forwards_keep_their_statistics_until_their_backwards() {
    let ctx = common::gpu();
    let (device, queue) = (ctx.device().clone(), ctx.queue().clone());
    let dims = [4, 6, 5, 3];
    let n: usize = dims.iter().product();
    let mut rng = Rng::new(17);
    let gamma: Vec<f32> = (0..6).map(|_| (0.5 + rng.uniform()) as f32).collect();
    let xs = [rng.array(&dims, 1.0, 2.0), rng.array(&dims, -2.0, 0.3)];
    let dys = [rng.array(&dims, 0.0, 1.0), rng.array(&dims, 0.0, 1.0)];
    let [x_bufs, dy_bufs, y_bufs, dx_bufs] = caller_buffers(&device, &queue, &xs, &dys);
    let t = |b| GpuTensor::new(b, &dims, Layout::ChannelsFirst).unwrap();

    let mut bn = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(6)).unwrap();
    bn.set_gamma(&gamma).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    let saved = [0, 1].map(|k| {
        bn.forward_for_backward(&mut encoder, &t(&x_bufs[k]), &t(&y_bufs[k]))
            .unwrap()
    });
    queue.submit([encoder.finish()]);
    let mut dx = Vec::new();
    for k in [0, 1] {
        let mut encoder = device.create_command_encoder(&Default::default());
        bn.backward_from(
            &mut encoder,
            &saved[k],
            &t(&x_bufs[k]),
            &t(&dy_bufs[k]),
            &t(&dx_bufs[k]),
        )
        .unwrap();
        queue.submit([encoder.finish()]);
        dx.push(read_buffer(&device, &queue, &dx_bufs[k], 0, n));
    }
    let dgamma = read_buffer(&device, &queue, bn.dgamma_buffer(), 0, 6);
    for k in [0, 1] {
        let want = reference(&gamma, &xs[k], &dys[k], Layout::ChannelsFirst);
        let e = rel_l2(&dx[k], want.dx.iter().map(|&v| v as f64));
        assert!(e <= TOL, "dx of call {k}: {e:.2e}");
        if k == 1 {
            let e = rel_l2(&dgamma, f64s(want.dgamma.as_ref().unwrap()));
            assert!(e <= TOL, "dgamma of call 1: {e:.2e}");
        }
    }
}

/// With `set_accumulate_param_grads(true)` the backwards of two calls recorded into one
/// encoder leave the sum of their dgamma and dbeta, as autograd sums a shared parameter's
/// gradients; `zero_param_grads` starts a new sum; an empty batch adds nothing; and without
/// accumulation a backward overwrites them.
#[test]
fn accumulated_parameter_gradients_sum_over_calls() {
    let ctx = common::gpu();
    let (device, queue) = (ctx.device().clone(), ctx.queue().clone());
    let dims = [5, 4, 3, 7];
    let n: usize = dims.iter().product();
    let mut rng = Rng::new(23);
    let gamma: Vec<f32> = (0..4).map(|_| (0.5 + rng.uniform()) as f32).collect();
    let xs = [rng.array(&dims, 1.0, 2.0), rng.array(&dims, -2.0, 0.3)];
    let dys = [rng.array(&dims, 0.5, 1.0), rng.array(&dims, -0.5, 1.0)];
    let want = [0, 1].map(|k| reference(&gamma, &xs[k], &dys[k], Layout::ChannelsFirst));
    let [x_bufs, dy_bufs, y_bufs, dx_bufs] = caller_buffers(&device, &queue, &xs, &dys);
    let t = |b| GpuTensor::new(b, &dims, Layout::ChannelsFirst).unwrap();

    let mut bn = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(4)).unwrap();
    bn.set_gamma(&gamma).unwrap();
    bn.set_accumulate_param_grads(true);
    assert!(bn.accumulates_param_grads());
    let mut encoder = device.create_command_encoder(&Default::default());
    let saved = [0, 1].map(|k| {
        bn.forward_for_backward(&mut encoder, &t(&x_bufs[k]), &t(&y_bufs[k]))
            .unwrap()
    });
    queue.submit([encoder.finish()]);
    let backwards = |bn: &mut GpuBatchNorm, calls: &[usize], zero_first: bool| {
        let mut encoder = device.create_command_encoder(&Default::default());
        if zero_first {
            bn.zero_param_grads(&mut encoder);
        }
        for &k in calls {
            let (x, dy, dx) = (t(&x_bufs[k]), t(&dy_bufs[k]), t(&dx_bufs[k]));
            bn.backward_from(&mut encoder, &saved[k], &x, &dy, &dx)
                .unwrap();
        }
        queue.submit([encoder.finish()]);
        [bn.dgamma_buffer(), bn.dbeta_buffer()].map(|b| read_buffer(&device, &queue, b, 0, 4))
    };
    let check = |what: &str, got: &[Vec<f32>; 2], calls: &[usize]| {
        for (name, got, pick) in [("dgamma", &got[0], 0), ("dbeta", &got[1], 1)] {
            let sum: Vec<f64> = (0..4)
                .map(|c| {
                    calls
                        .iter()
                        .map(|&k| {
                            let w = &want[k];
                            let v = if pick == 0 { &w.dgamma } else { &w.dbeta };
                            v.as_ref().unwrap()[c] as f64
                        })
                        .sum()
                })
                .collect();
            let e = rel_l2(got, sum);
            assert!(e <= TOL, "{what}: {name} {e:.2e}");
        }
    };
    check(
        "two calls summed",
        &backwards(&mut bn, &[0, 1], false),
        &[0, 1],
    );
    for k in [0, 1] {
        let dx = read_buffer(&device, &queue, &dx_bufs[k], 0, n);
        let e = rel_l2(&dx, want[k].dx.iter().map(|&v| v as f64));
        assert!(e <= TOL, "dx of call {k}: {e:.2e}");
    }
    check("after zeroing", &backwards(&mut bn, &[1], true), &[1]);

    // An empty batch adds nothing, and its ndarray backward returns the sums so far.
    let empty = ArrayD::<f32>::zeros(vec![0, 4, 3, 7]);
    let empty_saved = bn
        .forward_array_for_backward(empty.view(), Layout::ChannelsFirst)
        .unwrap()
        .1;
    let out = bn
        .backward_array_from(
            &empty_saved,
            empty.view(),
            empty.view(),
            Layout::ChannelsFirst,
        )
        .unwrap();
    let kept = [out.dgamma.unwrap(), out.dbeta.unwrap()];
    check("an empty batch's output", &kept, &[1]);
    check(
        "after an empty batch",
        &backwards(&mut bn, &[], false),
        &[1],
    );
    let e = |b| GpuTensor::new(b, &[0, 4, 3, 7], Layout::ChannelsFirst).unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    let empty_saved = bn
        .forward_for_backward(&mut encoder, &e(&x_bufs[0]), &e(&y_bufs[0]))
        .unwrap();
    bn.backward_from(
        &mut encoder,
        &empty_saved,
        &e(&x_bufs[0]),
        &e(&dy_bufs[0]),
        &e(&dx_bufs[0]),
    )
    .unwrap();
    queue.submit([encoder.finish()]);
    check(
        "after a recorded empty batch",
        &backwards(&mut bn, &[], false),
        &[1],
    );

    // The setting in force when a backward is recorded counts, not the one at submission.
    let mut encoder = device.create_command_encoder(&Default::default());
    bn.zero_param_grads(&mut encoder);
    for k in [0, 1] {
        let (x, dy, dx) = (t(&x_bufs[k]), t(&dy_bufs[k]), t(&dx_bufs[k]));
        bn.backward_from(&mut encoder, &saved[k], &x, &dy, &dx)
            .unwrap();
    }
    bn.set_accumulate_param_grads(false);
    queue.submit([encoder.finish()]);
    let sums =
        [bn.dgamma_buffer(), bn.dbeta_buffer()].map(|b| read_buffer(&device, &queue, b, 0, 4));
    check("recorded while accumulating", &sums, &[0, 1]);
    check("overwritten", &backwards(&mut bn, &[0, 0], false), &[0]);
}

/// Accumulated dgamma and dbeta under each tuning and merge (the CPU rasterizer's tuning, a
/// GPU's with and without subgroups, a caller device tuned as a CPU), through the grouped,
/// four-channels-per-vec4 and scalar reductions, over a training call and an eval call
/// (whose backward reads the running statistics), and then a third, training call by the
/// ndarray API, whose result is the sum of all three: each against the sum of the CPU
/// reference's gradients.
#[test]
fn accumulated_gradients_under_every_tuning_and_reduction() {
    let contexts = [
        common::gpu(),
        common::gpu_caller(true),
        common::gpu_caller(false),
        common::gpu_cpu_tuned(),
    ];
    let cases: [(&[usize], Layout); 3] = [
        (&[5, 4, 3, 7], Layout::ChannelsFirst),
        (&[6, 5, 5, 8], Layout::ChannelsLast),
        (&[3, 5, 7, 11], Layout::ChannelsFirst),
    ];
    for (i, (dims, layout)) in cases.into_iter().enumerate() {
        let channels = match layout {
            Layout::ChannelsFirst => dims[1],
            Layout::ChannelsLast => dims[dims.len() - 1],
        };
        let mut rng = Rng::new(90 + i as u64);
        let gamma: Vec<f32> = (0..channels)
            .map(|_| (0.5 + rng.uniform()) as f32)
            .collect();
        let xs = [0, 1, 2].map(|k| rng.array(dims, k as f64 - 1.0, 1.0 + k as f64));
        let dys = [0, 1, 2].map(|_| rng.array(dims, 0.0, 1.0));
        // The reference: train, eval, train, each backward right after its forward.
        let mut cpu = layer(Device::Cpu, channels, &gamma);
        let mut sums = [vec![0.0f64; channels], vec![0.0f64; channels]];
        let mut after_two = sums.clone();
        for k in 0..3 {
            cpu.set_training(k != 1);
            cpu.forward(xs[k].view(), layout).unwrap();
            let g = cpu.backward(xs[k].view(), dys[k].view(), layout).unwrap();
            for (sum, part) in sums.iter_mut().zip([g.dgamma.unwrap(), g.dbeta.unwrap()]) {
                for (s, p) in sum.iter_mut().zip(part) {
                    *s += p as f64;
                }
            }
            if k == 1 {
                after_two = sums.clone();
            }
        }
        for ctx in &contexts {
            let tag = format!("{dims:?} {layout:?}, subgroups {}", ctx.subgroups());
            let mut bn = GpuBatchNorm::new(ctx.clone(), BatchNormConfig::new(channels)).unwrap();
            bn.set_gamma(&gamma).unwrap();
            bn.set_accumulate_param_grads(true);
            let mut saved = Vec::new();
            for (k, x) in xs[..2].iter().enumerate() {
                bn.set_training(k == 0);
                saved.push(bn.forward_array_for_backward(x.view(), layout).unwrap().1);
            }
            for ((s, x), dy) in saved.iter().zip(&xs).zip(&dys) {
                bn.backward_array_from(s, x.view(), dy.view(), layout)
                    .unwrap();
            }
            let (device, queue) = (ctx.device(), ctx.queue());
            let two = [bn.dgamma_buffer(), bn.dbeta_buffer()]
                .map(|b| read_buffer(device, queue, b, 0, channels));
            for (name, got, want) in [
                ("dgamma", &two[0], &after_two[0]),
                ("dbeta", &two[1], &after_two[1]),
            ] {
                let e = rel_l2(got, want.clone());
                assert!(e <= TOL, "{tag}: {name} of two calls {e:.2e}");
            }
            bn.set_training(true);
            bn.forward_array(xs[2].view(), layout).unwrap();
            let out = bn
                .backward_array(xs[2].view(), dys[2].view(), layout)
                .unwrap();
            for (name, got, want) in [
                ("dgamma", out.dgamma.unwrap(), &sums[0]),
                ("dbeta", out.dbeta.unwrap(), &sums[1]),
            ] {
                let e = rel_l2(&got, want.clone());
                assert!(e <= TOL, "{tag}: {name} of three calls {e:.2e}");
            }
        }
    }
}
