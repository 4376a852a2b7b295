//! The crate's one error type.

use thiserror::Error;

use crate::config::Layout;

/// Everything that can go wrong in this crate. Limit violations carry the value and the limit.
/// Later versions may add variants: a `match` needs a `_` arm.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BnError {
    /// A tensor of rank other than 2–5.
    #[error("rank {rank} is not supported: batch norm takes tensors of rank 2 to 5")]
    Rank { rank: usize },

    /// An empty shape where values are needed (the bench, the kernels' geometry); a layer
    /// itself takes an empty batch, as PyTorch does.
    #[error("dimension {axis} of shape {shape:?} is zero: this needs values")]
    ZeroSized { shape: Vec<usize>, axis: usize },

    /// A shape of more f32 bytes than one allocation can hold.
    #[error("shape {shape:?} holds more than {limit} bytes of f32, the most one allocation can")]
    TooLarge { shape: Vec<usize>, limit: u64 },

    /// Host memory that could not be had (an array, a read-back, a file's values).
    #[error("could not allocate {bytes} bytes for {what}")]
    Allocation { what: &'static str, bytes: u64 },

    /// A tensor whose channel count is not the layer's `num_features`.
    #[error("expected {expected} channels (num_features), got {got} in shape {shape:?}, read as {layout:?} (channels at index {} of the shape)", layout.channel_axis(shape.len()))]
    Channels {
        expected: usize,
        got: usize,
        shape: Vec<usize>,
        layout: Layout,
    },

    /// A per-channel vector (gamma, beta, running statistics) of the wrong length.
    #[error("{name} has length {got}, expected {expected}")]
    Length {
        name: &'static str,
        expected: usize,
        got: usize,
    },

    /// Two tensors of one call (x and y, x and dy) of different dims.
    #[error("shapes differ: {a_name} is {a:?} but {b_name} is {b:?}")]
    ShapeMismatch {
        a_name: &'static str,
        a: Vec<usize>,
        b_name: &'static str,
        b: Vec<usize>,
    },

    /// Two tensors of one call in different layouts.
    #[error("layouts differ: {a_name} is {a:?} but {b_name} is {b:?}")]
    LayoutMismatch {
        a_name: &'static str,
        a: Layout,
        b_name: &'static str,
        b: Layout,
    },

    /// A setting out of range: eps, momentum, num_features, a WGPU_* variable, or an
    /// argument of the CLI or the bench.
    #[error("invalid {name} = {value}: {reason}")]
    Config {
        name: &'static str,
        value: String,
        reason: &'static str,
    },

    /// gamma or beta asked of a layer that is not affine.
    #[error("the layer has no {name}: it is not affine (affine = false)")]
    NotAffine { name: &'static str },

    /// Running statistics or their count asked of a layer that tracks none.
    #[error(
        "the layer has no {name}: it tracks no running statistics (track_running_stats = false)"
    )]
    NotTracked { name: &'static str },

    /// The bench's check: a GPU result that differs from the CPU reference.
    #[error("{what} differs from the CPU reference by {error:.2e} (tolerance {tolerance:e})")]
    Verification {
        what: String,
        error: f64,
        tolerance: f64,
    },

    /// The bench's check of its copy roof: a copy that wrote wrong values.
    #[error("the bench's copy roof ({per_lane} vec4 per lane) wrote {wrong} of {total} values wrong: its timings would flatter every ratio")]
    RoofCheck {
        per_lane: u32,
        wrong: usize,
        total: usize,
    },

    /// Batch statistics of one value per channel (training, or eval untracked), which
    /// PyTorch refuses too.
    #[error("expected more than 1 value per channel when training, got input shape {shape:?}")]
    SingleValuePerChannel { shape: Vec<usize> },

    /// A size or count over a limit of the device or of the kernels; names both.
    #[error("{what} is {value}, over the limit of {limit}")]
    Limit {
        what: &'static str,
        value: u64,
        limit: u64,
    },

    /// A tensor's buffer the call cannot use (usage, size, offset, aliasing).
    /// `name` is the tensor's part in the call (x, y, dy, dx), or "tensor" when a
    /// `GpuTensor` is made.
    #[error("buffer {name}: {reason}")]
    Buffer { name: &'static str, reason: String },

    /// A backward with no forward of that shape and layout before it.
    #[error("backward was called before a forward pass saved statistics for shape {shape:?}")]
    NoSavedStatistics { shape: Vec<usize> },

    /// `backward_from` given what another layer's forward saved.
    #[error("these saved statistics are another layer's: a backward takes those of its own layer's forward")]
    ForeignSaved,

    /// No adapter on the backends allowed, or the one chosen has no compute shaders.
    #[error("no GPU adapter found ({0}); on Linux without a GPU install Mesa's software drivers: apt-get install -y mesa-vulkan-drivers")]
    NoAdapter(String),

    /// A WGPU_ADAPTER_NAME that no adapter's name contains.
    #[error("WGPU_ADAPTER_NAME={wanted:?} matches none of the adapters found: {}", if found.is_empty() { "none".to_string() } else { found.join(", ") })]
    NoSuchAdapter { wanted: String, found: Vec<String> },

    /// The adapter refused the device (limits or features).
    #[error("requesting the device failed: {0}")]
    RequestDevice(String),

    /// A wgpu validation, out-of-memory or internal error (a lost device among them), caught
    /// in an error scope and named by the kernel or step that raised it.
    #[error("wgpu error in {kernel}: {message}")]
    Wgpu { kernel: String, message: String },

    /// Mapping a read-back buffer failed (a lost device, for one).
    #[error("reading back from the GPU failed: {0}")]
    Readback(String),

    /// A `.npy` file that is not little-endian f32 in C order, or is malformed.
    #[error("{path}: {reason}")]
    Npy { path: String, reason: String },

    /// A file that could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = BnError> = std::result::Result<T, E>;
