//! CPU reference: the same operations as the shaders, accumulated in f64.
//!
//! This is the ground truth for every GPU test and the CPU side of the benchmarks. Inputs are
//! contiguous slices in the shape's layout; per-channel results are f64 so that callers can
//! compare f32 GPU outputs against values that carry no f32 rounding of their own.

use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};

use crate::error::{BnError, Result};
use crate::shape::Shape;

/// An empty Vec with room for `n` values, or an `Allocation` error where the allocator
/// refuses the bytes: an absurd size (a broadcast view of 2^56 elements) is then an error
/// rather than an abort.
pub(crate) fn with_room<T>(n: usize, what: &'static str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| BnError::Allocation {
        what,
        bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
    })?;
    Ok(v)
}

/// `n` copies of `value`, allocated as `with_room` does.
pub(crate) fn filled<T: Clone>(n: usize, value: T, what: &'static str) -> Result<Vec<T>> {
    let mut v = with_room(n, what)?;
    v.resize(n, value);
    Ok(v)
}

/// `a` itself where it is in standard layout, else a copy that is (of a broadcast or
/// transposed view), allocated as `with_room` does.
pub(crate) fn contiguous<'a>(
    a: ArrayViewD<'a, f32>,
    what: &'static str,
) -> Result<CowArray<'a, f32, IxDyn>> {
    if a.is_standard_layout() {
        return Ok(a.into());
    }
    let mut data = with_room(a.len(), what)?;
    data.extend(a.iter().copied());
    Ok(ArrayD::from_shape_vec(a.raw_dim(), data)
        .expect("numel matches")
        .into())
}

/// Calls `f(channel, range)` for every contiguous run of one channel's values.
fn for_each_run(shape: &Shape, mut f: impl FnMut(usize, std::ops::Range<usize>)) {
    let (outer, channels, inner) = shape.view();
    for o in 0..outer {
        for c in 0..channels {
            let start = (o * channels + c) * inner;
            f(c, start..start + inner);
        }
    }
}

/// Calls `f(row)` for every row of channels-contiguous data (inner == 1), where runs would be
/// one value long: a loop over a row's channels vectorizes, a call per value does not.
fn rows(shape: &Shape) -> Option<(usize, usize)> {
    let (outer, channels, inner) = shape.view();
    (inner == 1).then_some((outer, channels))
}

/// Per-channel mean and biased variance, by two passes in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub mean: Vec<f64>,
    pub var: Vec<f64>,
}

impl Stats {
    pub fn invstd(&self, eps: f32) -> Vec<f64> {
        self.var
            .iter()
            .map(|v| 1.0 / (v + eps as f64).sqrt())
            .collect()
    }
}

pub fn batch_stats(x: &[f32], shape: &Shape) -> Stats {
    let channels = shape.channels();
    let m = shape.per_channel() as f64;
    let mut sum = vec![0.0f64; channels];
    for_each_run(shape, |c, r| {
        sum[c] += x[r].iter().map(|&v| v as f64).sum::<f64>()
    });
    let mean: Vec<f64> = sum.iter().map(|s| s / m).collect();
    let mut sq = vec![0.0f64; channels];
    for_each_run(shape, |c, r| {
        let mu = mean[c];
        sq[c] += x[r].iter().map(|&v| (v as f64 - mu).powi(2)).sum::<f64>();
    });
    // PyTorch keeps the sum of squared deviations in the input's dtype (aten's _var_sum; a
    // GPU's M2 is f32 too): past f32::MAX it is infinite, so invstd is 0 and y is beta.
    let var = sq
        .iter()
        .map(|&s| {
            if (s as f32).is_infinite() {
                f64::INFINITY
            } else {
                s / m
            }
        })
        .collect();
    Stats { mean, var }
}

/// y = (x − mean)·invstd·gamma + beta, into `y` (x's length).
pub fn normalize(
    x: &[f32],
    shape: &Shape,
    mean: &[f64],
    invstd: &[f64],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [f32],
) {
    if let Some((_, c)) = rows(shape) {
        let scale: Vec<f64> = (0..c).map(|k| invstd[k] * gamma[k] as f64).collect();
        for (out, row) in y.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            for k in 0..c {
                out[k] = ((row[k] as f64 - mean[k]) * scale[k] + beta[k] as f64) as f32;
            }
        }
        return;
    }
    for_each_run(shape, |c, r| {
        let (mu, s, b) = (mean[c], invstd[c] * gamma[c] as f64, beta[c] as f64);
        for (out, &v) in y[r.clone()].iter_mut().zip(&x[r]) {
            *out = ((v as f64 - mu) * s + b) as f32;
        }
    });
}

/// Per-channel Σdy and Σdy·(x − mean).
pub fn grad_sums(x: &[f32], dy: &[f32], shape: &Shape, mean: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let channels = shape.channels();
    let mut sum_dy = vec![0.0f64; channels];
    let mut sum_dy_xmu = vec![0.0f64; channels];
    if let Some((_, c)) = rows(shape) {
        for (g_row, x_row) in dy.chunks_exact(c).zip(x.chunks_exact(c)) {
            for k in 0..c {
                sum_dy[k] += g_row[k] as f64;
                sum_dy_xmu[k] += g_row[k] as f64 * (x_row[k] as f64 - mean[k]);
            }
        }
        return (sum_dy, sum_dy_xmu);
    }
    for_each_run(shape, |c, r| {
        for (&g, &v) in dy[r.clone()].iter().zip(&x[r]) {
            sum_dy[c] += g as f64;
            sum_dy_xmu[c] += g as f64 * (v as f64 - mean[c]);
        }
    });
    (sum_dy, sum_dy_xmu)
}

/// Gradients of batch norm.
#[derive(Clone, Debug, PartialEq)]
pub struct Grads {
    pub dx: Vec<f32>,
    pub dgamma: Vec<f64>,
    pub dbeta: Vec<f64>,
}

/// With `frozen` (eval with running statistics) mean and invstd are constants and
/// dx = gamma·invstd·dy, x unread as in PyTorch (a NaN or Inf in x leaves dx alone).
/// Otherwise the gradient also flows through the batch mean and variance:
/// dx = gamma·invstd·(dy − Σdy/M − (x − mean)·invstd²·Σdy(x − mean)/M).
pub fn backward(
    x: &[f32],
    dy: &[f32],
    shape: &Shape,
    mean: &[f64],
    invstd: &[f64],
    gamma: &[f32],
    frozen: bool,
) -> Result<Grads> {
    let (sum_dy, sum_dy_xmu) = grad_sums(x, dy, shape, mean);
    let m = shape.per_channel() as f64;
    // dx = g·(dy − a − (x − mean)·b) per channel.
    let coeffs: Vec<(f64, f64, f64)> = (0..mean.len())
        .map(|c| {
            let g = gamma[c] as f64 * invstd[c];
            if frozen {
                (g, 0.0, 0.0)
            } else {
                (g, sum_dy[c] / m, invstd[c] * invstd[c] * sum_dy_xmu[c] / m)
            }
        })
        .collect();
    let mut dx = filled(x.len(), 0.0f32, "dx")?;
    let dx_of = |c: usize, gy: f32, v: f32| {
        let (g, a, b) = coeffs[c];
        if frozen {
            return (g * gy as f64) as f32;
        }
        (g * (gy as f64 - a - (v as f64 - mean[c]) * b)) as f32
    };
    if let Some((_, c)) = rows(shape) {
        let runs = dx
            .chunks_exact_mut(c)
            .zip(dy.chunks_exact(c))
            .zip(x.chunks_exact(c));
        for ((out, g_row), x_row) in runs {
            for k in 0..c {
                out[k] = dx_of(k, g_row[k], x_row[k]);
            }
        }
    } else {
        for_each_run(shape, |c, r| {
            for ((out, &gy), &v) in dx[r.clone()].iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
                *out = dx_of(c, gy, v);
            }
        });
    }
    let dgamma = sum_dy_xmu.iter().zip(invstd).map(|(s, i)| s * i).collect();
    Ok(Grads {
        dx,
        dgamma,
        dbeta: sum_dy,
    })
}

/// One running-statistics step: PyTorch's `(1 − f)·running + f·batch`, where f is the
/// momentum, or 1/num_batches_tracked (after its increment) when momentum is None.
pub fn update_running(
    running_mean: &mut [f32],
    running_var: &mut [f32],
    stats: &Stats,
    per_channel: usize,
    factor: f64,
    biased: bool,
) {
    let m = per_channel as f64;
    for c in 0..running_mean.len() {
        let var = if biased {
            stats.var[c]
        } else {
            stats.var[c] * m / (m - 1.0)
        };
        running_mean[c] = ((1.0 - factor) * running_mean[c] as f64 + factor * stats.mean[c]) as f32;
        running_var[c] = ((1.0 - factor) * running_var[c] as f64 + factor * var) as f32;
    }
}
