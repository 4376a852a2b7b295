//! The (outer, C, inner) view of a batch-norm input, and its validation.

use crate::config::Layout;
use crate::error::{BnError, Result};

/// A validated input shape. Per channel the reduction runs over `per_channel()` = N·S values.
/// A dimension may be zero, as PyTorch takes an empty batch (see `is_empty`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    dims: Vec<usize>,
    layout: Layout,
}

/// Backward takes dy of x's own dims.
pub fn expect_same_dims(x: &[usize], dy: &[usize]) -> Result<()> {
    if x != dy {
        return Err(BnError::ShapeMismatch {
            a_name: "x",
            a: x.to_vec(),
            b_name: "dy",
            b: dy.to_vec(),
        });
    }
    Ok(())
}

impl Shape {
    /// Refuses ranks outside 2–5 and shapes of more f32 bytes than one allocation can hold.
    pub fn new(dims: &[usize], layout: Layout) -> Result<Self> {
        if !(2..=5).contains(&dims.len()) {
            return Err(BnError::Rank { rank: dims.len() });
        }
        // Bounded by what one allocation may hold, so that byte counts (numel · 4) never
        // overflow anywhere downstream. The non-zero dims only, so that an empty batch
        // bounds its other dims too (as ndarray requires of the arrays made for it).
        let limit = isize::MAX as u64;
        let bytes = dims
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64));
        if bytes.is_none_or(|b| b > limit) {
            return Err(BnError::TooLarge {
                shape: dims.to_vec(),
                limit,
            });
        }
        Ok(Self {
            dims: dims.to_vec(),
            layout,
        })
    }

    /// The dims as given, in the layout's order.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Where the channels are.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// C, read at the layout's channel place.
    pub fn channels(&self) -> usize {
        self.dims[self.layout.channel_axis(self.dims.len())]
    }

    /// Product of the spatial dimensions (1 for rank 2).
    pub fn spatial(&self) -> usize {
        let d = &self.dims;
        match self.layout {
            Layout::ChannelsFirst => d[2..].iter().product(),
            Layout::ChannelsLast => d[1..d.len() - 1].iter().product(),
        }
    }

    /// The number of values.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// No values: PyTorch's forward of such a batch returns an empty y, leaves the running
    /// statistics and still counts a training step; its backward gives zero dgamma and dbeta.
    pub fn is_empty(&self) -> bool {
        self.numel() == 0
    }

    /// Refuses an empty shape where there must be values (the kernels' geometry, the bench).
    pub fn expect_values(&self) -> Result<()> {
        match self.dims.iter().position(|&d| d == 0) {
            Some(axis) => Err(BnError::ZeroSized {
                shape: self.dims.clone(),
                axis,
            }),
            None => Ok(()),
        }
    }

    /// Values per channel, M = N·S.
    pub fn per_channel(&self) -> usize {
        self.dims[0] * self.spatial()
    }

    /// The memory as `[outer][channels][inner]`: (N, C, S) channels-first, (N·S, C, 1) channels-last.
    pub fn view(&self) -> (usize, usize, usize) {
        match self.layout {
            Layout::ChannelsFirst => (self.dims[0], self.channels(), self.spatial()),
            Layout::ChannelsLast => (self.per_channel(), self.channels(), 1),
        }
    }

    /// Checks the channel count against the layer's num_features.
    pub fn expect_channels(&self, num_features: usize) -> Result<()> {
        if self.channels() != num_features {
            return Err(BnError::Channels {
                expected: num_features,
                got: self.channels(),
                shape: self.dims.clone(),
                layout: self.layout,
            });
        }
        Ok(())
    }
}
