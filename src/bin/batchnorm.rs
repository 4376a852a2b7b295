//! `batchnorm`: batch normalization on the GPU (wgpu) or the CPU reference, from .npy files.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ndarray::{ArrayD, ArrayView1, ArrayViewD};
use wgpu_batchnorm::bench::{dx_paths, input, output_errors};
use wgpu_batchnorm::gpu::list_adapters;
use wgpu_batchnorm::{
    npy, BatchNorm, BatchNormConfig, BnError, Device, GpuContext, Layout, Result, RunningVar,
};

/// eprint!, but a closed stderr (`batchnorm bench 2>&1 | head -1`) costs the run nothing:
/// progress and warnings are not worth a panic, and an error still sets the exit code.
macro_rules! err_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// eprintln!, as `err_part!`.
macro_rules! err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// println!, but a closed stdout (`batchnorm bench | head`) ends the process quietly, as Unix
/// tools do, instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            err!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "batchnorm",
    version,
    about = "Batch normalization with PyTorch's semantics on any wgpu GPU, checked against an f64 CPU reference",
    long_about = "Batch normalization with PyTorch's semantics on any wgpu GPU, checked against an \
                  f64 CPU reference.\n\nWithout a subcommand, runs the demo: forward and backward of \
                  a 32x64x56x56 tensor on the GPU and the CPU, with their largest relative \
                  difference and timings."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List every adapter wgpu finds, the one chosen, and its key limits.
    Info,
    /// Forward pass: writes y.npy, batch statistics, and updated running statistics with num_batches_tracked.txt.
    Forward(PassArgs),
    /// Time GPU passes, the CPU reference and two copy kernels (the faster is the roof), verified first.
    Bench(BenchArgs),
    /// Backward pass: writes dx.npy and, when affine, dgamma.npy and dbeta.npy.
    Backward {
        #[command(flatten)]
        pass: PassArgs,
        /// Upstream gradient, the same shape as x.
        #[arg(long, value_name = "DY.npy")]
        dy: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    /// Channels on axis 1 (ranks 2 to 5).
    Nchw,
    /// Channels on the last axis.
    Nhwc,
}

#[derive(Args)]
struct BenchArgs {
    /// Shapes as (N, C, ...), comma separated, like 32x64x56x56,1024x4096; nhwc runs the same
    /// tensor stored channels-last (default: the standard set).
    #[arg(long, value_name = "NxC[xHxW..][,..]", value_parser = parse_shapes, allow_hyphen_values = true)]
    shape: Option<Shapes>,
    #[arg(long, value_enum, default_value = "both")]
    layout: BenchLayout,
    /// Timed GPU iterations per pass (the CPU reference runs at most 5).
    #[arg(long, value_name = "K", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..), allow_negative_numbers = true)]
    iters: u32,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum BenchLayout {
    Nchw,
    Nhwc,
    Both,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Format {
    Table,
    Csv,
}

#[derive(Clone)]
struct Shapes(Vec<Vec<usize>>);

fn parse_shapes(s: &str) -> std::result::Result<Shapes, String> {
    s.split(',')
        .map(|shape| {
            shape
                .split('x')
                .map(|d| {
                    let d = d.trim();
                    d.parse::<usize>().map_err(|e| match e.kind() {
                        std::num::IntErrorKind::PosOverflow => {
                            format!("`{shape}`: {d} is more than {}", usize::MAX)
                        }
                        _ => format!("`{shape}` is not a shape like 32x64x56x56"),
                    })
                })
                .collect::<std::result::Result<Vec<_>, _>>()
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map(Shapes)
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Gpu,
    Cpu,
}

#[derive(Args)]
struct PassArgs {
    /// Input, little-endian float32 .npy in C order.
    #[arg(long, value_name = "X.npy")]
    x: PathBuf,
    /// Scale; with --beta makes the layer affine.
    #[arg(long, value_name = "G.npy", requires = "beta")]
    gamma: Option<PathBuf>,
    #[arg(long, value_name = "B.npy", requires = "gamma")]
    beta: Option<PathBuf>,
    /// Running mean; with --running-var turns track_running_stats on.
    #[arg(long, value_name = "RM.npy", requires = "running_var")]
    running_mean: Option<PathBuf>,
    #[arg(long, value_name = "RV.npy", requires = "running_mean")]
    running_var: Option<PathBuf>,
    // Negative values (-1, -1e-5, -inf) reach their parsers, and are refused there with what
    // is wrong, rather than being taken for flags.
    /// The count so far (needs the running statistics); a training forward writes it plus
    /// one to num_batches_tracked.txt.
    #[arg(
        long,
        value_name = "K",
        requires = "running_mean",
        allow_negative_numbers = true
    )]
    num_batches_tracked: Option<u64>,
    #[arg(
        long,
        value_name = "E",
        default_value_t = 1e-5,
        value_parser = parse_f32,
        allow_hyphen_values = true
    )]
    eps: f32,
    /// A factor in [0, 1], or `none` for a cumulative average (needs the running statistics).
    #[arg(long, value_name = "F|none", default_value = "0.1", value_parser = parse_momentum, allow_hyphen_values = true, requires = "running_mean")]
    momentum: Momentum,
    /// Update running_var with the biased batch variance (ONNX) instead of the unbiased one
    /// (needs the running statistics).
    #[arg(long, requires = "running_mean")]
    biased_running_var: bool,
    /// Eval mode: normalize with the running statistics (batch statistics when none are given).
    #[arg(long)]
    eval: bool,
    #[arg(long, value_enum, default_value = "nchw")]
    layout: LayoutArg,
    #[arg(long, value_enum, default_value = "gpu")]
    device: DeviceArg,
    /// Output directory (created if missing); files of an earlier run that this one does not
    /// write stay there, so give each run its own.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Clone, Copy)]
struct Momentum(Option<f32>);

fn parse_momentum(s: &str) -> std::result::Result<Momentum, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Momentum(None));
    }
    parse_f32(s)
        .map(|m| Momentum(Some(m)))
        .map_err(|e| format!("expected a number or `none`: {e}"))
}

/// An f32 as written, refused where f32 cannot hold it: `1e-50` would become 0 and `1e50`
/// inf, and the checks that follow would then name a value nobody typed.
fn parse_f32(s: &str) -> std::result::Result<f32, String> {
    let (Ok(narrow), Ok(wide)) = (s.parse::<f32>(), s.parse::<f64>()) else {
        return Err(format!("`{s}` is not a number"));
    };
    if (narrow == 0.0 && wide != 0.0) || (narrow.is_infinite() && wide.is_finite()) {
        return Err(format!("`{s}` is outside what f32 holds"));
    }
    Ok(narrow)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => demo(),
        Some(Command::Info) => info(),
        Some(Command::Bench(args)) => bench(&args),
        Some(Command::Forward(args)) => forward(&args),
        Some(Command::Backward { pass, dy }) => backward(&pass, &dy),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, and no terminal control, whatever a file's header or path held.
            let message: String = e
                .to_string()
                .chars()
                .map(|c| {
                    if c.is_control() {
                        c.escape_default().to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            err!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn layout(arg: LayoutArg) -> Layout {
    match arg {
        LayoutArg::Nchw => Layout::ChannelsFirst,
        LayoutArg::Nhwc => Layout::ChannelsLast,
    }
}

/// A per-channel vector from a .npy file: 1-d, as PyTorch's parameters are.
fn read_vector(path: &Path) -> Result<Vec<f32>> {
    let a = npy::read_f32(path)?;
    if a.ndim() != 1 {
        return Err(BnError::Npy {
            path: path.display().to_string(),
            reason: format!(
                "expected a 1-d per-channel vector, got shape {:?}",
                a.shape()
            ),
        });
    }
    Ok(a.iter().copied().collect())
}

/// The layer the options describe, with its inputs loaded and checked. Its count is set only
/// where the pass reads it (`uses_count`: a training forward), so that a count no u32 holds
/// refuses nothing else.
fn build_layer(args: &PassArgs, x: &ArrayD<f32>, uses_count: bool) -> Result<BatchNorm> {
    let layout = layout(args.layout);
    // The errors name the file whose shape it is.
    let refused = |reason: String| BnError::Npy {
        path: args.x.display().to_string(),
        reason,
    };
    let shape =
        wgpu_batchnorm::Shape::new(x.shape(), layout).map_err(|e| refused(e.to_string()))?;
    let channels = shape.channels();
    if channels == 0 {
        return Err(refused(format!(
            "shape {:?} has no channels (its channel dimension is zero)",
            x.shape()
        )));
    }
    let mut config = BatchNormConfig::new(channels);
    config.eps = args.eps;
    config.momentum = args.momentum.0;
    config.affine = args.gamma.is_some();
    config.track_running_stats = args.running_mean.is_some();
    if args.biased_running_var {
        config.running_var = RunningVar::Biased;
    }
    config.validate()?;
    let named = |name: &'static str, path: &Option<PathBuf>| -> Result<Option<Vec<f32>>> {
        let Some(path) = path else { return Ok(None) };
        let v = read_vector(path)?;
        if v.len() != channels {
            return Err(BnError::Length {
                name,
                expected: channels,
                got: v.len(),
            });
        }
        Ok(Some(v))
    };
    let gamma = named("gamma", &args.gamma)?;
    let beta = named("beta", &args.beta)?;
    let running_mean = named("running_mean", &args.running_mean)?;
    let running_var = named("running_var", &args.running_var)?;
    let device = match args.device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Gpu => Device::Gpu(GpuContext::new()?),
    };
    let mut layer = BatchNorm::new(config, device)?;
    if let (Some(g), Some(b)) = (gamma, beta) {
        layer.set_gamma(&g)?;
        layer.set_beta(&b)?;
    }
    if let (Some(m), Some(v)) = (running_mean, running_var) {
        layer.set_running_mean(&m)?;
        layer.set_running_var(&v)?;
    }
    if let (Some(count), true) = (args.num_batches_tracked, uses_count) {
        layer.set_num_batches_tracked(count)?;
    }
    layer.set_training(!args.eval);
    Ok(layer)
}

/// Files to write, all computed before the first is written.
struct Outputs(Vec<(&'static str, Vec<u8>)>);

impl Outputs {
    fn array(&mut self, name: &'static str, a: ArrayViewD<f32>) -> Result<()> {
        self.0.push((name, npy::to_bytes(&a)?));
        Ok(())
    }

    fn vector(&mut self, name: &'static str, v: &[f32]) -> Result<()> {
        self.array(name, ArrayView1::from(v).into_dyn())
    }

    /// Writes every file or changes none: each goes to a new temporary file beside its place,
    /// renamed into place once all are written, so that a failure (a full disk, a directory
    /// where a file goes) leaves an earlier run's files as they were and removes only what
    /// this run made. (A rename failing after others, in a directory this run just wrote
    /// into, would leave a mix; nothing short of a directory swap avoids that.)
    fn write(self, dir: &Path) -> Result<()> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| BnError::Io { path, source }
        };
        check_out_dir(dir)?;
        for (name, _) in &self.0 {
            let path = dir.join(name);
            if path.is_dir() {
                return Err(BnError::Config {
                    name: "--out",
                    value: path.display().to_string(),
                    reason: "is a directory where an output file goes",
                });
            }
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut made: Vec<(PathBuf, PathBuf)> = Vec::new();
        let remove = |made: &[(PathBuf, PathBuf)]| {
            for (temp, _) in made {
                let _ = std::fs::remove_file(temp);
            }
        };
        for (name, bytes) in &self.0 {
            let path = dir.join(name);
            // The process id and the time: a run killed while writing leaves its hidden file
            // behind, and a later run with the same id (PID 1 in a container) must not meet it.
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let temp = dir.join(format!(".{name}.{}.{stamp}.partial", std::process::id()));
            // create_new: never truncate, and so never remove, a file this run did not make.
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp);
            let mut file = match file {
                Ok(f) => f,
                Err(e) => {
                    remove(&made);
                    return Err(io(&path)(e));
                }
            };
            made.push((temp, path.clone()));
            // Flushed before any rename: a rename that reaches the disk before the data would
            // leave, after a crash, a short file where the earlier run's was.
            if let Err(e) = file.write_all(bytes).and_then(|()| file.sync_all()) {
                remove(&made);
                return Err(io(&path)(e));
            }
        }
        for (i, (temp, path)) in made.iter().enumerate() {
            if let Err(e) = std::fs::rename(temp, path) {
                remove(&made[i..]);
                return Err(io(path)(e));
            }
        }
        Ok(())
    }
}

/// `--out` names a file: refused before any work, and again before writing.
fn check_out_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(BnError::Config {
            name: "--out",
            value: dir.display().to_string(),
            reason: "is a file, not a directory",
        });
    }
    Ok(())
}

fn forward(args: &PassArgs) -> Result<()> {
    check_out_dir(&args.out)?;
    let x = npy::read_f32(&args.x)?;
    let mut layer = build_layer(args, &x, !args.eval)?;
    let out = layer.forward(x.view(), layout(args.layout))?;
    let mut files = Outputs(Vec::new());
    files.array("y.npy", out.y.view())?;
    if let Some(stats) = &out.stats {
        files.vector("mean.npy", &stats.mean)?;
        files.vector("var.npy", &stats.var)?;
        files.vector("invstd.npy", &stats.invstd)?;
    }
    // A tracked layer's training step updates the running statistics and counts itself.
    if let (true, Some(count)) = (layer.is_training(), layer.num_batches_tracked()) {
        files.vector("running_mean.npy", &layer.running_mean()?)?;
        files.vector("running_var.npy", &layer.running_var()?)?;
        files
            .0
            .push(("num_batches_tracked.txt", format!("{count}\n").into_bytes()));
    }
    files.write(&args.out)
}

fn backward(args: &PassArgs, dy_path: &Path) -> Result<()> {
    check_out_dir(&args.out)?;
    let x = npy::read_f32(&args.x)?;
    let dy = npy::read_f32(dy_path)?;
    wgpu_batchnorm::shape::expect_same_dims(x.shape(), dy.shape())?;
    // Training recomputes the batch statistics from x, as autograd would. That forward is no
    // step of the model's, and the gradient reads no count: the layer is left without the
    // given one, so that a count at the layer's limit (u32::MAX, refused as the next step's)
    // or past it refuses nothing.
    let mut layer = build_layer(args, &x, false)?;
    let layout = layout(args.layout);
    layer.forward(x.view(), layout)?;
    let grads = layer.backward(x.view(), dy.view(), layout)?;
    let mut files = Outputs(Vec::new());
    files.array("dx.npy", grads.dx.view())?;
    if let (Some(dgamma), Some(dbeta)) = (&grads.dgamma, &grads.dbeta) {
        files.vector("dgamma.npy", dgamma)?;
        files.vector("dbeta.npy", dbeta)?;
    }
    files.write(&args.out)
}

fn bench(args: &BenchArgs) -> Result<()> {
    use wgpu_batchnorm::bench::{
        check_shape, layout_name, shape_name, time_shape, verify_shape, Timing, DEFAULT_SHAPES,
    };
    let shapes: Vec<Vec<usize>> = match &args.shape {
        Some(s) => s.0.clone(),
        None => DEFAULT_SHAPES.iter().map(|s| s.to_vec()).collect(),
    };
    let mut runs = Vec::new();
    for dims in &shapes {
        wgpu_batchnorm::Shape::new(dims, Layout::ChannelsFirst)?;
        let layouts: &[Layout] = match args.layout {
            // Rank 2 is the same memory either way: one run, labelled nc.
            _ if dims.len() == 2 => &[Layout::ChannelsFirst],
            BenchLayout::Both => &[Layout::ChannelsFirst, Layout::ChannelsLast],
            BenchLayout::Nchw => &[Layout::ChannelsFirst],
            BenchLayout::Nhwc => &[Layout::ChannelsLast],
        };
        runs.extend(layouts.iter().map(|&l| (dims.clone(), l)));
    }
    let ctx = GpuContext::new()?;
    // Every shape is checked before any is timed, so that a bad one does not end the run late.
    for (dims, layout) in &runs {
        check_shape(&ctx, dims, *layout)?;
    }
    // One line rewritten in place on a terminal; one line per step in a log.
    let terminal = std::io::stderr().is_terminal();
    let mut progress = |msg: &str| {
        if terminal {
            err_part!("\r\x1b[2K{msg}");
        } else {
            err!("{msg}");
        }
    };
    // A terminal's progress line goes before anything else is printed: a row, or an error.
    fn cleared<T>(terminal: bool, r: Result<T>) -> Result<T> {
        if terminal {
            err_part!("\r\x1b[2K");
        }
        r
    }
    // And every kernel is verified against the CPU reference before a row is printed, so that
    // a wrong one leaves no figures behind.
    for (dims, layout) in &runs {
        let what = format!("{} {}", shape_name(dims), layout_name(dims, *layout));
        progress(&format!("{what}: verifying against the CPU reference"));
        cleared(terminal, verify_shape(&ctx, dims, *layout))?;
    }
    // Printed once every shape has run: a failure on a later shape (the copy roof's check,
    // an allocation) then leaves no figures of the earlier ones on stdout either.
    let mut lines = Vec::new();
    let adapter = ctx
        .adapter_info()
        .map(|i| format!("{} ({:?}, {})", i.name, i.backend, i.driver_info))
        .unwrap_or_default();
    if args.format == Format::Table {
        lines.push(format!("adapter: {adapter}"));
        if ctx.subgroups() {
            lines.push("reductions merge lanes with subgroup operations".to_string());
        }
        if !ctx.has_timestamps() {
            lines.push(
                "no timestamp queries on this adapter: GPU times are end to end only".to_string(),
            );
        }
        lines.push(format!(
            "{:<5} {:<14} {:<6} {:<9} {:<11} {:>10} {:>9} {:>6}",
            "impl", "shape", "layout", "pass", "timing", "median_ms", "GB/s", "roof"
        ));
    } else {
        lines.push("impl,shape,layout,pass,median_ms,gbps,timing".to_string());
    }
    for (dims, layout) in runs {
        let timed = time_shape(&ctx, &dims, layout, args.iters as usize, &mut progress);
        let rows = cleared(terminal, timed)?;
        // A command whose timestamps did not advance (a backend that writes zeros) keeps its
        // end-to-end row only; say so rather than leave its kernel row silently out.
        if ctx.has_timestamps() {
            for r in rows.iter().filter(|r| r.timing == Timing::EndToEnd) {
                let kernel_row = rows.iter().any(|k| {
                    k.timing == Timing::Kernel
                        && (k.implementation, k.pass) == (r.implementation, r.pass)
                });
                if r.implementation != "cpu" && !kernel_row {
                    let note = format!(
                        "{} {} {}: its timestamps did not advance, end-to-end time only",
                        r.shape, r.layout, r.pass
                    );
                    err!("warning: {note}");
                    if args.format == Format::Table {
                        lines.push(note);
                    }
                }
            }
        }
        for r in rows {
            if args.format == Format::Csv {
                lines.push(format!(
                    "{},{},{},{},{:.6},{:.2},{}",
                    r.implementation,
                    r.shape,
                    r.layout,
                    r.pass,
                    r.median_ms,
                    r.gbps,
                    r.timing.name()
                ));
            } else {
                let roof = r.roof.map(|v| format!("{v:.2}")).unwrap_or_default();
                lines.push(format!(
                    "{:<5} {:<14} {:<6} {:<9} {:<11} {:>10.4} {:>9.2} {:>6}",
                    r.implementation,
                    r.shape,
                    r.layout,
                    r.pass,
                    r.timing.name(),
                    r.median_ms,
                    r.gbps,
                    roof
                ));
            }
        }
    }
    for line in lines {
        out!("{line}");
    }
    Ok(())
}

fn info() -> Result<()> {
    let adapters = list_adapters()?;
    out!("adapters found: {}", adapters.len());
    for a in &adapters {
        let i = &a.info;
        out!(
            "  {} | backend {:?} | type {:?} | driver {} {}{}",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            if a.compute_shaders {
                ""
            } else {
                " | no compute shaders"
            }
        );
    }
    let ctx = GpuContext::new()?;
    if let Some(i) = ctx.adapter_info() {
        out!("chosen: {} ({:?})", i.name, i.backend);
    }
    out!(
        "reductions: {}",
        if ctx.subgroups() {
            "subgroup operations, then workgroup memory"
        } else if !ctx.device().features().contains(wgpu::Features::SUBGROUP) {
            "workgroup memory (no subgroups)"
        } else if ctx
            .adapter_info()
            .is_some_and(|i| i.device_type == wgpu::DeviceType::Cpu)
        {
            "workgroup memory (subgroups unused on a CPU rasterizer)"
        } else {
            "workgroup memory (subgroups not full runs of consecutive invocations of one size)"
        }
    );
    let l = ctx.limits();
    out!("limits:");
    out!(
        "  max_storage_buffer_binding_size   {}",
        l.max_storage_buffer_binding_size
    );
    out!("  max_buffer_size                   {}", l.max_buffer_size);
    out!(
        "  max_compute_workgroups_per_dim    {}",
        l.max_compute_workgroups_per_dimension
    );
    out!(
        "  max_compute_invocations_per_group {}",
        l.max_compute_invocations_per_workgroup
    );
    out!(
        "  max_compute_workgroup_storage     {}",
        l.max_compute_workgroup_storage_size
    );
    out!(
        "  max_storage_buffers_per_stage     {}",
        l.max_storage_buffers_per_shader_stage
    );
    out!(
        "  min_storage_buffer_offset_align   {}",
        l.min_storage_buffer_offset_alignment
    );
    Ok(())
}

fn demo() -> Result<()> {
    let dims = [32usize, 64, 56, 56];
    let layout = Layout::ChannelsFirst;
    let ctx = GpuContext::new()?;
    if let Some(i) = ctx.adapter_info() {
        out!(
            "adapter: {} ({:?}, {:?}, {})",
            i.name,
            i.backend,
            i.device_type,
            i.driver_info
        );
    }
    out!("input: {dims:?} float32, channels first; forward (training) + backward\n");
    let x = input(&dims, 1, 0.5, 2.0);
    let dy = input(&dims, 2, 0.0, 1.0);
    let mut gpu = BatchNorm::new(BatchNormConfig::new(dims[1]), Device::Gpu(ctx))?;
    let mut cpu = BatchNorm::new(BatchNormConfig::new(dims[1]), Device::Cpu)?;

    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let start = Instant::now();
        f()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    };
    // Warm up the GPU plan (buffers are made on first use), then time one step each.
    gpu.forward(x.view(), layout)?;
    gpu.backward(x.view(), dy.view(), layout)?;
    let mut g_fwd = None;
    let mut g_bwd = None;
    let t_gpu_f = timed(&mut || {
        g_fwd = Some(gpu.forward(x.view(), layout)?);
        Ok(())
    })?;
    let t_gpu_b = timed(&mut || {
        g_bwd = Some(gpu.backward(x.view(), dy.view(), layout)?);
        Ok(())
    })?;
    let mut c_fwd = None;
    let mut c_bwd = None;
    let t_cpu_f = timed(&mut || {
        c_fwd = Some(cpu.forward(x.view(), layout)?);
        Ok(())
    })?;
    let t_cpu_b = timed(&mut || {
        c_bwd = Some(cpu.backward(x.view(), dy.view(), layout)?);
        Ok(())
    })?;
    let (gf, gb) = (g_fwd.expect("ran"), g_bwd.expect("ran"));
    let (cf, cb) = (c_fwd.expect("ran"), c_bwd.expect("ran"));
    let eps = cpu.config().eps;
    let paths = dx_paths(&cf, &cpu.gamma()?, &cpu.running_var()?, eps, &dy);
    let errors = output_errors((&gf, &gb), (&cf, &cb), paths);
    let (worst_name, worst) =
        errors.iter().fold(
            ("", 0.0f64),
            |acc, &(n, e)| if e > acc.1 { (n, e) } else { acc },
        );
    out!("largest relative L2 difference GPU vs CPU: {worst:.2e} ({worst_name})\n");
    out!("{:<10} {:>14} {:>14}", "pass", "gpu ms", "cpu ms");
    out!("{:<10} {:>14.1} {:>14.1}", "forward", t_gpu_f, t_cpu_f);
    out!("{:<10} {:>14.1} {:>14.1}", "backward", t_gpu_b, t_cpu_b);
    out!("\ngpu times are end to end: upload, kernels and read back of the ndarray API.");
    Ok(())
}
