//! The crate's one error type.

use thiserror::Error;

use crate::config::Layout;

/// Everything that can go wrong in this crate. Limit violations carry the value and the limit.
/// Later versions may add variants: a `match` needs a `_` arm.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BnError {
    #[error("rank {rank} is not supported: batch norm takes tensors of rank 2 to 5")]
    Rank { rank: usize },

    #[error("dimension {axis} of shape {shape:?} is zero: this needs values")]
    ZeroSized { shape: Vec<usize>, axis: usize },

    #[error("shape {shape:?} holds more than {limit} bytes of f32, the most one allocation can")]
    TooLarge { shape: Vec<usize>, limit: u64 },

    #[error("could not allocate {bytes} bytes for {what}")]
    Allocation { what: &'static str, bytes: u64 },

    #[error("expected {expected} channels (num_features), got {got} in shape {shape:?}, read as {layout:?} (channels at index {} of the shape)", layout.channel_axis(shape.len()))]
    Channels {
        expected: usize,
        got: usize,
        shape: Vec<usize>,
        layout: Layout,
    },

    #[error("{name} has length {got}, expected {expected}")]
    Length {
        name: &'static str,
        expected: usize,
        got: usize,
    },

    #[error("shapes differ: {a_name} is {a:?} but {b_name} is {b:?}")]
    ShapeMismatch {
        a_name: &'static str,
        a: Vec<usize>,
        b_name: &'static str,
        b: Vec<usize>,
    },

    #[error("layouts differ: {a_name} is {a:?} but {b_name} is {b:?}")]
    LayoutMismatch {
        a_name: &'static str,
        a: Layout,
        b_name: &'static str,
        b: Layout,
    },

    #[error("invalid {name} = {value}: {reason}")]
    Config {
        name: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("the layer has no {name}: it is not affine (affine = false)")]
    NotAffine { name: &'static str },

    #[error(
        "the layer has no {name}: it tracks no running statistics (track_running_stats = false)"
    )]
    NotTracked { name: &'static str },

    #[error("{what} differs from the CPU reference by {error:.2e} (tolerance {tolerance:e})")]
    Verification {
        what: String,
        error: f64,
        tolerance: f64,
    },

    #[error("the bench's copy roof ({per_lane} vec4 per lane) wrote {wrong} of {total} values wrong: its timings would flatter every ratio")]
    RoofCheck {
        per_lane: u32,
        wrong: usize,
        total: usize,
    },

    #[error("expected more than 1 value per channel when training, got input shape {shape:?}")]
    SingleValuePerChannel { shape: Vec<usize> },

    #[error("{what} is {value}, over the limit of {limit}")]
    Limit {
        what: &'static str,
        value: u64,
        limit: u64,
    },

    /// `name` is the tensor's part in the call (x, y, dy, dx), or "tensor" when a
    /// `GpuTensor` is made.
    #[error("buffer {name}: {reason}")]
    Buffer { name: &'static str, reason: String },

    #[error("backward was called before a forward pass saved statistics for shape {shape:?}")]
    NoSavedStatistics { shape: Vec<usize> },

    #[error("these saved statistics are another layer's: a backward takes those of its own layer's forward")]
    ForeignSaved,

    #[error("no GPU adapter found ({0}); on Linux without a GPU install Mesa's software drivers: apt-get install -y mesa-vulkan-drivers")]
    NoAdapter(String),

    #[error("WGPU_ADAPTER_NAME={wanted:?} matches none of the adapters found: {}", if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    NoSuchAdapter { wanted: String, found: Vec<String> },

    #[error("requesting the device failed: {0}")]
    RequestDevice(String),

    #[error("wgpu error in {kernel}: {message}")]
    Wgpu { kernel: String, message: String },

    #[error("reading back from the GPU failed: {0}")]
    Readback(String),

    #[error("{path}: {reason}")]
    Npy { path: String, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = BnError> = std::result::Result<T, E>;
