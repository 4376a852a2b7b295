//! GPU kernels against the f64 CPU reference on random inputs: many shapes, ranks, both
//! layouts, training and eval, forward and backward.

mod common;

use std::sync::Arc;

use common::{gpu, rel_l2, Rng};
use ndarray::ArrayD;
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, Device, GpuContext, Layout};

const TOL: f64 = 1e-5;

fn compare(errors: &mut Vec<String>, what: &str, got: &[f32], want: &[f32]) {
    let e = rel_l2(got, want.iter().map(|&v| v as f64));
    if e.is_nan() || e > TOL {
        errors.push(format!("{what}: relative L2 error {e:.3e} > {TOL:e}"));
    }
}

/// dx where the three gradient paths nearly cancel (M = 2 makes x̂ = ±1 and dx ≈ 0): each
/// path is about ‖gamma·invstd·dy‖ in size and carries f32 rounding of that size, so no f32
/// computation (PyTorch's included) gets dx to 1e-5 of its own tiny norm. The error is then
/// measured against 5% of the size of the paths, i.e. an absolute error of 5e-7 of them
/// (a few ulps of the three summed terms); a wrong formula misses by the paths' own size.
fn compare_dx(errors: &mut Vec<String>, what: &str, got: &[f32], want: &[f32], paths: f64) {
    let diff = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm = want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>().sqrt();
    let e = diff / norm.max(5e-2 * paths);
    if e.is_nan() || e > TOL || got.len() != want.len() {
        errors.push(format!("{what}: relative L2 error {e:.3e} > {TOL:e}"));
    }
}

fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// A GPU and a CPU layer with the same random parameters and running statistics.
fn layers(
    gpu: Arc<GpuContext>,
    channels: usize,
    config: &BatchNormConfig,
    rng: &mut Rng,
) -> [BatchNorm; 2] {
    let gamma: Vec<f32> = (0..channels)
        .map(|_| (0.5 + rng.uniform()) as f32)
        .collect();
    let beta = rng.normal_vec(channels, 0.0, 1.0);
    let rm = rng.normal_vec(channels, 0.0, 1.0);
    let rv: Vec<f32> = (0..channels)
        .map(|_| (0.5 + 1.5 * rng.uniform()) as f32)
        .collect();
    [Device::Gpu(gpu), Device::Cpu].map(|device| {
        let mut l = BatchNorm::new(config.clone(), device).unwrap();
        l.set_gamma(&gamma).unwrap();
        l.set_beta(&beta).unwrap();
        l.set_running_mean(&rm).unwrap();
        l.set_running_var(&rv).unwrap();
        l
    })
}

/// Runs training forward + backward, then eval forward + backward, on both layers and
/// returns every comparison that failed.
fn cross_check(
    gpu: Arc<GpuContext>,
    dims: &[usize],
    layout: Layout,
    seed: u64,
    mean: f64,
    std: f64,
) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let channels = match layout {
        Layout::ChannelsFirst => dims[1],
        Layout::ChannelsLast => dims[dims.len() - 1],
    };
    let x = rng.array(dims, mean, std);
    let dy = rng.array(dims, 0.0, 1.0);
    let two_pass = !Arc::ptr_eq(&gpu, &common::gpu());
    let [mut g, mut c] = layers(gpu, channels, &BatchNormConfig::new(channels), &mut rng);
    let mut errors = Vec::new();
    let tag = format!(
        "{dims:?} {layout:?}{}",
        if two_pass { " two-pass" } else { "" }
    );
    for training in [true, false] {
        g.set_training(training);
        c.set_training(training);
        let mode = if training { "train" } else { "eval" };
        let (gf, cf) = (
            g.forward(x.view(), layout).unwrap(),
            c.forward(x.view(), layout).unwrap(),
        );
        compare(
            &mut errors,
            &format!("{tag} {mode} y"),
            &flat(&gf.y),
            &flat(&cf.y),
        );
        if let (Some(gs), Some(cs)) = (&gf.stats, &cf.stats) {
            compare(&mut errors, &format!("{tag} mean"), &gs.mean, &cs.mean);
            compare(&mut errors, &format!("{tag} var"), &gs.var, &cs.var);
            compare(
                &mut errors,
                &format!("{tag} invstd"),
                &gs.invstd,
                &cs.invstd,
            );
        }
        for (name, gv, cv) in [
            ("running_mean", g.running_mean(), c.running_mean()),
            ("running_var", g.running_var(), c.running_var()),
        ] {
            compare(
                &mut errors,
                &format!("{tag} {mode} {name}"),
                &gv.unwrap(),
                &cv.unwrap(),
            );
        }
        let (gb, cb) = (
            g.backward(x.view(), dy.view(), layout).unwrap(),
            c.backward(x.view(), dy.view(), layout).unwrap(),
        );
        let invstd = match &cf.stats {
            Some(s) => s.invstd.clone(),
            None => c
                .running_var()
                .unwrap()
                .iter()
                .map(|v| 1.0 / (v + 1e-5).sqrt())
                .collect(),
        };
        let gain = (c.gamma().unwrap().iter().zip(&invstd))
            .map(|(g, i)| (g * i).abs() as f64)
            .fold(0.0, f64::max);
        let dy_norm = dy.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        compare_dx(
            &mut errors,
            &format!("{tag} {mode} dx"),
            &flat(&gb.dx),
            &flat(&cb.dx),
            gain * dy_norm,
        );
        compare(
            &mut errors,
            &format!("{tag} {mode} dgamma"),
            gb.dgamma.as_deref().unwrap(),
            cb.dgamma.as_deref().unwrap(),
        );
        compare(
            &mut errors,
            &format!("{tag} {mode} dbeta"),
            gb.dbeta.as_deref().unwrap(),
            cb.dbeta.as_deref().unwrap(),
        );
    }
    errors
}

/// Every case on the default context and on one whose forward always takes two passes.
fn run_all(cases: &[(&[usize], Layout, f64, f64)]) {
    let mut errors = Vec::new();
    for (i, &(dims, layout, mean, std)) in cases.iter().enumerate() {
        for ctx in [gpu(), common::gpu_two_pass()] {
            errors.extend(cross_check(ctx, dims, layout, 100 + i as u64, mean, std));
        }
    }
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

use Layout::{ChannelsFirst as CF, ChannelsLast as CL};

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
        (&[4, 8, 16, 16], CF, 1e4, 1e-2),
    ]);
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
