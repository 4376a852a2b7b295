//! GPU against the f64 CPU reference on one input: the comparison the cross-check tests share.

use std::sync::Arc;

use ndarray::ArrayD;
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, Device, GpuContext, Layout};

use super::{rel_l2, Rng};

pub const TOL: f64 = 1e-5;

pub fn compare(errors: &mut Vec<String>, what: &str, got: &[f32], want: &[f32]) {
    let e = rel_l2(got, want.iter().map(|&v| v as f64));
    if e.is_nan() || e > TOL {
        errors.push(format!("{what}: relative L2 error {e:.3e} > {TOL:e}"));
    }
}

/// Per-channel vectors channel by channel: each channel's error relative to its own size,
/// or to `floor(c)` where that is larger (the channel's spread for a mean, whose own size may
/// be 0), so that channels of large values (`with_channel_levels`) cannot hide an error in
/// a small one, as one L2 norm over all of them would (a running mean of 0 where 21.5 was due
/// passed beside channels at 1e6).
pub fn compare_channels(
    errors: &mut Vec<String>,
    what: &str,
    got: &[f32],
    want: &[f32],
    floor: impl Fn(usize) -> f64,
) {
    let per_channel = got
        .iter()
        .zip(want)
        .enumerate()
        .map(|(c, (&g, &w))| (g as f64 - w as f64).abs() / (w as f64).abs().max(floor(c)));
    report_worst_channel(errors, what, per_channel);
}

/// The RMS of `values`: the floor of compare_channels for sums over a channel (dgamma,
/// dbeta), which may be near 0 by chance while their rounding grows with the channel's size
/// (a tenth of it failed channels of 200,000 values by 1.5e-5).
pub fn rms(values: &[f32]) -> f64 {
    (values.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

/// A tensor channel by channel: each channel's relative L2 error, measured against its own
/// norm, or against a tenth of the channels' RMS norm where its own is smaller (see
/// compare_channels).
pub fn compare_by_channel(
    errors: &mut Vec<String>,
    what: &str,
    got: &ArrayD<f32>,
    want: &ArrayD<f32>,
    layout: Layout,
) {
    let axis = ndarray::Axis(channel_axis(want, layout));
    let norm = |a: ndarray::ArrayViewD<f32>| a.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
    let diff = |(g, w): (ndarray::ArrayViewD<f32>, ndarray::ArrayViewD<f32>)| {
        g.iter()
            .zip(w.iter())
            .map(|(&g, &w)| (g as f64 - w as f64).powi(2))
            .sum::<f64>()
    };
    let want_norms: Vec<f64> = want.axis_iter(axis).map(norm).collect();
    let rms = (want_norms.iter().sum::<f64>() / want_norms.len() as f64).sqrt();
    let per_channel = got
        .axis_iter(axis)
        .zip(want.axis_iter(axis))
        .map(diff)
        .zip(&want_norms)
        .map(|(d, &n)| d.sqrt() / n.sqrt().max(0.1 * rms));
    report_worst_channel(errors, what, per_channel);
}

fn report_worst_channel(
    errors: &mut Vec<String>,
    what: &str,
    per_channel: impl Iterator<Item = f64>,
) {
    let mut worst: Option<(usize, f64)> = None;
    for (c, e) in per_channel.enumerate() {
        if e.is_nan() || (e > TOL && worst.is_none_or(|(_, w)| e > w)) {
            worst = Some((c, e));
            if e.is_nan() {
                break;
            }
        }
    }
    if let Some((c, e)) = worst {
        errors.push(format!(
            "{what}: channel {c}'s relative error {e:.3e} > {TOL:e}"
        ));
    }
}

/// dx where the three gradient paths nearly cancel (M = 2 makes x̂ = ±1 and dx ≈ 0), measured
/// against the paths' size `paths` as the bench measures it
/// (`wgpu_batchnorm::bench::dx_error`).
pub fn compare_dx(errors: &mut Vec<String>, what: &str, got: &[f32], want: &[f32], paths: f64) {
    let e = wgpu_batchnorm::bench::dx_error(got, want, paths);
    if e.is_nan() || e > TOL {
        errors.push(format!("{what}: relative L2 error {e:.3e} > {TOL:e}"));
    }
}

pub fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// A GPU and a CPU layer with the same random parameters and running statistics.
pub fn layers(
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
        if config.affine {
            l.set_gamma(&gamma).unwrap();
            l.set_beta(&beta).unwrap();
        }
        if config.track_running_stats {
            l.set_running_mean(&rm).unwrap();
            l.set_running_var(&rv).unwrap();
        }
        l
    })
}

/// Runs training forward + backward, eval forward + backward, then training again, on both
/// layers and returns every comparison that failed.
pub fn cross_check(
    gpu: Arc<GpuContext>,
    dims: &[usize],
    layout: Layout,
    seed: u64,
    mean: f64,
    std: f64,
) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let x = rng.array(dims, mean, std);
    cross_check_input(gpu, x, layout, &mut rng)
}

/// x with `offset` added to each channel's first and last value (index 0, or the last index,
/// along every other axis): outliers where data has structure (borders, a sequence's first
/// token).
pub fn with_outliers_at_ends(mut x: ArrayD<f32>, layout: Layout, offset: f32) -> ArrayD<f32> {
    let axis = channel_axis(&x, layout);
    let last: Vec<usize> = x.shape().iter().map(|&d| d - 1).collect();
    for c in 0..x.shape()[axis] {
        for end in [vec![0; x.ndim()], last.clone()] {
            let mut at = end;
            at[axis] = c;
            x[at.as_slice()] += offset;
        }
    }
    x
}

/// x with c·`step` added to channel c's values: channels far apart, so that a kernel that
/// took one channel's value for another's is seen.
pub fn with_channel_levels(mut x: ArrayD<f32>, layout: Layout, step: f32) -> ArrayD<f32> {
    let axis = channel_axis(&x, layout);
    for (c, mut lane) in x.axis_iter_mut(ndarray::Axis(axis)).enumerate() {
        lane += c as f32 * step;
    }
    x
}

fn channel_axis(x: &ArrayD<f32>, layout: Layout) -> usize {
    layout.channel_axis(x.ndim())
}

/// The channel count of a tensor of `dims` stored in `layout`.
pub fn channels_of(dims: &[usize], layout: Layout) -> usize {
    dims[layout.channel_axis(dims.len())]
}

/// Fails with every mismatch the cross-checks collected, counted.
pub fn assert_no_mismatches(errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{} mismatches:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

/// cross_check on a given x (dy and the layers' parameters drawn from `rng`).
pub fn cross_check_input(
    gpu: Arc<GpuContext>,
    x: ArrayD<f32>,
    layout: Layout,
    rng: &mut Rng,
) -> Vec<String> {
    let channels = channels_of(x.shape(), layout);
    cross_check_config(gpu, x, layout, rng, &BatchNormConfig::new(channels))
}

/// cross_check_input under `config` (its switches: momentum None, affine or tracking off, a
/// biased running variance, another eps): what the layer has not (gamma and beta, running
/// statistics) must be absent on both sides.
pub fn cross_check_config(
    gpu: Arc<GpuContext>,
    x: ArrayD<f32>,
    layout: Layout,
    rng: &mut Rng,
    config: &BatchNormConfig,
) -> Vec<String> {
    let dims = x.shape().to_vec();
    let channels = channels_of(&dims, layout);
    let dy = rng.array(&dims, 0.0, 1.0);
    let context = if Arc::ptr_eq(&gpu, &super::gpu()) {
        ""
    } else if Arc::ptr_eq(&gpu, &super::gpu_two_pass()) {
        " two-pass"
    } else if Arc::ptr_eq(&gpu, &super::gpu_caller_single_read()) {
        " caller device, subgroups, single read"
    } else if Arc::ptr_eq(&gpu, &super::gpu_caller_single_read_no_subgroups()) {
        " caller device, no subgroups, single read"
    } else if Arc::ptr_eq(&gpu, &super::gpu_cpu_tuned()) {
        " caller device, CPU-tuned"
    } else if gpu.subgroups() {
        " caller device, subgroups"
    } else {
        " caller device, no subgroups"
    };
    let [mut g, mut c] = layers(gpu, channels, config, rng);
    let mut errors = Vec::new();
    let switches = if *config == BatchNormConfig::new(channels) {
        String::new()
    } else {
        format!(
            " (momentum {:?}, affine {}, tracked {}, {:?} running var, eps {})",
            config.momentum,
            config.affine,
            config.track_running_stats,
            config.running_var,
            config.eps
        )
    };
    let tag = format!("{dims:?} {layout:?}{context}{switches}");
    // Training again after eval: its reductions then find the records the backward passes
    // left in the partials buffer, and must write every one they read.
    for training in [true, false, true] {
        g.set_training(training);
        c.set_training(training);
        let mode = if training { "train" } else { "eval" };
        let (gf, cf) = (
            g.forward(x.view(), layout).unwrap(),
            c.forward(x.view(), layout).unwrap(),
        );
        compare_by_channel(
            &mut errors,
            &format!("{tag} {mode} y"),
            &gf.y,
            &cf.y,
            layout,
        );
        match (&gf.stats, &cf.stats) {
            (Some(gs), Some(cs)) => {
                let spread = |c: usize| (cs.var[c] as f64).sqrt();
                let eps = |_| config.eps as f64;
                let (mean, var) = (format!("{tag} mean"), format!("{tag} var"));
                compare_channels(&mut errors, &mean, &gs.mean, &cs.mean, spread);
                compare_channels(&mut errors, &var, &gs.var, &cs.var, eps);
                let invstd = format!("{tag} invstd");
                compare_channels(&mut errors, &invstd, &gs.invstd, &cs.invstd, |_| 0.0);
            }
            (None, None) => {}
            (gs, cs) => errors.push(format!(
                "{tag} {mode}: batch statistics on the GPU {}, on the CPU {}",
                gs.is_some(),
                cs.is_some()
            )),
        }
        if config.track_running_stats {
            // A running mean near 0 is measured against the channel's running spread.
            let running_var = c.running_var().unwrap();
            let spread = |c: usize| (running_var[c] as f64).sqrt();
            compare_channels(
                &mut errors,
                &format!("{tag} {mode} running_mean"),
                &g.running_mean().unwrap(),
                &c.running_mean().unwrap(),
                spread,
            );
            compare_channels(
                &mut errors,
                &format!("{tag} {mode} running_var"),
                &g.running_var().unwrap(),
                &running_var,
                |_| config.eps as f64,
            );
            if g.num_batches_tracked() != c.num_batches_tracked() {
                errors.push(format!(
                    "{tag} {mode}: num_batches_tracked {:?} against {:?}",
                    g.num_batches_tracked(),
                    c.num_batches_tracked()
                ));
            }
        } else if g.running_mean().is_ok() || g.num_batches_tracked().is_some() {
            errors.push(format!(
                "{tag} {mode}: running statistics on an untracked layer"
            ));
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
                .map(|v| 1.0 / (v + config.eps).sqrt())
                .collect(),
        };
        let gamma = c.gamma().unwrap_or_else(|_| vec![1.0; channels]);
        let gain = (gamma.iter().zip(&invstd))
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
        match (&gb.dgamma, &cb.dgamma, &gb.dbeta, &cb.dbeta) {
            (Some(gg), Some(cg), Some(gbeta), Some(cbeta)) if config.affine => {
                let (dgamma, dbeta) = (
                    format!("{tag} {mode} dgamma"),
                    format!("{tag} {mode} dbeta"),
                );
                let (gamma_floor, beta_floor) = (rms(cg), rms(cbeta));
                compare_channels(&mut errors, &dgamma, gg, cg, |_| gamma_floor);
                compare_channels(&mut errors, &dbeta, gbeta, cbeta, |_| beta_floor);
            }
            (None, None, None, None) if !config.affine => {}
            _ => errors.push(format!(
                "{tag} {mode}: parameter gradients where the layer has {} (affine {})",
                if config.affine { "them" } else { "none" },
                config.affine
            )),
        }
    }
    errors
}

/// Configurations that differ from the default in each switch PyTorch has: momentum None,
/// affine off, tracking off (and both), a biased running variance with another momentum and
/// eps.
pub fn switch_configs(channels: usize) -> Vec<BatchNormConfig> {
    let base = BatchNormConfig::new(channels);
    let mut none = base.clone();
    none.momentum = None;
    let mut plain = base.clone();
    plain.affine = false;
    let mut untracked = base.clone();
    untracked.track_running_stats = false;
    let mut bare = untracked.clone();
    bare.affine = false;
    let mut biased = base.clone();
    biased.running_var = wgpu_batchnorm::RunningVar::Biased;
    biased.momentum = Some(0.3);
    biased.eps = 1e-3;
    vec![none, plain, untracked, bare, biased]
}
