//! PyTorch parity: runs the `batchnorm` CLI on every golden case under
//! `tests/fixtures/pytorch/<case>/` (written by `tests/fixtures/gen_pytorch.py`
//! from `torch.nn.BatchNorm{1,2,3}d` in float64) and compares its outputs.
//!
//! For each case, device (`gpu`, `cpu`) and mode (`forward`, `backward`) the CLI
//! writes into a fresh temp directory, which must then hold exactly the expected
//! files: forward writes every file in `expected/` except `dx`/`dgamma`/`dbeta`,
//! backward writes exactly those of `dx`/`dgamma`/`dbeta` that are in `expected/`.
//! Every array must be float32 with the expected shape and a relative L2 error
//! `||got - exp|| / ||exp||` of at most 1e-5 (absolute when `exp` is all zeros);
//! `num_batches_tracked.txt` must hold the same integer. All failures are collected
//! and reported together.
//!
//! Run: `cargo test --release --test pytorch_parity -- --nocapture`
//! Set `BATCHNORM_PARITY_DEVICES=cpu` (comma separated) to restrict the devices.
//!
//! The .npy reader here is deliberately independent of the crate's own reader, so
//! a bug there cannot cancel out when both sides are read.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Relative L2 tolerance (absolute when the expected array is all zeros).
const TOL: f64 = 1e-5;
/// Outputs that belong to `backward`; every other expected file belongs to `forward`.
const BACKWARD_FILES: [&str; 3] = ["dx.npy", "dgamma.npy", "dbeta.npy"];
const NBT_FILE: &str = "num_batches_tracked.txt";
/// A single CLI run taking longer than this is killed and reported.
const CHILD_TIMEOUT: Duration = Duration::from_secs(300);
/// Every case `tests/fixtures/gen_pytorch.py` writes: a missing one (the channels-last cases,
/// say) fails the run rather than shrinking what it checks.
const CASES: [&str; 20] = [
    "bn1d_2d_eval",
    "bn1d_2d_train",
    "bn1d_3d_train",
    "bn1d_3d_train_nhwc",
    "bn2d_affine_off",
    "bn2d_eval",
    "bn2d_eval_affine_off",
    "bn2d_eval_nhwc",
    "bn2d_large_mean",
    "bn2d_momentum_0.3_eps_1e-3",
    "bn2d_momentum_none",
    "bn2d_momentum_none_fresh",
    "bn2d_train",
    "bn2d_train_nbt5",
    "bn2d_train_nhwc",
    "bn2d_untracked_eval",
    "bn2d_untracked_eval_nhwc",
    "bn2d_untracked_train",
    "bn3d_train",
    "bn3d_train_nhwc",
];

fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pytorch")
}

fn case_dirs() -> Vec<PathBuf> {
    let root = fixtures_root();
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let names: Vec<String> = dirs.iter().map(|d| case_name(d)).collect();
    assert_eq!(names, CASES, "fixture cases under {}", root.display());
    dirs
}

fn case_name(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------- .npy reading

#[derive(Clone, Debug)]
struct Npy {
    shape: Vec<usize>,
    data: Vec<f32>,
}

/// Reads a little-endian float32, C-order .npy file (format versions 1, 2 and 3).
/// Anything else (another dtype, Fortran order, trailing bytes) is an error.
fn read_npy(path: &Path) -> Result<Npy, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_npy(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_npy(bytes: &[u8]) -> Result<Npy, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let end = start + header_len;
    if bytes.len() < end {
        return Err("truncated header".into());
    }
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| "header is not UTF-8")?;

    let descr = header_value(header, "descr")?;
    let descr = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or_else(|| format!("bad descr in header {header:?}"))?;
    if descr != "<f4" {
        return Err(format!("dtype is {descr:?}, expected '<f4' (float32)"));
    }
    let fortran = header_value(header, "fortran_order")?;
    if !fortran.starts_with("False") {
        return Err(format!("fortran_order is not False in header {header:?}"));
    }
    let shape_str = header_value(header, "shape")?;
    let inner = shape_str
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| format!("bad shape in header {header:?}"))?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape entry {s:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let count: usize = shape.iter().product();
    let payload = &bytes[end..];
    if payload.len() != count * 4 {
        return Err(format!(
            "shape {shape:?} needs {} data bytes, file has {}",
            count * 4,
            payload.len()
        ));
    }
    let data = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Npy { shape, data })
}

/// The text right after `'key':` in a .npy header dict.
fn header_value<'a>(header: &'a str, key: &str) -> Result<&'a str, String> {
    let pat = format!("'{key}':");
    let at = header
        .find(&pat)
        .ok_or_else(|| format!("no {key:?} in header {header:?}"))?;
    Ok(header[at + pat.len()..].trim_start())
}

// ---------------------------------------------------------------- comparison

/// Ok(error) when `got` matches `exp` within TOL, else a description of the mismatch.
fn compare(got: &Npy, exp: &Npy) -> Result<f64, String> {
    if got.shape != exp.shape {
        return Err(format!("shape {:?}, expected {:?}", got.shape, exp.shape));
    }
    if let Some(i) = got.data.iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "non-finite value {} at flat index {i}",
            got.data[i]
        ));
    }
    let mut diff2 = 0.0f64;
    let mut exp2 = 0.0f64;
    let mut worst = (0usize, 0.0f64);
    for (i, (&g, &e)) in got.data.iter().zip(&exp.data).enumerate() {
        let d = g as f64 - e as f64;
        diff2 += d * d;
        exp2 += (e as f64) * (e as f64);
        if d.abs() > worst.1 {
            worst = (i, d.abs());
        }
    }
    let (err, kind) = if exp2 == 0.0 {
        (diff2.sqrt(), "absolute")
    } else {
        ((diff2 / exp2).sqrt(), "relative")
    };
    if err <= TOL {
        Ok(err)
    } else {
        let i = worst.0;
        Err(format!(
            "{kind} L2 error {err:.3e} > {TOL:e}; worst at flat index {i}: got {} expected {}",
            got.data[i], exp.data[i]
        ))
    }
}

fn read_count(path: &Path) -> Result<u64, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: not an integer: {text:?}", path.display()))
}

// ---------------------------------------------------------------- running the CLI

static RUN_COUNTER: AtomicUsize = AtomicUsize::new(0);

fn fresh_dir(label: &str) -> PathBuf {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("bn-parity-{}-{n}-{label}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    dir
}

/// A private XDG_RUNTIME_DIR for the child processes (mode 0700, as the spec wants).
fn xdg_runtime_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bn-parity-xdg-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

/// gpu and cpu, or those that BATCHNORM_PARITY_DEVICES names; a list naming neither, or
/// something else, fails rather than checking less than it seems to.
fn devices() -> Vec<String> {
    let devices: Vec<String> = match std::env::var("BATCHNORM_PARITY_DEVICES") {
        Ok(s) => s
            .split(',')
            .map(|d| d.trim().to_string())
            .filter(|d| !d.is_empty())
            .collect(),
        Err(_) => vec!["gpu".into(), "cpu".into()],
    };
    assert!(
        !devices.is_empty() && devices.iter().all(|d| d == "gpu" || d == "cpu"),
        "BATCHNORM_PARITY_DEVICES must name gpu, cpu or both, comma separated: {devices:?}"
    );
    if !devices.iter().any(|d| d == "gpu") {
        eprintln!("note: BATCHNORM_PARITY_DEVICES leaves the GPU out of the parity check");
    }
    devices
}

fn cli_args(case: &Path, mode: &str, device: &str, out: &Path) -> Result<Vec<String>, String> {
    let p = |name: &str| case.join(name).to_string_lossy().into_owned();
    let mut args = vec![mode.to_string(), "--x".into(), p("x.npy")];
    if case.join("gamma.npy").exists() {
        args.extend([
            "--gamma".into(),
            p("gamma.npy"),
            "--beta".into(),
            p("beta.npy"),
        ]);
    }
    if case.join("running_mean.npy").exists() {
        args.extend([
            "--running-mean".into(),
            p("running_mean.npy"),
            "--running-var".into(),
            p("running_var.npy"),
        ]);
    }
    let extra = fs::read_to_string(case.join("args.txt")).map_err(|e| format!("args.txt: {e}"))?;
    args.extend(extra.split_whitespace().map(String::from));
    args.extend(["--device".into(), device.into()]);
    if mode == "backward" {
        args.extend(["--dy".into(), p("dy.npy")]);
    }
    args.extend(["--out".into(), out.to_string_lossy().into_owned()]);
    Ok(args)
}

/// Runs the CLI with its output going to files (no pipe can fill up), with a timeout.
fn run_cli(args: &[String], log_dir: &Path, xdg: &Path) -> Result<(), String> {
    let stdout_path = log_dir.join("stdout.txt");
    let stderr_path = log_dir.join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_batchnorm"))
        .args(args)
        .env("XDG_RUNTIME_DIR", xdg)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .map_err(|e| format!("spawning the CLI failed: {e}"))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > CHILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "timed out after {CHILD_TIMEOUT:?}; stderr:\n{}",
                    fs::read_to_string(&stderr_path).unwrap_or_default()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for the CLI failed: {e}")),
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the CLI failed ({status}); command: batchnorm {}\nstderr:\n{}",
            args.join(" "),
            fs::read_to_string(&stderr_path).unwrap_or_default()
        ))
    }
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The files `mode` must write, from the case's expected/ directory.
fn expected_outputs(case: &Path, mode: &str) -> BTreeSet<String> {
    file_names(&case.join("expected"))
        .into_iter()
        .filter(|f| BACKWARD_FILES.contains(&f.as_str()) == (mode == "backward"))
        .collect()
}

/// Runs one case/device/mode and compares. Returns the failures (empty on success)
/// and, for the summary, the worst error seen.
fn check_run(case: &Path, device: &str, mode: &str, xdg: &Path) -> (Vec<String>, f64) {
    let name = case_name(case);
    let tag = format!("{name} [{device} {mode}]");
    let run_dir = fresh_dir(&format!("{name}-{device}-{mode}"));
    let out = run_dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let mut failures = Vec::new();
    let mut worst = 0.0f64;

    let result = cli_args(case, mode, device, &out).and_then(|args| run_cli(&args, &run_dir, xdg));
    if let Err(e) = result {
        failures.push(format!("{tag}: {e}"));
    } else {
        let want = expected_outputs(case, mode);
        let got = file_names(&out);
        for missing in want.difference(&got) {
            failures.push(format!("{tag} {missing}: missing from the output"));
        }
        for extra in got.difference(&want) {
            failures.push(format!("{tag} {extra}: unexpected extra output"));
        }
        for file in want.intersection(&got) {
            let got_path = out.join(file);
            let exp_path = case.join("expected").join(file);
            let outcome = if file == NBT_FILE {
                match (read_count(&got_path), read_count(&exp_path)) {
                    (Ok(g), Ok(e)) if g == e => Ok(0.0),
                    (Ok(g), Ok(e)) => Err(format!("got {g}, expected {e}")),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            } else {
                match (read_npy(&got_path), read_npy(&exp_path)) {
                    (Ok(g), Ok(e)) => compare(&g, &e),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            };
            match outcome {
                Ok(err) => worst = worst.max(err),
                Err(e) => failures.push(format!("{tag} {file}: {e}")),
            }
        }
    }
    if failures.is_empty() {
        let _ = fs::remove_dir_all(&run_dir);
    } else {
        failures.push(format!(
            "{tag}: (outputs and logs kept in {})",
            run_dir.display()
        ));
    }
    (failures, worst)
}

// ---------------------------------------------------------------- tests

#[test]
fn cli_matches_pytorch_goldens() {
    let cases = case_dirs();
    let xdg = xdg_runtime_dir();
    let mut failures = Vec::new();
    let mut runs = 0;
    let mut failed_runs = 0;
    // Sequential on purpose: one CLI process (one GPU context) at a time.
    for device in devices() {
        for case in &cases {
            for mode in ["forward", "backward"] {
                let (f, worst) = check_run(case, &device, mode, &xdg);
                runs += 1;
                println!(
                    "{:36} {device:3} {mode:8} {}",
                    case_name(case),
                    if f.is_empty() {
                        format!("ok (worst error {worst:.2e})")
                    } else {
                        "FAILED".to_string()
                    }
                );
                if !f.is_empty() {
                    failed_runs += 1;
                    failures.push(f.join("\n"));
                }
            }
        }
    }
    let _ = fs::remove_dir_all(&xdg);
    assert_eq!(runs, devices().len() * CASES.len() * 2, "runs made");
    assert!(
        failures.is_empty(),
        "{failed_runs} of {runs} CLI runs failed:\n\n{}",
        failures.join("\n\n")
    );
}

#[test]
fn fixtures_are_complete() {
    let cases = case_dirs();
    for case in &cases {
        let name = case_name(case);
        for f in [
            "x.npy",
            "dy.npy",
            "args.txt",
            "expected/y.npy",
            "expected/dx.npy",
        ] {
            assert!(case.join(f).is_file(), "{name}: {f} missing");
        }
        assert_eq!(
            case.join("gamma.npy").exists(),
            case.join("beta.npy").exists(),
            "{name}: gamma/beta come together"
        );
        assert_eq!(
            case.join("gamma.npy").exists(),
            case.join("expected/dgamma.npy").exists(),
            "{name}: dgamma expected exactly when affine"
        );
        let x = read_npy(&case.join("x.npy")).unwrap();
        let y = read_npy(&case.join("expected/y.npy")).unwrap();
        let dy = read_npy(&case.join("dy.npy")).unwrap();
        let dx = read_npy(&case.join("expected/dx.npy")).unwrap();
        assert_eq!(x.shape, y.shape, "{name}: y shape");
        assert_eq!(x.shape, dy.shape, "{name}: dy shape");
        assert_eq!(x.shape, dx.shape, "{name}: dx shape");
        for f in expected_outputs(case, "forward") {
            if f != NBT_FILE {
                read_npy(&case.join("expected").join(&f)).unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------- the goldens themselves

/// A case's switches, from its files and args.txt, with the CLI's defaults.
struct Switches {
    eval: bool,
    channels_last: bool,
    momentum: Option<f64>,
    eps: f64,
    nbt: u64,
}

fn switches(case: &Path) -> Switches {
    let args = fs::read_to_string(case.join("args.txt")).unwrap();
    let words: Vec<&str> = args.split_whitespace().collect();
    let value = |flag: &str| {
        let at = words.iter().position(|w| *w == flag)?;
        Some(words[at + 1])
    };
    Switches {
        eval: words.contains(&"--eval"),
        channels_last: value("--layout") == Some("nhwc"),
        momentum: match value("--momentum") {
            Some("none") => None,
            Some(m) => Some(m.parse().unwrap()),
            None => Some(0.1),
        },
        eps: value("--eps").map_or(1e-5, |e| e.parse().unwrap()),
        nbt: value("--num-batches-tracked").map_or(0, |n| n.parse().unwrap()),
    }
}

/// What PyTorch's BatchNorm gives on a case's inputs, worked out here in f64 from the
/// formulas alone (not with the crate's reference): per channel, the mean and the biased
/// variance normalize in training (and in eval without running statistics), the running
/// statistics in eval; the running mean and the unbiased variance move by momentum, or by
/// 1/(count + 1) for momentum None; dx = gamma·invstd/M·(M·dy − Σdy − x̂·Σdy·x̂) through
/// batch statistics, gamma·invstd·dy through running ones.
fn closed_form(case: &Path) -> Vec<(String, Vec<f64>)> {
    let sw = switches(case);
    let x = read_npy(&case.join("x.npy")).unwrap();
    let dy = read_npy(&case.join("dy.npy")).unwrap();
    let optional = |name: &str| {
        let path = case.join(name);
        path.exists().then(|| read_npy(&path).unwrap().data)
    };
    let (gamma, beta) = (optional("gamma.npy"), optional("beta.npy"));
    let (rm, rv) = (optional("running_mean.npy"), optional("running_var.npy"));
    let dims = &x.shape;
    let (channels, inner) = if sw.channels_last {
        (dims[dims.len() - 1], 1)
    } else {
        (dims[1], dims[2..].iter().product())
    };
    let channel_of = |i: usize| (i / inner) % channels;
    let m = (x.data.len() / channels) as f64;
    let per_channel = |f: &dyn Fn(usize) -> f64| {
        let mut sums = vec![0.0; channels];
        for i in 0..x.data.len() {
            sums[channel_of(i)] += f(i);
        }
        sums
    };
    let xv = |i: usize| x.data[i] as f64;
    let dyv = |i: usize| dy.data[i] as f64;
    let mean: Vec<f64> = per_channel(&xv).iter().map(|s| s / m).collect();
    let var: Vec<f64> = per_channel(&|i| (xv(i) - mean[channel_of(i)]).powi(2))
        .iter()
        .map(|s| s / m)
        .collect();
    let batch = !sw.eval || rm.is_none();
    let (center, spread): (Vec<f64>, Vec<f64>) = if batch {
        (mean.clone(), var.clone())
    } else {
        let f = |v: &Option<Vec<f32>>| v.as_ref().unwrap().iter().map(|&a| a as f64).collect();
        (f(&rm), f(&rv))
    };
    let invstd: Vec<f64> = spread.iter().map(|v| 1.0 / (v + sw.eps).sqrt()).collect();
    let g = |c: usize| gamma.as_ref().map_or(1.0, |g| g[c] as f64);
    let b = |c: usize| beta.as_ref().map_or(0.0, |b| b[c] as f64);
    let xhat = |i: usize| (xv(i) - center[channel_of(i)]) * invstd[channel_of(i)];
    let y = (0..x.data.len())
        .map(|i| xhat(i) * g(channel_of(i)) + b(channel_of(i)))
        .collect();
    let sum_dy = per_channel(&dyv);
    let sum_dy_xhat = per_channel(&|i| dyv(i) * xhat(i));
    let dx = (0..x.data.len())
        .map(|i| {
            let c = channel_of(i);
            if batch {
                g(c) * invstd[c] / m * (m * dyv(i) - sum_dy[c] - xhat(i) * sum_dy_xhat[c])
            } else {
                g(c) * invstd[c] * dyv(i)
            }
        })
        .collect();
    let mut out = vec![("y.npy".to_string(), y), ("dx.npy".to_string(), dx)];
    if gamma.is_some() {
        out.push(("dgamma.npy".into(), sum_dy_xhat));
        out.push(("dbeta.npy".into(), sum_dy));
    }
    if batch {
        out.push(("mean.npy".into(), mean.clone()));
        out.push(("var.npy".into(), var.clone()));
        out.push(("invstd.npy".into(), invstd));
    }
    if let (false, Some(rm), Some(rv)) = (sw.eval, &rm, &rv) {
        let factor = sw.momentum.unwrap_or(1.0 / (sw.nbt + 1) as f64);
        let moved = |old: &[f32], new: &[f64]| {
            old.iter()
                .zip(new)
                .map(|(&o, &n)| (1.0 - factor) * o as f64 + factor * n)
                .collect()
        };
        let unbiased: Vec<f64> = var.iter().map(|v| v * m / (m - 1.0)).collect();
        out.push(("running_mean.npy".into(), moved(rm, &mean)));
        out.push(("running_var.npy".into(), moved(rv, &unbiased)));
    }
    out
}

/// The goldens agree with PyTorch's formulas worked out independently here, far inside
/// the CLI's tolerance: goldens regenerated by something other than PyTorch (the crate's
/// own CLI, say) with a semantic error in them would fail here though the CLI matched them.
/// Every expected file is accounted for, the count included.
#[test]
fn goldens_match_the_closed_form() {
    const GOLDEN_TOL: f64 = 1e-6;
    let mut failures = Vec::new();
    for case in case_dirs() {
        let name = case_name(&case);
        let mut unchecked = file_names(&case.join("expected"));
        for (file, want) in closed_form(&case) {
            assert!(
                unchecked.remove(&file),
                "{name}: {file} not among the goldens"
            );
            let golden = read_npy(&case.join("expected").join(&file)).unwrap();
            let (mut diff2, mut norm2) = (0.0f64, 0.0f64);
            for (&g, &w) in golden.data.iter().zip(&want) {
                diff2 += (g as f64 - w).powi(2);
                norm2 += w * w;
            }
            let err = (diff2 / norm2.max(1e-300)).sqrt();
            if golden.data.len() != want.len() || err > GOLDEN_TOL {
                failures.push(format!("{name}/{file}: relative L2 error {err:.2e}"));
            }
        }
        if unchecked.remove(NBT_FILE) {
            let sw = switches(&case);
            let count = read_count(&case.join("expected").join(NBT_FILE)).unwrap();
            assert_eq!(count, sw.nbt + 1, "{name}: a training step counts one");
        }
        assert!(unchecked.is_empty(), "{name}: {unchecked:?} unchecked");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn comparison_catches_a_wrong_answer() {
    let path = fixtures_root().join("bn2d_train/expected/y.npy");
    let exp = read_npy(&path).unwrap();
    assert_eq!(compare(&exp, &exp).unwrap(), 0.0);

    // One element off by 1e-3 of the array's norm: relative error 1e-3 >> 1e-5.
    let norm = exp
        .data
        .iter()
        .map(|&v| (v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let mut wrong = exp.clone();
    wrong.data[7] += (1e-3 * norm) as f32;
    let err = compare(&wrong, &exp).expect_err("a 1e-3 relative perturbation must fail");
    assert!(err.contains("flat index 7"), "{err}");

    // Rounding-level noise passes.
    let mut close = exp.clone();
    for v in close.data.iter_mut() {
        *v *= 1.0 + 1e-7;
    }
    compare(&close, &exp).unwrap();

    // Shape, NaN and all-zero (absolute) handling.
    let mut reshaped = exp.clone();
    reshaped.shape = vec![exp.data.len()];
    assert!(compare(&reshaped, &exp).is_err());
    let mut nan = exp.clone();
    nan.data[0] = f32::NAN;
    assert!(compare(&nan, &exp).is_err());
    let zeros = Npy {
        shape: vec![4],
        data: vec![0.0; 4],
    };
    compare(&zeros, &zeros).unwrap();
    let tiny = Npy {
        shape: vec![4],
        data: vec![1e-7, 0.0, 0.0, 0.0],
    };
    compare(&tiny, &zeros).unwrap();
    let big = Npy {
        shape: vec![4],
        data: vec![1e-3, 0.0, 0.0, 0.0],
    };
    assert!(compare(&big, &zeros).is_err());
}

#[test]
fn npy_reader_rejects_what_it_cannot_read() {
    let header = |descr: &str, fortran: &str, shape: &str| {
        let mut h =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b
    };
    let mut ok = header("<f4", "False", "(2, 1)");
    ok.extend(1.5f32.to_le_bytes());
    ok.extend((-2.0f32).to_le_bytes());
    let a = parse_npy(&ok).unwrap();
    assert_eq!(a.shape, vec![2, 1]);
    assert_eq!(a.data, vec![1.5, -2.0]);

    let mut f8 = header("<f8", "False", "(1,)");
    f8.extend(1.0f64.to_le_bytes());
    assert!(parse_npy(&f8).is_err());
    let mut fortran = header("<f4", "True", "(1,)");
    fortran.extend(1.0f32.to_le_bytes());
    assert!(parse_npy(&fortran).is_err());
    let mut short = header("<f4", "False", "(3,)");
    short.extend(1.0f32.to_le_bytes());
    assert!(parse_npy(&short).is_err());
}
