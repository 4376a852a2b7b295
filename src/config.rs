//! Layer configuration, mirroring PyTorch's `BatchNorm1d/2d/3d` arguments.

use crate::error::{BnError, Result};

/// Where the channel axis sits in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// (N, C, ...): PyTorch's contiguous NCL / NCHW / NCDHW, and (N, C).
    ChannelsFirst,
    /// (N, ..., C): NHWC / NDHWC.
    ChannelsLast,
}

impl Layout {
    /// The dimension that holds the channels in a shape of `rank` dimensions (at least 2).
    pub fn channel_axis(self, rank: usize) -> usize {
        match self {
            Layout::ChannelsFirst => 1,
            Layout::ChannelsLast => rank - 1,
        }
    }
}

/// Which variance feeds `running_var` in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RunningVar {
    /// var·M/(M−1), as PyTorch does.
    #[default]
    Unbiased,
    /// The biased batch variance, as ONNX's BatchNormalization does.
    Biased,
}

/// A layer's settings, as PyTorch's `BatchNorm1d/2d/3d` arguments (`new` gives its defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// C, the number of channels.
    pub num_features: usize,
    /// Added to the variance inside the square root.
    pub eps: f32,
    /// The running statistics' update factor: new = (1 − momentum)·old + momentum·batch.
    /// `None` is PyTorch's cumulative moving average (factor 1/num_batches_tracked).
    pub momentum: Option<f32>,
    /// Learned per-channel gamma and beta (and their gradients); without, y = x̂.
    pub affine: bool,
    /// Keep running statistics, updated in training and used in eval; without, eval uses the
    /// batch statistics as training does, and nothing is updated.
    pub track_running_stats: bool,
    /// Which batch variance `running_var` averages.
    pub running_var: RunningVar,
}

impl BatchNormConfig {
    /// Whether a layer of this config has the per-channel state `name`: gamma and beta only
    /// when affine, the running statistics and their count only when tracked (PyTorch's
    /// `None` otherwise), so that reading or setting one that is not there is an error
    /// rather than a value that means nothing.
    pub(crate) fn check_has(&self, name: &'static str) -> Result<()> {
        match name {
            "gamma" | "beta" if !self.affine => Err(BnError::NotAffine { name }),
            "running_mean" | "running_var" | "num_batches_tracked" if !self.track_running_stats => {
                Err(BnError::NotTracked { name })
            }
            _ => Ok(()),
        }
    }

    /// PyTorch's defaults: eps 1e-5, momentum 0.1, affine, tracked running statistics.
    pub fn new(num_features: usize) -> Self {
        Self {
            num_features,
            eps: 1e-5,
            momentum: Some(0.1),
            affine: true,
            track_running_stats: true,
            running_var: RunningVar::Unbiased,
        }
    }

    /// Refuses what PyTorch would refuse or a GPU could not honour: no channels, more than
    /// u32 channels, an eps that is ≤ 0, subnormal, NaN or infinite, a momentum outside
    /// [0, 1] or NaN.
    pub fn validate(&self) -> Result<()> {
        if self.num_features == 0 {
            return Err(BnError::Config {
                name: "num_features",
                value: "0".into(),
                reason: "must be at least 1",
            });
        }
        // Channel counts are u32 in every kernel's uniform.
        if self.num_features > u32::MAX as usize {
            return Err(BnError::Limit {
                what: "num_features",
                value: self.num_features as u64,
                limit: u32::MAX as u64,
            });
        }
        // A subnormal eps is 0 to a GPU that flushes denormals (WGSL allows it), and a constant
        // channel would then get invstd = inf and y = NaN where PyTorch gives beta.
        if !(self.eps.is_finite() && self.eps >= f32::MIN_POSITIVE) {
            return Err(BnError::Config {
                name: "eps",
                value: shown(self.eps),
                reason: "must be finite and at least f32::MIN_POSITIVE (1.18e-38): GPUs may flush smaller values to 0",
            });
        }
        if let Some(m) = self.momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(BnError::Config {
                    name: "momentum",
                    value: shown(m),
                    reason: "must lie in [0, 1] (or be None for a cumulative average)",
                });
            }
        }
        Ok(())
    }
}

/// A value as an error shows it: in exponent form where plain decimals would run to dozens of
/// digits (a subnormal eps).
fn shown(v: f32) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e7).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}
