//! Property test: the GPU layer against the f64 CPU reference layer over random shapes
//! (ranks 2–5, odd and even sizes), both layouts, every configuration switch, random starting
//! parameters and running statistics, and two steps per case (a training step, then a second
//! training step or an eval step) so that running-statistic updates compound.
//!
//! Each case compares y, the batch statistics, the running statistics (read back from the
//! device), num_batches_tracked (exactly), and backward dx, dgamma and dbeta, within a
//! relative L2 error of 1e-5; results that are sums which may cancel (dx, mean, running_mean,
//! dgamma, dbeta) are measured against the size of their terms as well (see
//! `bench::dx_error` and `reduction_error`). Inputs are kept to at most ~16k elements so a case takes a few ms on
//! lavapipe and ~0.1 s on llvmpipe GL. `PROPTEST_CASES=N` runs N random cases instead of 64.

mod common;

use common::{gpu, rel_l2, Rng};
use ndarray::ArrayD;
use proptest::prelude::*;
use wgpu_batchnorm::bench::dx_error;
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, Device, Layout, RunningVar};

const TOL: f64 = 1e-5;

fn flat(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// One generated case.
#[derive(Clone, Debug)]
struct Case {
    /// (N, C, spatial...) before the layout puts C in place.
    n: usize,
    c: usize,
    spatial: Vec<usize>,
    layout: Layout,
    affine: bool,
    track: bool,
    momentum: Option<f32>,
    running_var: RunningVar,
    eps: f32,
    /// Step 2 trains again (true) or runs in eval mode (false).
    second_train: bool,
    /// num_batches_tracked before step 1 (matters for momentum None).
    start_count: u64,
    x_mean: f64,
    x_std: f64,
    seed: u64,
}

impl Case {
    fn dims(&self) -> Vec<usize> {
        let mut d = vec![self.n];
        match self.layout {
            Layout::ChannelsFirst => {
                d.push(self.c);
                d.extend(&self.spatial);
            }
            Layout::ChannelsLast => {
                d.extend(&self.spatial);
                d.push(self.c);
            }
        }
        d
    }

    fn config(&self) -> BatchNormConfig {
        let mut config = BatchNormConfig::new(self.c);
        config.affine = self.affine;
        config.track_running_stats = self.track;
        config.momentum = self.momentum;
        config.running_var = self.running_var;
        config.eps = self.eps;
        config
    }
}

/// (N, C, spatial) with numel ≤ ~16k and at least 2 values per channel.
fn geometry() -> impl Strategy<Value = (usize, usize, Vec<usize>)> {
    prop_oneof![
        (1usize..=400, 1usize..=40).prop_map(|(n, c)| (n, c, vec![])),
        (1usize..=16, 1usize..=16, 1usize..=64).prop_map(|(n, c, l)| (n, c, vec![l])),
        (
            1usize..=8,
            1usize..=12,
            prop::collection::vec(1usize..=12, 2)
        )
            .prop_map(|(n, c, s)| (n, c, s)),
        (1usize..=4, 1usize..=6, prop::collection::vec(1usize..=6, 3))
            .prop_map(|(n, c, s)| (n, c, s)),
    ]
    .prop_filter("at least 2 values per channel", |(n, _, s)| {
        n * s.iter().product::<usize>() >= 2
    })
}

fn momentum() -> impl Strategy<Value = Option<f32>> {
    prop_oneof![
        Just(None),
        Just(Some(0.0f32)),
        Just(Some(1.0f32)),
        (0.0f32..=1.0).prop_map(Some),
    ]
}

prop_compose! {
    fn case()(
        (n, c, spatial) in geometry(),
        channels_last in any::<bool>(),
        affine in any::<bool>(),
        track in any::<bool>(),
        momentum in momentum(),
        biased in any::<bool>(),
        log_eps in -6.0f64..-1.0,
        second_train in any::<bool>(),
        start_count in prop_oneof![Just(0u64), 0u64..1000],
        x_mean in -3.0f64..3.0,
        log_std in -1.5f64..0.7,
        seed in any::<u64>(),
    ) -> Case {
        Case {
            n, c, spatial,
            layout: if channels_last { Layout::ChannelsLast } else { Layout::ChannelsFirst },
            affine, track, momentum,
            running_var: if biased { RunningVar::Biased } else { RunningVar::Unbiased },
            eps: 10f64.powf(log_eps) as f32,
            second_train, start_count, x_mean,
            x_std: 10f64.powf(log_std),
            seed,
        }
    }
}

/// Relative L2 error of a per-channel result that is a sum of terms which may cancel
/// (a mean, dgamma = Σ dy·x̂, dbeta = Σ dy, a running mean (1−f)·rm + f·mean): as for dx,
/// no f32 sum gets a nearly cancelled total to 1e-5 of its own size, so the error is measured
/// against the larger of ‖want‖ and 5% of ‖scale‖, with scale[c] = Σ|term| of channel c, i.e.
/// an absolute error of 5e-7 of the summed magnitudes (a few f32 ulps of them). A wrong
/// formula misses by the terms' own size. (Found by this test: an eval dgamma of −0.01506
/// over terms with Σ|t| = 41.4 differed by 5.5e-7, 3.7e-5 of itself, 1.3e-8 of Σ|t|.)
fn reduction_error(got: &[f32], want: &[f32], scale: &[f64]) -> f64 {
    if got.len() != want.len() || want.len() != scale.len() {
        return f64::INFINITY;
    }
    let l2 = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = l2(&mut got.iter().zip(want).map(|(&g, &w)| g as f64 - w as f64));
    let norm = l2(&mut want.iter().map(|&w| w as f64));
    let floor = 5e-2 * l2(&mut scale.iter().copied());
    if diff == 0.0 {
        return 0.0;
    }
    diff / norm.max(floor)
}

/// Per-channel Σ f(i) over the elements of each channel.
fn per_channel_sum(case: &Case, numel: usize, f: impl Fn(usize) -> f64) -> Vec<f64> {
    let c = case.c;
    let inner: usize = case.spatial.iter().product();
    let channel = |i: usize| match case.layout {
        Layout::ChannelsFirst => (i / inner) % c,
        Layout::ChannelsLast => i % c,
    };
    let mut sums = vec![0.0; c];
    for i in 0..numel {
        sums[channel(i)] += f(i);
    }
    sums
}

/// Runs the case on both devices; returns a description of every mismatch.
fn run_case(case: &Case) -> Vec<String> {
    run_case_with(case, |_| {})
}

/// `run_case` with the GPU layer's config altered by `tweak` (to show that the comparison
/// catches a layer that computes something else).
fn run_case_with(case: &Case, tweak: impl Fn(&mut BatchNormConfig)) -> Vec<String> {
    let dims = case.dims();
    let numel: usize = dims.iter().product();
    let per_channel = numel / case.c;
    let layout = case.layout;
    let config = case.config();
    let c = case.c;
    let mut rng = Rng::new(case.seed);
    let gamma: Vec<f32> = (0..c)
        .map(|_| {
            let sign = if rng.uniform() < 0.2 { -1.0 } else { 1.0 };
            (sign * (0.25 + 1.5 * rng.uniform())) as f32
        })
        .collect();
    let beta = rng.normal_vec(c, 0.0, 1.0);
    let rm = rng.normal_vec(c, 0.0, 2.0);
    let rv: Vec<f32> = (0..c).map(|_| (0.1 + 3.0 * rng.uniform()) as f32).collect();

    let mut gpu_config = config.clone();
    tweak(&mut gpu_config);
    let [mut g, mut k] =
        [(Device::Gpu(gpu()), gpu_config), (Device::Cpu, config)].map(|(device, config)| {
            let mut l = BatchNorm::new(config, device).unwrap();
            if case.affine {
                l.set_gamma(&gamma).unwrap();
                l.set_beta(&beta).unwrap();
            }
            if l.config().track_running_stats {
                l.set_running_mean(&rm).unwrap();
                l.set_running_var(&rv).unwrap();
                l.set_num_batches_tracked(case.start_count).unwrap();
            }
            l
        });

    let mut errors = Vec::new();
    let mut check = |what: String, e: f64| {
        if e.is_nan() || e > TOL {
            errors.push(format!("{what}: relative L2 error {e:.3e} > {TOL:e}"));
        }
    };
    let plain = |got: &[f32], want: &[f32]| rel_l2(got, want.iter().map(|&v| v as f64));
    let mut failures = Vec::new();

    for step in 0..2 {
        let training = step == 0 || case.second_train;
        g.set_training(training);
        k.set_training(training);
        let tag = format!("step {step} ({})", if training { "train" } else { "eval" });
        let x = rng.array(&dims, case.x_mean, case.x_std);
        let dy = rng.array(&dims, 0.0, 1.0);
        let xs = x.as_slice().unwrap();
        let dys = dy.as_slice().unwrap();
        let abs_x_mean: Vec<f64> = per_channel_sum(case, numel, |i| (xs[i] as f64).abs())
            .into_iter()
            .map(|s| s / per_channel as f64)
            .collect();
        // An untracked layer has none (empty here): against a tracked one the comparisons
        // below then fail on the lengths, as num_batches_tracked's does on None.
        let running = |l: &BatchNorm| {
            let mean = l.running_mean().unwrap_or_default();
            (mean, l.running_var().unwrap_or_default())
        };
        let running_mean_before = running(&k).0;

        let gf = g.forward(x.view(), layout).unwrap();
        let kf = k.forward(x.view(), layout).unwrap();
        check(format!("{tag} y"), plain(&flat(&gf.y), &flat(&kf.y)));
        match (&gf.stats, &kf.stats) {
            (Some(gs), Some(ks)) => {
                check(
                    format!("{tag} mean"),
                    reduction_error(&gs.mean, &ks.mean, &abs_x_mean),
                );
                check(format!("{tag} var"), plain(&gs.var, &ks.var));
                check(format!("{tag} invstd"), plain(&gs.invstd, &ks.invstd));
            }
            (None, None) => {}
            (gs, ks) => failures.push(format!(
                "{tag}: stats presence differs: gpu {} cpu {}",
                gs.is_some(),
                ks.is_some()
            )),
        }
        // (1−f)·rm + f·mean: bounded by |rm| + mean|x| whatever the factor f.
        let rm_scale: Vec<f64> = running_mean_before
            .iter()
            .zip(&abs_x_mean)
            .map(|(&r, &a)| (r as f64).abs() + a)
            .collect();
        let ((g_mean, g_var), (k_mean, k_var)) = (running(&g), running(&k));
        check(
            format!("{tag} running_mean"),
            reduction_error(&g_mean, &k_mean, &rm_scale),
        );
        check(format!("{tag} running_var"), plain(&g_var, &k_var));
        if g.num_batches_tracked() != k.num_batches_tracked() {
            failures.push(format!(
                "{tag}: num_batches_tracked gpu {:?} cpu {:?}",
                g.num_batches_tracked(),
                k.num_batches_tracked()
            ));
        }

        let gb = g.backward(x.view(), dy.view(), layout).unwrap();
        let kb = k.backward(x.view(), dy.view(), layout).unwrap();
        // The statistics that normalized x (f64 from the reference's f32 outputs is close
        // enough for sizing an error measure).
        let (mean, invstd): (Vec<f64>, Vec<f64>) = match &kf.stats {
            Some(s) => (
                s.mean.iter().map(|&v| v as f64).collect(),
                s.invstd.iter().map(|&v| v as f64).collect(),
            ),
            None => (
                k.running_mean()
                    .unwrap()
                    .iter()
                    .map(|&v| v as f64)
                    .collect(),
                k.running_var()
                    .unwrap()
                    .iter()
                    .map(|&v| 1.0 / (v as f64 + case.eps as f64).sqrt())
                    .collect(),
            ),
        };
        // Size of the three gradient paths of dx: max |gamma·invstd| · ‖dy‖.
        let gain = k
            .gamma()
            .unwrap_or_else(|_| vec![1.0; c])
            .iter()
            .zip(&invstd)
            .map(|(&g, &i)| (g as f64 * i).abs())
            .fold(0.0, f64::max);
        let dy_norm = dys.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        check(
            format!("{tag} dx"),
            dx_error(&flat(&gb.dx), &flat(&kb.dx), gain * dy_norm),
        );
        match (&gb.dgamma, &kb.dgamma, &gb.dbeta, &kb.dbeta) {
            (Some(gg), Some(kg), Some(gbeta), Some(kbeta)) => {
                let inner: usize = case.spatial.iter().product();
                let ch = |i: usize| match layout {
                    Layout::ChannelsFirst => (i / inner) % c,
                    Layout::ChannelsLast => i % c,
                };
                let dgamma_scale = per_channel_sum(case, numel, |i| {
                    (dys[i] as f64 * (xs[i] as f64 - mean[ch(i)]) * invstd[ch(i)]).abs()
                });
                let dbeta_scale = per_channel_sum(case, numel, |i| (dys[i] as f64).abs());
                check(
                    format!("{tag} dgamma"),
                    reduction_error(gg, kg, &dgamma_scale),
                );
                check(
                    format!("{tag} dbeta"),
                    reduction_error(gbeta, kbeta, &dbeta_scale),
                );
            }
            (None, None, None, None) if !case.affine => {}
            _ => failures.push(format!(
                "{tag}: dgamma/dbeta presence differs from affine = {}",
                case.affine
            )),
        }
    }
    errors.extend(failures);
    errors
}

fn assert_case(case: &Case) {
    let errors = run_case(case);
    assert!(
        errors.is_empty(),
        "{case:?} dims {:?}: {} mismatches:\n{}",
        case.dims(),
        errors.len(),
        errors.join("\n")
    );
}

proptest! {
    // 64 cases per `cargo test`; PROPTEST_CASES=N runs more (e.g. for a long local soak).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn gpu_layer_matches_cpu_reference(case in case()) {
        let errors = run_case(&case);
        prop_assert!(
            errors.is_empty(),
            "dims {:?}: {} mismatches:\n{}",
            case.dims(),
            errors.len(),
            errors.join("\n")
        );
    }
}

/// A fixed, all-odd case in both layouts and five combinations of the switches (each of
/// affine, tracking, momentum None and a second training step on and off at least once), so
/// the property is exercised on a known input even when the random cases happen to miss odd
/// sizes.
#[test]
fn fixed_odd_case_matches_cpu_reference() {
    for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
        for (affine, track, momentum, second_train) in [
            (true, true, Some(0.3f32), true),
            (true, true, None, false),
            (false, true, Some(1.0), false),
            (true, false, Some(0.1), true),
            (false, false, None, false),
        ] {
            assert_case(&Case {
                n: 3,
                c: 5,
                spatial: vec![7, 11],
                layout,
                affine,
                track,
                momentum,
                running_var: RunningVar::Unbiased,
                eps: 1e-5,
                second_train,
                start_count: 7,
                x_mean: 0.75,
                x_std: 1.5,
                seed: 0x0dd,
            });
        }
    }
}

/// The comparison must notice a wrong layer: a GPU layer whose config differs slightly from
/// the reference's (momentum, eps, running variance, cumulative average) fails the case.
#[test]
fn comparison_catches_a_layer_that_differs() {
    let case = Case {
        n: 3,
        c: 5,
        spatial: vec![7],
        layout: Layout::ChannelsLast,
        affine: true,
        track: true,
        momentum: Some(0.3),
        running_var: RunningVar::Unbiased,
        eps: 1e-3,
        second_train: false,
        start_count: 4,
        x_mean: 0.5,
        x_std: 1.0,
        seed: 5,
    };
    assert!(run_case(&case).is_empty(), "{:?}", run_case(&case));
    type Tweak = (&'static str, fn(&mut BatchNormConfig));
    let tweaks: [Tweak; 5] = [
        ("momentum 0.301", |c| c.momentum = Some(0.301)),
        ("momentum None", |c| c.momentum = None),
        ("eps 2e-3", |c| c.eps = 2e-3),
        ("biased running var", |c| c.running_var = RunningVar::Biased),
        ("untracked", |c| c.track_running_stats = false),
    ];
    for (name, tweak) in tweaks {
        let errors = run_case_with(&case, tweak);
        assert!(!errors.is_empty(), "{name}: the comparison did not notice");
    }
}
