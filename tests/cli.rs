//! The `batchnorm` CLI's file contract and its refusals.
//!
//! Refusals: every bad input (wrong dtype, Fortran order, truncated or malformed .npy, wrong
//! magic, x/dy shape mismatch, per-channel vectors of the wrong length, rank outside 2..=5,
//! no channels, bad eps or momentum, training with one value per channel) must exit
//! non-zero but never 101 (a Rust panic), print exactly one stderr line starting with
//! `error:`, and leave no file in `--out`. Clap's own usage errors (missing or conflicting
//! flags) may print several lines but must still start with `error:`, exit non-zero (not 101)
//! and leave nothing behind. Every case runs on `--device cpu`; a representative subset also
//! on `--device gpu`.
//!
//! File contract: each mode writes exactly its set of files, every array keeps the input's
//! shape (or is one value per channel) and reads back as `'<f4'`, and
//! `num_batches_tracked.txt` holds K+1 after one training step from `--num-batches-tracked K`.
//!
//! All bad .npy files are built here by hand. Within each test every case runs, and the
//! failures are reported together in one assertion message.
//!
//! Run: `cargo test --release --test cli`

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wgpu_batchnorm::npy;

const BIN: &str = env!("CARGO_BIN_EXE_batchnorm");
/// A single CLI run taking longer than this is killed and reported.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// .npy builders

fn shape_text(shape: &[usize]) -> String {
    match shape {
        [] => "()".to_string(),
        [n] => format!("({n},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A version `major`.0 .npy file with this exact header text (padded with spaces and ended
/// with '\n' so the data starts at a multiple of 64 bytes, as numpy does) followed by `data`.
fn npy_raw(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let len_size = if major == 1 { 2 } else { 4 };
    let mut h = header.to_string();
    while !(8 + len_size + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if len_size == 2 {
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out
}

/// A v1.0 .npy with the given descr, fortran_order and shape, followed by `data_bytes` bytes
/// of data (which need not match the shape).
fn npy_file(descr: &str, fortran: bool, shape: &[usize], data_bytes: usize) -> Vec<u8> {
    let header = format!(
        "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {}, }}",
        if fortran { "True" } else { "False" },
        shape_text(shape)
    );
    let data: Vec<u8> = (0..data_bytes).map(|i| (i * 37 % 251) as u8).collect();
    npy_raw(1, &header, &data)
}

/// A valid little-endian float32 C-order file holding `values`.
fn f32_values(shape: &[usize], values: &[f32]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), values.len());
    let header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': {}, }}",
        shape_text(shape)
    );
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy_raw(1, &header, &data)
}

/// A valid float32 file of this shape with varied, deterministic values.
fn f32_npy(shape: &[usize]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|i| ((i * 7919 + 13) % 23) as f32 * 0.25 - 2.5)
        .collect();
    f32_values(shape, &values)
}

/// A valid per-channel vector of length `c` with positive values (fit for running_var too).
fn vec_npy(c: usize) -> Vec<u8> {
    let values: Vec<f32> = (0..c).map(|i| 0.5 + 0.25 * i as f32).collect();
    f32_values(&[c], &values)
}

// ---------------------------------------------------------------------------------------------
// Scratch directories and running the CLI

/// A unique directory under the system temp dir, removed on drop.
struct Scratch {
    dir: PathBuf,
    outs: AtomicUsize,
}

impl Scratch {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("batchnorm-cli-{}-{tag}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Self {
            dir,
            outs: AtomicUsize::new(0),
        }
    }

    /// Writes `bytes` to `name` in the scratch dir and returns its path as a string.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.dir.join(name);
        fs::write(&path, bytes).expect("write input");
        path.display().to_string()
    }

    /// A path in the scratch dir, not created.
    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A fresh, non-existent output directory.
    fn fresh_out(&self, label: &str) -> PathBuf {
        let n = self.outs.fetch_add(1, Ordering::Relaxed);
        let clean: String = label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.dir.join(format!("out-{n}-{clean}"))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Runs the CLI; `Err` when it cannot be spawned or overruns `CHILD_TIMEOUT`.
fn run(args: &[String]) -> Result<Output, String> {
    run_with_env(args, &[])
}

/// Gives `cmd` a private runtime directory where the environment has none: Mesa prints
/// "XDG_RUNTIME_DIR is invalid" without one, environment noise, not the CLI's.
fn with_runtime_dir(cmd: &mut Command) {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let xdg = std::env::temp_dir().join(format!("batchnorm-cli-xdg-{}", std::process::id()));
        let _ = fs::create_dir_all(&xdg);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = fs::set_permissions(&xdg, fs::Permissions::from_mode(0o700));
        }
        cmd.env("XDG_RUNTIME_DIR", xdg);
    }
}

/// `run` with these environment variables set besides.
fn run_with_env(args: &[String], env: &[(&str, &str)]) -> Result<Output, String> {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    with_runtime_dir(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot spawn {BIN}: {e}"))?;
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > CHILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {CHILD_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("wait failed: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

fn shell_line(args: &[String]) -> String {
    let mut s = "batchnorm".to_string();
    for a in args {
        s.push(' ');
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"\\$".contains(c)) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(a);
        }
    }
    s
}

/// The names of what `dir` holds; empty when it does not exist.
fn listing(dir: &Path) -> Result<BTreeSet<String>, String> {
    if !dir.exists() {
        return Ok(BTreeSet::new());
    }
    if !dir.is_dir() {
        return Err(format!("{} exists but is not a directory", dir.display()));
    }
    let entries = fs::read_dir(dir).map_err(|e| format!("read_dir {}: {e}", dir.display()))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// Whether a case's error comes from the CLI (one line) or from clap's usage checks.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    OneLine,
    Clap,
}

struct Refusal {
    name: String,
    kind: Kind,
    args: Vec<String>,
    out: PathBuf,
}

struct Refusals<'a> {
    scratch: &'a Scratch,
    device: &'static str,
    cases: Vec<Refusal>,
}

impl<'a> Refusals<'a> {
    fn new(scratch: &'a Scratch, device: &'static str) -> Self {
        Self {
            scratch,
            device,
            cases: Vec::new(),
        }
    }

    /// A case: `args` is everything but `--device` and `--out`, which are appended.
    fn add(&mut self, name: &str, kind: Kind, args: Vec<String>) {
        let out = self.scratch.fresh_out(name);
        let mut args = args;
        args.extend(strs(&["--device", self.device, "--out"]));
        args.push(out.display().to_string());
        self.cases.push(Refusal {
            name: format!("{name} [{}]", self.device),
            kind,
            args,
            out,
        });
    }

    fn forward(&mut self, name: &str, args: &[&str]) {
        let mut v = strs(&["forward"]);
        v.extend(strs(args));
        self.add(name, Kind::OneLine, v);
    }

    fn backward(&mut self, name: &str, args: &[&str]) {
        let mut v = strs(&["backward"]);
        v.extend(strs(args));
        self.add(name, Kind::OneLine, v);
    }

    fn clap(&mut self, name: &str, args: &[&str]) {
        self.add(name, Kind::Clap, strs(args));
    }

    /// Runs every case and panics with all the violations together.
    fn check_all(self) {
        let total = self.cases.len();
        let mut failures = Vec::new();
        for case in &self.cases {
            if let Some(problem) = check_refusal(case) {
                failures.push(problem);
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {total} refusal cases broke the contract:\n\n{}",
            failures.len(),
            failures.join("\n\n")
        );
        let named = self
            .cases
            .iter()
            .filter(|c| c.kind == Kind::Clap || !expected_mentions(c).is_empty())
            .count();
        eprintln!(
            "{total} refusal cases on {} held the contract, {named} naming what they are about",
            self.device
        );
    }
}

fn check_refusal(case: &Refusal) -> Option<String> {
    let repro = shell_line(&case.args);
    let out = match run(&case.args) {
        Ok(out) => out,
        Err(e) => return Some(format!("[{}] {e}\n  $ {repro}", case.name)),
    };
    let mut problems = Vec::new();
    match out.status.code() {
        Some(0) => problems.push("exited 0 instead of failing".to_string()),
        Some(101) => problems.push("exited 101 (a Rust panic)".to_string()),
        Some(_) => {}
        None => problems.push(format!("killed by a signal ({})", out.status)),
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.starts_with("error:") {
        problems.push("stderr does not start with \"error:\"".to_string());
    }
    if case.kind == Kind::OneLine && stderr.lines().count() != 1 {
        problems.push(format!(
            "stderr has {} lines, expected exactly one",
            stderr.lines().count()
        ));
    }
    // No terminal control (escape sequences, vertical tab, form feed) from a file's header
    // or path: only the line's end.
    if case.kind == Kind::OneLine
        && stderr
            .trim_end_matches('\n')
            .chars()
            .any(|c| c.is_control())
    {
        problems.push("stderr holds control characters".to_string());
    }
    if case.kind == Kind::OneLine {
        let mentions = expected_mentions(case);
        if !mentions.is_empty() && !mentions.iter().any(|m| stderr.contains(m.as_str())) {
            problems.push(format!(
                "stderr names none of {mentions:?}, what the case is about"
            ));
        }
        // A file of another dtype or order must be refused for that, not for the length
        // its elements give the data.
        if let Some(reason) = expected_reason(case) {
            if !stderr.contains(reason) {
                problems.push(format!("stderr says not {reason:?}, the reason"));
            }
        }
    }
    if case.kind == Kind::Clap {
        // Clap's usage line names every flag given; what it says before that must name the
        // one at fault.
        let said = stderr.split("Usage:").next().unwrap_or_default();
        let flag = clap_flag_at_fault(case);
        if !said.contains(flag) {
            problems.push(format!(
                "clap's message names not {flag}, the flag at fault"
            ));
        }
    }
    match listing(&case.out) {
        Ok(files) if files.is_empty() => {}
        Ok(files) => problems.push(format!("left files in --out: {files:?}")),
        Err(e) => problems.push(e),
    }
    if problems.is_empty() {
        return None;
    }
    Some(format!(
        "[{}] {}\n  $ {repro}\n  exit: {}\n  stderr: {stderr:?}",
        case.name,
        problems.join("; "),
        out.status
    ))
}

/// What a refusal's one line must name (any one of), from the case's name: the file of a bad
/// input or the option or parameter at fault, or PyTorch's words for one value per channel;
/// so that a case refused for another reason than the one it is about fails.
fn expected_mentions(case: &Refusal) -> Vec<String> {
    let name = case.name.as_str();
    let arg = |flag: &str| -> Vec<String> {
        let at = case.args.iter().position(|a| a == flag);
        at.and_then(|at| case.args.get(at + 1).cloned())
            .into_iter()
            .collect()
    };
    if name.contains("train x (1,") {
        return vec!["more than 1 value per channel".to_string()];
    }
    let options = [
        ("gamma", "--gamma"),
        ("beta", "--beta"),
        ("running_mean", "--running-mean"),
        ("running_var", "--running-var"),
        ("eps", "--eps"),
        ("momentum", "--momentum"),
    ];
    // "backward gamma length 2", "nhwc gamma of length dims[1]": the option after the mode.
    let subject = ["backward ", "nhwc ", "nchw "]
        .iter()
        .fold(name, |n, prefix| n.strip_prefix(prefix).unwrap_or(n));
    if subject.starts_with("running stats") {
        let mut any = arg("--running-mean");
        any.extend(arg("--running-var"));
        any.extend(["running_mean".to_string(), "running_var".to_string()]);
        return any;
    }
    if let Some(&(word, flag)) = options.iter().find(|(w, _)| subject.starts_with(w)) {
        let mut any = arg(flag);
        any.push(word.to_string());
        return any;
    }
    if name.starts_with("dy ") {
        let mut any = arg("--dy");
        any.push("dy is".to_string());
        return any;
    }
    if name.starts_with("x ") || name.starts_with("backward x ") {
        return arg("--x");
    }
    Vec::new()
}

/// The reason a refusal must give, from the case's name, where its file's size alone would
/// also be refused (a dtype of another element size, Fortran order).
fn expected_reason(case: &Refusal) -> Option<&'static str> {
    let name = case.name.as_str();
    if name.contains("dtype") {
        Some("unsupported dtype")
    } else if name.contains("fortran") {
        Some("Fortran-order")
    } else {
        None
    }
}

/// The flag a usage error is about, from the case's name: the one missing ("gamma without
/// beta", "momentum 1.5, untracked": no running statistics), else the one misused.
fn clap_flag_at_fault(case: &Refusal) -> &'static str {
    let name = case.name.as_str();
    let missing = name
        .split(" without ")
        .nth(1)
        .or(name.contains("untracked").then_some("running statistics"));
    let word = missing.unwrap_or(name);
    let flags = [
        ("running statistics", "--running-mean"),
        ("running-mean", "--running-mean"),
        ("running-var", "--running-var"),
        ("gamma", "--gamma"),
        ("beta", "--beta"),
        ("--x", "--x"),
        ("--dy", "--dy"),
        ("momentum", "--momentum"),
        ("eps", "--eps"),
        ("layout", "--layout"),
    ];
    flags
        .iter()
        .find(|(w, _)| word.contains(w))
        .map(|&(_, flag)| flag)
        .unwrap_or_else(|| panic!("no flag at fault known for clap case {name:?}"))
}

/// The bad and good input files the refusal cases share.
struct Inputs {
    x: String,      // (2, 3, 4): C = 3 in nchw, 4 in nhwc
    x_nhwc: String, // (2, 4, 3): C = 3 in nhwc
    dy: String,     // (2, 3, 4)
    c3: String,     // (3,)
    c2: String,     // (2,)
    c4: String,     // (4,)
}

fn good_inputs(s: &Scratch) -> Inputs {
    Inputs {
        x: s.file("x.npy", &f32_npy(&[2, 3, 4])),
        x_nhwc: s.file("x_nhwc.npy", &f32_npy(&[2, 4, 3])),
        dy: s.file("dy.npy", &f32_npy(&[2, 3, 4])),
        c3: s.file("c3.npy", &vec_npy(3)),
        c2: s.file("c2.npy", &vec_npy(2)),
        c4: s.file("c4.npy", &vec_npy(4)),
    }
}

#[test]
fn refusals_on_cpu() {
    let s = Scratch::new("refuse-cpu");
    let g = good_inputs(&s);
    let mut r = Refusals::new(&s, "cpu");
    let shape = [2usize, 3, 4];
    let full = 24 * 4;

    // Not little-endian float32 C order.
    for (tag, descr) in [
        ("f8", "<f8"),
        ("big_endian_f4", ">f4"),
        ("i4", "<i4"),
        ("u1", "|u1"),
        ("f2", "<f2"),
    ] {
        let elem = match descr {
            "<f8" => 8,
            "|u1" => 1,
            "<f2" => 2,
            _ => 4,
        };
        let x = s.file(
            &format!("x_{tag}.npy"),
            &npy_file(descr, false, &shape, 24 * elem),
        );
        r.forward(&format!("x dtype {descr}"), &["--x", &x]);
    }
    let x = s.file("x_fortran.npy", &npy_file("<f4", true, &shape, full));
    r.forward("x fortran_order True", &["--x", &x]);

    // Truncated, oversized and malformed files.
    let x = s.file("x_short.npy", &npy_file("<f4", false, &shape, full - 4));
    r.forward(
        "x shape larger than the data (one element short)",
        &["--x", &x],
    );
    let x = s.file("x_short1.npy", &npy_file("<f4", false, &shape, full - 1));
    r.forward("x truncated mid-element", &["--x", &x]);
    let x = s.file("x_nodata.npy", &npy_file("<f4", false, &shape, 0));
    r.forward("x header only, no data", &["--x", &x]);
    let x = s.file("x_trailing.npy", &npy_file("<f4", false, &shape, full + 4));
    r.forward("x extra trailing bytes", &["--x", &x]);
    let good = f32_npy(&shape);
    let x = s.file("x_cut_header.npy", &good[..40]);
    r.forward("x truncated inside the header", &["--x", &x]);
    let x = s.file("x_cut_version.npy", &good[..7]);
    r.forward("x truncated inside the version", &["--x", &x]);
    let x = s.file("x_empty.npy", b"");
    r.forward("x empty file", &["--x", &x]);
    let mut bad_magic = good.clone();
    bad_magic[1] = b'X';
    let x = s.file("x_magic.npy", &bad_magic);
    r.forward("x bad magic", &["--x", &x]);
    let x = s.file(
        "x_zip.npy",
        b"PK\x03\x04 this is a zip file, not an npy file",
    );
    r.forward("x a zip file", &["--x", &x]);
    let mut bad_version = good.clone();
    bad_version[6] = 4;
    let x = s.file("x_version.npy", &bad_version);
    r.forward("x format version 4.0", &["--x", &x]);
    let mut long_header = good.clone();
    long_header[8] = 0xff;
    long_header[9] = 0xff;
    let x = s.file("x_hlen.npy", &long_header);
    r.forward("x header length past the end of the file", &["--x", &x]);
    let x = s.file(
        "x_garbage.npy",
        &npy_raw(1, "this is not a dict", &good[128..]),
    );
    r.forward("x garbage header", &["--x", &x]);
    let x = s.file(
        "x_noshape.npy",
        &npy_raw(1, "{'descr': '<f4', 'fortran_order': False}", &good[128..]),
    );
    r.forward("x header without 'shape'", &["--x", &x]);
    let x = s.file(
        "x_tuple.npy",
        &npy_raw(
            1,
            "{'descr': '<f4', 'fortran_order': False, 'shape': (24)}",
            &good[128..],
        ),
    );
    r.forward("x shape not a tuple", &["--x", &x]);
    let mut non_ascii = good.clone();
    non_ascii[12] = 0xff;
    let x = s.file("x_nonascii.npy", &non_ascii);
    r.forward("x non-ASCII header", &["--x", &x]);
    let x = s.file(
        "x_huge.npy",
        &npy_file("<f4", false, &[1 << 20, 1 << 20, 1 << 20], 0),
    );
    r.forward("x shape far larger than the file", &["--x", &x]);
    let missing = s.path("does_not_exist.npy");
    r.forward("x missing file", &["--x", &missing]);
    let dir_as_x = s.dir.display().to_string();
    r.forward("x is a directory", &["--x", &dir_as_x]);

    // Bad files in the other inputs.
    let f8_c3 = s.file("c3_f8.npy", &npy_file("<f8", false, &[3], 24));
    let be_c3 = s.file("c3_be.npy", &npy_file(">f4", false, &[3], 12));
    let short_c3 = s.file("c3_short.npy", &npy_file("<f4", false, &[3], 8));
    let fortran_dy = s.file("dy_fortran.npy", &npy_file("<f4", true, &shape, full));
    let f8_dy = s.file("dy_f8.npy", &npy_file("<f8", false, &shape, 24 * 8));
    let short_dy = s.file("dy_short.npy", &npy_file("<f4", false, &shape, full - 4));
    let (x, c3) = (g.x.as_str(), g.c3.as_str());
    r.forward(
        "gamma dtype <f8",
        &["--x", x, "--gamma", &f8_c3, "--beta", c3],
    );
    r.forward(
        "beta dtype >f4",
        &["--x", x, "--gamma", c3, "--beta", &be_c3],
    );
    r.forward(
        "running_mean truncated",
        &["--x", x, "--running-mean", &short_c3, "--running-var", c3],
    );
    r.forward(
        "running_var dtype <f8",
        &["--x", x, "--running-mean", c3, "--running-var", &f8_c3],
    );
    r.backward("dy dtype <f8", &["--x", x, "--dy", &f8_dy]);
    r.backward("dy fortran_order True", &["--x", x, "--dy", &fortran_dy]);
    r.backward("dy truncated", &["--x", x, "--dy", &short_dy]);
    let f8_x = s.path("x_f8.npy");
    r.backward("backward x dtype <f8", &["--x", &f8_x, "--dy", &g.dy]);

    // x and dy of different shapes.
    let dy_t = s.file("dy_t.npy", &f32_npy(&[2, 4, 3]));
    let dy_4d = s.file("dy_4d.npy", &f32_npy(&[2, 3, 4, 1]));
    let dy_small = s.file("dy_small.npy", &f32_npy(&[2, 3, 3]));
    r.backward("dy shape (2,4,3) vs x (2,3,4)", &["--x", x, "--dy", &dy_t]);
    r.backward(
        "dy shape (2,3,4,1) vs x (2,3,4)",
        &["--x", x, "--dy", &dy_4d],
    );
    r.backward(
        "dy shape (2,3,3) vs x (2,3,4)",
        &["--x", x, "--dy", &dy_small],
    );
    r.backward(
        "dy shape mismatch, affine",
        &["--x", x, "--dy", &dy_t, "--gamma", c3, "--beta", c3],
    );

    // Per-channel vectors of the wrong length (C = 3).
    let (c2, c4) = (g.c2.as_str(), g.c4.as_str());
    r.forward("gamma length 2", &["--x", x, "--gamma", c2, "--beta", c3]);
    r.forward("gamma length 4", &["--x", x, "--gamma", c4, "--beta", c3]);
    r.forward("beta length 2", &["--x", x, "--gamma", c3, "--beta", c2]);
    r.forward(
        "running_mean length 2",
        &["--x", x, "--running-mean", c2, "--running-var", c3],
    );
    r.forward(
        "running_var length 4",
        &["--x", x, "--running-mean", c3, "--running-var", c4],
    );
    let empty_vec = s.file("c0.npy", &f32_values(&[0], &[]));
    r.forward(
        "gamma length 0",
        &["--x", x, "--gamma", &empty_vec, "--beta", c3],
    );
    r.backward(
        "backward gamma length 2",
        &["--x", x, "--dy", &g.dy, "--gamma", c2, "--beta", c3],
    );
    // nhwc: C is the last axis (3), so a vector of dims[1] = 4 is wrong.
    r.forward(
        "nhwc gamma of length dims[1]",
        &[
            "--x", &g.x_nhwc, "--layout", "nhwc", "--gamma", c4, "--beta", c4,
        ],
    );
    // nchw on (2,4,3): C = 4, so length-3 vectors are wrong.
    r.forward(
        "nchw running stats of length dims[-1]",
        &["--x", &g.x_nhwc, "--running-mean", c3, "--running-var", c3],
    );

    // Clap's own usage errors.
    r.clap("gamma without beta", &["forward", "--x", x, "--gamma", c3]);
    r.clap("beta without gamma", &["forward", "--x", x, "--beta", c3]);
    r.clap(
        "running-mean without running-var",
        &["forward", "--x", x, "--running-mean", c3],
    );
    r.clap(
        "running-var without running-mean",
        &["forward", "--x", x, "--running-var", c3],
    );
    r.clap("forward without --x", &["forward"]);
    r.clap("backward without --dy", &["backward", "--x", x]);
    r.clap(
        "momentum not a number",
        &["forward", "--x", x, "--momentum", "fast"],
    );
    r.clap("bad layout", &["forward", "--x", x, "--layout", "nchwc"]);
    r.clap(
        "num-batches-tracked without running statistics",
        &["forward", "--x", x, "--num-batches-tracked", "3"],
    );
    // They would act on nothing.
    r.clap(
        "momentum without running statistics",
        &["forward", "--x", x, "--momentum", "0.5"],
    );
    r.clap(
        "biased-running-var without running statistics",
        &["backward", "--x", x, "--dy", x, "--biased-running-var"],
    );

    // Rank outside 2..=5.
    for (tag, dims) in [
        ("rank 0", vec![]),
        ("rank 1", vec![6]),
        ("rank 6", vec![2, 3, 1, 1, 1, 2]),
        ("rank 7", vec![2, 3, 1, 1, 1, 1, 2]),
    ] {
        let x = s.file(&format!("x_{}.npy", tag.replace(' ', "_")), &f32_npy(&dims));
        r.forward(&format!("x {tag}"), &["--x", &x]);
        r.forward(&format!("x {tag} nhwc"), &["--x", &x, "--layout", "nhwc"]);
    }
    let x6 = s.path("x_rank_6.npy");
    let dy6 = s.file("dy_rank_6.npy", &f32_npy(&[2, 3, 1, 1, 1, 2]));
    r.backward("backward x rank 6", &["--x", &x6, "--dy", &dy6]);

    // No channels (an empty batch is fine: output_file_sets).
    for (dims, layout) in [
        (vec![2, 0], "nchw"),
        (vec![2, 0, 4], "nchw"),
        (vec![2, 3, 0], "nhwc"),
    ] {
        let tag = dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let x = s.file(&format!("x_zero_{tag}.npy"), &f32_values(&dims, &[]));
        r.forward(
            &format!("x without channels {dims:?} {layout}"),
            &["--x", &x, "--layout", layout],
        );
    }
    let x0 = s.path("x_zero_2x0x4.npy");
    r.backward(
        "backward x without channels [2, 0, 4]",
        &["--x", &x0, "--dy", &x0],
    );

    // eps and momentum.
    for eps in ["0", "-0", "-1", "-1e-5", "nan", "NaN", "inf", "-inf"] {
        let flag = format!("--eps={eps}");
        r.forward(&format!("eps {eps}"), &["--x", x, &flag]);
    }
    r.backward("backward eps 0", &["--x", x, "--dy", &g.dy, "--eps", "0"]);
    // Rounded to 0 or inf by f32, they would be refused as values nobody typed.
    for eps in ["1e-50", "1e50"] {
        r.clap(
            &format!("eps {eps}, beyond f32"),
            &["forward", "--x", x, "--eps", eps],
        );
    }
    // Written as separate words, a negative number must still reach the checks, not be taken
    // for a flag.
    for eps in ["-1", "-1e-5", "-inf"] {
        r.forward(
            &format!("eps {eps} as two words"),
            &["--x", x, "--eps", eps],
        );
    }
    for m in ["-0.1", "-1e-3", "-inf"] {
        r.forward(
            &format!("momentum {m} as two words"),
            &[
                "--x",
                x,
                "--momentum",
                m,
                "--running-mean",
                c3,
                "--running-var",
                c3,
            ],
        );
    }
    for m in ["1.5", "1.0000001", "-0.1", "2", "nan", "inf", "-inf"] {
        let flag = format!("--momentum={m}");
        r.forward(
            &format!("momentum {m}"),
            &["--x", x, &flag, "--running-mean", c3, "--running-var", c3],
        );
    }
    // Untracked, a momentum is refused before its value is looked at.
    r.clap(
        "momentum 1.5, untracked",
        &["forward", "--x", x, "--momentum", "1.5"],
    );

    // Training with one value per channel.
    let x13 = s.file("x13.npy", &f32_npy(&[1, 3]));
    let x1311 = s.file("x1311.npy", &f32_npy(&[1, 3, 1, 1]));
    let x113 = s.file("x113.npy", &f32_npy(&[1, 1, 3]));
    let x13111 = s.file("x13111.npy", &f32_npy(&[1, 3, 1, 1, 1]));
    r.forward("train x (1,3)", &["--x", &x13]);
    r.forward("train x (1,3,1,1)", &["--x", &x1311]);
    r.forward("train x (1,3,1,1,1)", &["--x", &x13111]);
    r.forward("train x (1,1,3) nhwc", &["--x", &x113, "--layout", "nhwc"]);
    r.forward("train x (1,3) nhwc", &["--x", &x13, "--layout", "nhwc"]);
    r.forward(
        "train x (1,3,1,1) tracked, affine",
        &[
            "--x",
            &x1311,
            "--gamma",
            c3,
            "--beta",
            c3,
            "--running-mean",
            c3,
            "--running-var",
            c3,
        ],
    );
    r.backward("backward train x (1,3)", &["--x", &x13, "--dy", &x13]);
    r.backward(
        "backward train x (1,3,1,1)",
        &["--x", &x1311, "--dy", &x1311],
    );

    r.check_all();
}

#[test]
fn refusals_on_gpu() {
    let s = Scratch::new("refuse-gpu");
    let g = good_inputs(&s);
    let mut r = Refusals::new(&s, "gpu");
    let shape = [2usize, 3, 4];
    let (x, c2, c3) = (g.x.as_str(), g.c2.as_str(), g.c3.as_str());

    let f8 = s.file("x_f8.npy", &npy_file("<f8", false, &shape, 24 * 8));
    let short = s.file("x_short.npy", &npy_file("<f4", false, &shape, 23 * 4));
    r.forward("x dtype <f8", &["--x", &f8]);
    r.forward("x truncated", &["--x", &short]);
    r.backward("dy dtype <f8", &["--x", x, "--dy", &f8]);
    r.forward("gamma length 2", &["--x", x, "--gamma", c2, "--beta", c3]);
    r.forward(
        "running_var length 2",
        &["--x", x, "--running-mean", c3, "--running-var", c2],
    );
    let dy_t = s.file("dy_t.npy", &f32_npy(&[2, 4, 3]));
    r.backward("dy shape (2,4,3) vs x (2,3,4)", &["--x", x, "--dy", &dy_t]);
    let x13 = s.file("x13.npy", &f32_npy(&[1, 3]));
    let x1311 = s.file("x1311.npy", &f32_npy(&[1, 3, 1, 1]));
    let x113 = s.file("x113.npy", &f32_npy(&[1, 1, 3]));
    r.forward("train x (1,3)", &["--x", &x13]);
    r.forward("train x (1,3,1,1)", &["--x", &x1311]);
    r.forward("train x (1,1,3) nhwc", &["--x", &x113, "--layout", "nhwc"]);
    r.forward(
        "train x (1,3,1,1) tracked, affine",
        &[
            "--x",
            &x1311,
            "--gamma",
            c3,
            "--beta",
            c3,
            "--running-mean",
            c3,
            "--running-var",
            c3,
        ],
    );
    r.backward(
        "backward train x (1,3,1,1)",
        &["--x", &x1311, "--dy", &x1311],
    );

    r.check_all();
}

/// Header text that the reader echoes into its error message must not break the one-line
/// rule: a newline inside a quoted header string is still a refusal on one line.
#[test]
fn refusals_echoing_header_text_stay_on_one_line() {
    let s = Scratch::new("refuse-echo");
    let data = [0u8; 8];
    let mut r = Refusals::new(&s, "cpu");
    for (name, file, header) in [
        (
            "x descr with a newline",
            "x_descr_nl.npy",
            "{'descr': '<f4\n', 'fortran_order': False, 'shape': (2,), }",
        ),
        (
            "x header key with a newline",
            "x_key_nl.npy",
            "{'de\nscr': '<f4', 'fortran_order': False, 'shape': (2,), }",
        ),
        // An escape sequence (it would clear a terminal and retitle it), a vertical tab and
        // a form feed (a line break to a terminal, not to str::lines).
        (
            "x descr with terminal control",
            "x_descr_escape.npy",
            "{'descr': '<f4\x1b]0;owned\x07\x1b[2J\x0b\x0c', 'fortran_order': False, 'shape': (2,), }",
        ),
    ] {
        let x = s.file(file, &npy_raw(1, header, &data));
        r.forward(name, &["--x", &x]);
    }
    r.check_all();
}

// ---------------------------------------------------------------------------------------------
// The file contract

/// What a successful run must leave in --out: each file and its expected shape
/// (`None` for num_batches_tracked.txt).
struct Expect<'a> {
    name: String,
    args: Vec<String>,
    out: PathBuf,
    files: Vec<(&'a str, Option<Vec<usize>>)>,
    /// Expected content of num_batches_tracked.txt, when it is written.
    nbt: Option<u64>,
}

fn check_success(e: &Expect) -> Option<String> {
    let repro = shell_line(&e.args);
    let out = match run(&e.args) {
        Ok(out) => out,
        Err(err) => return Some(format!("[{}] {err}\n  $ {repro}", e.name)),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Some(format!(
            "[{}] failed: {}\n  $ {repro}\n  stderr: {stderr:?}",
            e.name, out.status
        ));
    }
    let mut problems = Vec::new();
    let want: BTreeSet<String> = e.files.iter().map(|(f, _)| f.to_string()).collect();
    match listing(&e.out) {
        Ok(got) if got == want => {}
        Ok(got) => problems.push(format!("wrote {got:?}, expected exactly {want:?}")),
        Err(err) => problems.push(err),
    }
    for (file, shape) in &e.files {
        let path = e.out.join(file);
        if !path.exists() {
            continue; // reported by the listing
        }
        match shape {
            Some(shape) => {
                // Byte-level: a numpy-style '<f4' C-order header.
                let bytes = fs::read(&path).unwrap_or_default();
                let head = String::from_utf8_lossy(&bytes[..bytes.len().min(128)]).into_owned();
                if !head.contains("'descr': '<f4'") || !head.contains("'fortran_order': False") {
                    problems.push(format!("{file}: header is not '<f4' C order: {head:?}"));
                }
                match npy::read_f32(&path) {
                    Ok(a) => {
                        if a.shape() != shape.as_slice() {
                            problems
                                .push(format!("{file}: shape {:?}, expected {shape:?}", a.shape()));
                        }
                        if let Some(v) = a.iter().find(|v| !v.is_finite()) {
                            problems.push(format!("{file}: holds a non-finite value {v}"));
                        }
                    }
                    Err(err) => problems.push(format!("{file}: does not read as '<f4': {err}")),
                }
            }
            None => {
                let text = fs::read_to_string(&path).unwrap_or_default();
                match (text.trim().parse::<u64>(), e.nbt) {
                    (Ok(n), Some(want)) if n == want => {}
                    (_, want) => {
                        problems.push(format!("{file}: holds {text:?}, expected {want:?}"))
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        return None;
    }
    Some(format!(
        "[{}] {}\n  $ {repro}\n  stderr: {stderr:?}",
        e.name,
        problems.join("; ")
    ))
}

#[test]
fn output_file_sets() {
    let s = Scratch::new("files");
    // Rank 3, channels last: (N, L, C) = (2, 4, 3).
    let dims3 = vec![2usize, 4, 3];
    let (x3, dy3) = (
        s.file("x3.npy", &f32_npy(&dims3)),
        s.file("dy3.npy", &f32_npy(&dims3)),
    );
    // Rank 4, channels first: (N, C, H, W) = (2, 3, 2, 2).
    let dims4 = vec![2usize, 3, 2, 2];
    let (x4, dy4) = (
        s.file("x4.npy", &f32_npy(&dims4)),
        s.file("dy4.npy", &f32_npy(&dims4)),
    );
    let c3 = s.file("c3.npy", &vec_npy(3));
    // An empty batch, (0, C, H, W) = (0, 3, 2, 2).
    let dims0 = vec![0usize, 3, 2, 2];
    let x0 = s.file("x0.npy", &f32_values(&dims0, &[]));
    let (x3, dy3, x4, dy4) = (x3.as_str(), dy3.as_str(), x4.as_str(), dy4.as_str());
    let x0 = x0.as_str();
    let ch = Some(vec![3usize]);
    let affine = ["--gamma", c3.as_str(), "--beta", c3.as_str()];
    let tracked = ["--running-mean", c3.as_str(), "--running-var", c3.as_str()];

    let mut cases = Vec::new();
    for device in ["cpu", "gpu"] {
        let mut add = |name: &str,
                       args: Vec<&str>,
                       files: Vec<(&'static str, Option<Vec<usize>>)>,
                       nbt: Option<u64>| {
            let out = s.fresh_out(&format!("{name}-{device}"));
            let mut args = strs(&args);
            args.extend(strs(&["--device", device, "--out"]));
            args.push(out.display().to_string());
            cases.push(Expect {
                name: format!("{name} [{device}]"),
                args,
                out,
                files,
                nbt,
            });
        };
        let y3 = ("y.npy", Some(dims3.clone()));
        let stats = |v: &mut Vec<(&'static str, Option<Vec<usize>>)>| {
            v.extend([
                ("mean.npy", ch.clone()),
                ("var.npy", ch.clone()),
                ("invstd.npy", ch.clone()),
            ])
        };
        let running = |v: &mut Vec<(&'static str, Option<Vec<usize>>)>| {
            v.extend([
                ("running_mean.npy", ch.clone()),
                ("running_var.npy", ch.clone()),
                ("num_batches_tracked.txt", None),
            ])
        };

        // Training with running statistics: every file; the count goes from K to K+1.
        let mut train_files = vec![y3.clone()];
        stats(&mut train_files);
        running(&mut train_files);
        let mut a = vec!["forward", "--x", x3, "--layout", "nhwc"];
        a.extend(affine);
        a.extend(tracked);
        a.extend(["--num-batches-tracked", "7"]);
        add(
            "forward train tracked nhwc rank 3",
            a,
            train_files.clone(),
            Some(8),
        );

        let mut a = vec!["forward", "--x", x3, "--layout", "nhwc"];
        a.extend(tracked);
        a.extend(["--momentum", "none", "--num-batches-tracked", "41"]);
        add(
            "forward train tracked momentum none",
            a,
            train_files,
            Some(42),
        );

        let mut files4 = vec![("y.npy", Some(dims4.clone()))];
        stats(&mut files4);
        running(&mut files4);
        let mut a = vec!["forward", "--x", x4];
        a.extend(affine);
        a.extend(tracked);
        add(
            "forward train tracked nchw rank 4, default K",
            a,
            files4,
            Some(1),
        );

        // An empty batch: y empty, no batch statistics, the running statistics as given and
        // the step counted (PyTorch's module counts it too); backward: dx empty, zero dgamma
        // and dbeta.
        let mut empty_files = vec![("y.npy", Some(dims0.clone()))];
        running(&mut empty_files);
        let mut a = vec!["forward", "--x", x0];
        a.extend(affine);
        a.extend(tracked);
        a.extend(["--num-batches-tracked", "7"]);
        add("forward train tracked empty batch", a, empty_files, Some(8));
        let mut a = vec!["backward", "--x", x0, "--dy", x0];
        a.extend(affine);
        add(
            "backward affine empty batch",
            a,
            vec![
                ("dx.npy", Some(dims0.clone())),
                ("dgamma.npy", ch.clone()),
                ("dbeta.npy", ch.clone()),
            ],
            None,
        );

        // Eval with running statistics: y only.
        let mut a = vec!["forward", "--x", x3, "--layout", "nhwc", "--eval"];
        a.extend(affine);
        a.extend(tracked);
        a.extend(["--num-batches-tracked", "7"]);
        add("forward eval tracked", a, vec![y3.clone()], None);
        // An eval forward reads no count: one past what the layer keeps refuses nothing.
        let mut a = vec!["forward", "--x", x3, "--layout", "nhwc", "--eval"];
        a.extend(tracked);
        a.extend(["--num-batches-tracked", "4294967296"]);
        add(
            "forward eval tracked, count past its limit",
            a,
            vec![y3.clone()],
            None,
        );

        // Eval without running statistics: y and the batch statistics.
        let mut eval_untracked = vec![y3.clone()];
        stats(&mut eval_untracked);
        let mut a = vec!["forward", "--x", x3, "--layout", "nhwc", "--eval"];
        a.extend(affine);
        add("forward eval untracked", a, eval_untracked, None);

        // Backward: dx (+ dgamma, dbeta when affine).
        let dx3 = ("dx.npy", Some(dims3.clone()));
        let mut a = vec!["backward", "--x", x3, "--dy", dy3, "--layout", "nhwc"];
        a.extend(affine);
        a.extend(tracked);
        add(
            "backward affine",
            a,
            vec![
                dx3.clone(),
                ("dgamma.npy", ch.clone()),
                ("dbeta.npy", ch.clone()),
            ],
            None,
        );
        let a = vec!["backward", "--x", x3, "--dy", dy3, "--layout", "nhwc"];
        add("backward non-affine", a, vec![dx3.clone()], None);

        // The forward that recomputes the statistics is no step: a count at its limit, which a
        // training forward refuses, or past what the layer keeps, does not refuse the
        // gradient.
        for count in ["4294967295", "4294967296"] {
            let mut a = vec!["backward", "--x", x3, "--dy", dy3, "--layout", "nhwc"];
            a.extend(affine);
            a.extend(tracked);
            a.extend(["--num-batches-tracked", count]);
            add(
                &format!("backward affine tracked, count {count}"),
                a,
                vec![
                    dx3.clone(),
                    ("dgamma.npy", ch.clone()),
                    ("dbeta.npy", ch.clone()),
                ],
                None,
            );
        }

        let mut a = vec![
            "backward", "--x", x3, "--dy", dy3, "--layout", "nhwc", "--eval",
        ];
        a.extend(tracked);
        add("backward non-affine eval tracked", a, vec![dx3], None);

        let mut a = vec!["backward", "--x", x4, "--dy", dy4];
        a.extend(affine);
        add(
            "backward affine nchw rank 4",
            a,
            vec![
                ("dx.npy", Some(dims4.clone())),
                ("dgamma.npy", ch.clone()),
                ("dbeta.npy", ch.clone()),
            ],
            None,
        );
    }

    let total = cases.len();
    let failures: Vec<String> = cases.iter().filter_map(check_success).collect();
    assert!(
        failures.is_empty(),
        "{} of {total} output-set cases broke the contract:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// An empty batch's files hold what PyTorch gives: the running statistics as given (the
/// step only counted), and zero dgamma and dbeta (output_file_sets checks their names and
/// shapes).
#[test]
fn an_empty_batch_keeps_the_running_statistics_and_gives_zero_gradients() {
    let s = Scratch::new("empty_values");
    let x0 = s.file("x0.npy", &f32_values(&[0, 3, 2, 2], &[]));
    let c3 = s.file("c3.npy", &vec_npy(3));
    let given = npy::read_f32(Path::new(&c3)).unwrap();
    for device in ["cpu", "gpu"] {
        let run_to = |args: &[&str], label: &str| {
            let out = s.fresh_out(&format!("{label}-{device}"));
            let mut args = strs(args);
            args.extend(strs(&[
                "--device",
                device,
                "--out",
                &out.display().to_string(),
            ]));
            let o = run(&args).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                o.status.success(),
                "{label} {device}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            out
        };
        let read = |out: &Path, name: &str| npy::read_f32(&out.join(name)).unwrap();
        let (a, t) = (
            ["--gamma", &c3, "--beta", &c3],
            ["--running-mean", &c3, "--running-var", &c3],
        );
        let mut args = vec!["forward", "--x", &x0];
        args.extend(a);
        args.extend(t);
        let out = run_to(&args, "forward");
        assert_eq!(
            read(&out, "running_mean.npy"),
            given,
            "{device} running_mean"
        );
        assert_eq!(read(&out, "running_var.npy"), given, "{device} running_var");
        let mut args = vec!["backward", "--x", &x0, "--dy", &x0];
        args.extend(a);
        let out = run_to(&args, "backward");
        for name in ["dgamma.npy", "dbeta.npy"] {
            let got = read(&out, name);
            assert!(
                got.len() == 3 && got.iter().all(|&v| v == 0.0),
                "{device} {name}: {got}"
            );
        }
    }
}

/// A run that cannot write one of its files changes none: an earlier run's y.npy keeps its
/// content, the directory in mean.npy's place stays, and no temporary file is left.
#[test]
fn a_failed_write_keeps_an_earlier_runs_files() {
    let s = Scratch::new("failed_write");
    let x = s.file("x.npy", &f32_npy(&[4, 3]));
    for device in ["cpu", "gpu"] {
        let out = s.dir.join(format!("out-{device}"));
        fs::create_dir_all(out.join("mean.npy")).unwrap();
        fs::write(out.join("y.npy"), b"an earlier run's y\n").unwrap();
        let args = strs(&["forward", "--x", &x, "--device", device]);
        let mut args = args;
        args.extend(strs(&["--out", &out.display().to_string()]));
        let o = run(&args).unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{device}: {stderr}");
        assert!(
            stderr.starts_with("error:") && stderr.lines().count() == 1,
            "{stderr}"
        );
        assert_eq!(
            fs::read(out.join("y.npy")).unwrap(),
            b"an earlier run's y\n",
            "{device}: y.npy was changed"
        );
        assert!(out.join("mean.npy").is_dir(), "{device}");
        assert_eq!(
            listing(&out).unwrap(),
            ["mean.npy", "y.npy"]
                .iter()
                .map(|n| n.to_string())
                .collect(),
            "{device}: files left behind"
        );
    }
}

/// A write that fails after the first output's temporary file is made (here the second file,
/// past a file-size limit of 1 KiB: a tracked empty batch's y.npy is 128 bytes, its
/// running_mean.npy 1,328) removes what this run wrote and changes none of an earlier run's
/// files: the rollback that the up-front checks of the test above never reach.
#[cfg(unix)]
#[test]
fn a_write_failing_midway_leaves_no_file_behind() {
    let s = Scratch::new("midway");
    let x = s.file("x.npy", &f32_npy(&[0, 300]));
    let running = s.file("running.npy", &f32_npy(&[300]));
    let out = s.dir.join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("y.npy"), b"an earlier run's y\n").unwrap();
    let out_arg = out.display().to_string();
    let mut cmd = Command::new("bash");
    // SIGXFSZ ignored (and so across exec): the write fails with EFBIG instead.
    cmd.args(["-c", "ulimit -f 1; trap '' XFSZ; exec \"$0\" \"$@\"", BIN])
        .args(["forward", "--x", &x, "--device", "cpu", "--out", &out_arg])
        .args(["--running-mean", &running, "--running-var", &running])
        .stdin(Stdio::null());
    with_runtime_dir(&mut cmd);
    let o = cmd.output().expect("bash");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error:") && stderr.contains("running_mean.npy"),
        "{stderr}"
    );
    assert_eq!(
        fs::read(out.join("y.npy")).unwrap(),
        b"an earlier run's y\n"
    );
    assert_eq!(
        listing(&out).unwrap(),
        ["y.npy".to_string()].into_iter().collect(),
        "files left behind"
    );
}

#[test]
fn unwritable_output_dir() {
    let s = Scratch::new("unwritable");
    let x = s.file("x.npy", &f32_npy(&[2, 3, 4]));
    let dy = s.file("dy.npy", &f32_npy(&[2, 3, 4]));
    let blocker = s.dir.join("regular_file");
    let content = b"not a directory\n";
    fs::write(&blocker, content).unwrap();
    let blocker_str = blocker.display().to_string();
    let under = blocker.join("sub").display().to_string();
    let deeper = blocker.join("a/b").display().to_string();

    let mut failures = Vec::new();
    let mut total = 0;
    for device in ["cpu", "gpu"] {
        for (what, out) in [
            ("forward --out <file>/sub", &under),
            ("forward --out <file>/a/b", &deeper),
            ("forward --out <file>", &blocker_str),
            ("backward --out <file>/sub", &under),
        ] {
            total += 1;
            let sub = what.split(' ').next().unwrap();
            let mut args = strs(&[sub, "--x", &x]);
            if sub == "backward" {
                args.extend(strs(&["--dy", &dy]));
            }
            args.extend(strs(&["--device", device, "--out", out]));
            let repro = shell_line(&args);
            let name = format!("{what} [{device}]");
            let outp = match run(&args) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(format!("[{name}] {e}\n  $ {repro}"));
                    continue;
                }
            };
            let stderr = String::from_utf8_lossy(&outp.stderr);
            let mut problems = Vec::new();
            match outp.status.code() {
                Some(0) => problems.push("exited 0".to_string()),
                Some(101) => problems.push("exited 101 (a Rust panic)".to_string()),
                Some(_) => {}
                None => problems.push(format!("killed by a signal ({})", outp.status)),
            }
            if !stderr.starts_with("error:") || stderr.lines().count() != 1 {
                problems.push("stderr is not exactly one line starting with \"error:\"".into());
            }
            if fs::read(&blocker).ok().as_deref() != Some(&content[..]) {
                problems.push("the regular file in the way was changed or removed".into());
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "[{name}] {}\n  $ {repro}\n  exit: {}\n  stderr: {stderr:?}",
                    problems.join("; "),
                    outp.status
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} unwritable-output cases broke the contract:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );

    // An --out that is a file is refused before any work: with an input that is no .npy
    // either, the error is about --out, not about the input it would have read first.
    let not_npy = s.file("not.npy", b"plain text");
    for sub in ["forward", "backward"] {
        let mut args = strs(&[sub, "--x", &not_npy]);
        if sub == "backward" {
            args.extend(strs(&["--dy", &not_npy]));
        }
        args.extend(strs(&["--device", "cpu", "--out", &blocker_str]));
        let out = run(&args).unwrap_or_else(|e| panic!("{sub}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("error: invalid --out") && stderr.contains("is a file"),
            "{sub}: {stderr}"
        );
    }
}

#[test]
fn info_prints_the_chosen_adapter() {
    let out = run(&strs(&["info"])).unwrap_or_else(|e| panic!("batchnorm info: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "batchnorm info failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let chosen: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("chosen:"))
        .collect();
    assert_eq!(
        chosen.len(),
        1,
        "expected one \"chosen:\" line\nstdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        chosen[0].len() > "chosen:".len() + 1,
        "the chosen line names no adapter: {:?}",
        chosen[0]
    );
}

/// `batchnorm bench | head -1`: once the reader has gone, the CLI stops quietly (exit 0, no
/// panic), as Unix tools do.
#[test]
fn a_closed_stdout_ends_the_run_quietly() {
    let mut cmd = Command::new(BIN);
    cmd.args(["bench", "--shape", "8x8x4x4", "--iters", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    with_runtime_dir(&mut cmd);
    let mut child = cmd.spawn().expect("spawn batchnorm");
    // Close the read end before the first line: the adapter takes far longer to open.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for batchnorm");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}, stderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}

/// A closed stderr costs the run nothing: the progress lines and the error line are dropped,
/// the bench still prints its table (exit 0), and a refusal still exits 1, where eprintln!
/// panicked (exit 101).
#[test]
fn a_closed_stderr_is_no_panic() {
    for (args, code, table) in [
        (
            &["bench", "--shape", "8x8x4x4", "--iters", "1"][..],
            0,
            true,
        ),
        (
            &["bench", "--shape", "8x8x4x4,2x3", "--iters", "1"][..],
            1,
            false,
        ),
    ] {
        // The read end is closed before the child starts: its first write already fails.
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(writer);
        with_runtime_dir(&mut cmd);
        let out = cmd.output().expect("run batchnorm");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(code), "{args:?}: stdout {stdout}");
        assert_eq!(
            stdout.contains("forward"),
            table,
            "{args:?}: stdout {stdout}"
        );
    }
}

/// `batchnorm bench` checks every shape before it times any: a bad shape after a good one ends
/// the run at once, with one error line, exit 1 and nothing on stdout (not even the header);
/// so does a shape whose byte count wraps u64, which once panicked allocating its inputs.
#[test]
fn bench_refuses_bad_shapes_before_timing_any() {
    for (shape, layout, says) in [
        ("8x8x4x4,2x3", "both", "multiple of four"),
        (
            "2305843009213693952x2",
            "both",
            "the most one allocation can",
        ),
        // Found by the layer only when it runs: the first shape must not be timed first.
        ("4x8x16x16,1x8", "both", "more than 1 value per channel"),
        (
            "4x8x16x16,2x5000000",
            "both",
            "channels is 5000000, over the limit",
        ),
        // Named as given, not as stored channels-last.
        (
            "4x8x16x16,1x4x0x2",
            "nhwc",
            "dimension 2 of shape [1, 4, 0, 2]",
        ),
    ] {
        let args = [
            "bench", "--shape", shape, "--layout", layout, "--iters", "1",
        ];
        let out = run(&strs(&args)).unwrap_or_else(|e| panic!("bench: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{shape}: stderr {stderr}");
        assert!(stdout.is_empty(), "{shape}: stdout {stdout}");
        assert!(
            stderr.starts_with("error:") && stderr.contains(says) && stderr.lines().count() == 1,
            "{shape}: stderr {stderr}"
        );
    }
}

/// A shape the layer refuses (rank 1, rank 6, no channels) is reported with the file it
/// came from, on one line.
#[test]
fn an_input_shape_refused_names_its_file() {
    let s = Scratch::new("shape-names-file");
    for (dims, says) in [
        (vec![6], "rank 1 is not supported"),
        (vec![2, 3, 1, 1, 1, 2], "rank 6 is not supported"),
        (vec![2, 0, 4], "shape [2, 0, 4] has no channels"),
    ] {
        let tag = format!("x_{}.npy", dims.len());
        let values = vec![0.5; dims.iter().product()];
        let x = s.file(&tag, &f32_values(&dims, &values));
        let out_dir = s.fresh_out(&tag);
        let args = strs(&[
            "forward",
            "--x",
            &x,
            "--out",
            &out_dir.display().to_string(),
        ]);
        let out = run(&args).unwrap_or_else(|e| panic!("{dims:?}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{dims:?}: stderr {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {x}: ")) && stderr.contains(says),
            "{dims:?}: stderr {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{dims:?}: stderr {stderr}");
    }
}

/// An adapter name that matches nothing (or is empty), a backend list with a name that is no
/// backend, or a power preference wgpu does not know, is an error on one line, not a panic
/// (wgpu's own adapter helper panics) nor a silent choice of another.
#[test]
fn adapter_and_backend_variables_that_match_nothing_are_refused() {
    let s = Scratch::new("adapter-env");
    let x = s.file("x.npy", &f32_npy(&[2, 3, 4]));
    let mut failures = Vec::new();
    for (env, says) in [
        (
            ("WGPU_ADAPTER_NAME", "no-such-adapter"),
            "matches none of the adapters",
        ),
        (("WGPU_BACKEND", "vulkann"), "names something other than"),
        // wgpu would drop the misspelt name and go on with Vulkan alone.
        (
            ("WGPU_BACKEND", "vulkan,metl"),
            "names something other than",
        ),
        (("WGPU_POWER_PREF", "hihg"), "is none of low, high, none"),
        (("WGPU_ADAPTER_NAME", ""), "is empty"),
    ] {
        let out_dir = s.fresh_out(env.0);
        let args = strs(&[
            "forward",
            "--x",
            &x,
            "--out",
            &out_dir.display().to_string(),
        ]);
        let out = run_with_env(&args, &[env]).unwrap_or_else(|e| panic!("{env:?}: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let left = listing(&out_dir).unwrap_or_default();
        if out.status.code() != Some(1)
            || !out.stdout.is_empty()
            || !left.is_empty()
            || !stderr.starts_with("error:")
            || !stderr.contains(says)
            || stderr.lines().count() != 1
        {
            failures.push(format!(
                "{env:?}: exit {}, stdout {:?}, files {left:?}, stderr {stderr:?}",
                out.status,
                String::from_utf8_lossy(&out.stdout)
            ));
        }
    }
    // `info` lists adapters under the same variable, and refuses the same typo.
    let out = run_with_env(&strs(&["info"]), &[("WGPU_BACKEND", "vulkann")])
        .unwrap_or_else(|e| panic!("info: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(1)
        || !out.stdout.is_empty()
        || !stderr.contains("names something other than")
    {
        failures.push(format!(
            "info with WGPU_BACKEND=vulkann: exit {}, stdout {:?}, stderr {stderr:?}",
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An (N, C) shape is the same memory in either layout: whatever --layout says, it runs once,
/// labelled `nc`.
#[test]
fn bench_runs_an_nc_shape_once() {
    for layout in ["nhwc", "both"] {
        let args = strs(&["bench", "--shape", "16x32", "--layout", layout]);
        let mut args = args;
        args.extend(strs(&["--iters", "1", "--format", "csv"]));
        let out = run(&args).unwrap_or_else(|e| panic!("bench: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{layout}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<Vec<&str>> = stdout
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        assert!(rows.iter().all(|r| r[2] == "nc"), "{layout}: {stdout}");
        let cpu_forward = rows
            .iter()
            .filter(|r| r[0] == "cpu" && r[3] == "forward")
            .count();
        assert_eq!(cpu_forward, 1, "{layout}: {stdout}");
    }
}

/// Two values per channel is a shape training takes, and the bench times it: its dx is the
/// near-cancellation of three paths, which the check measures against the paths' size (a
/// plain relative error refused 2x2 with 4.2e-3 and 1x8x2 with 4.9e-4).
#[test]
fn bench_takes_two_values_per_channel() {
    for shape in ["2x2", "1x8x2"] {
        let args = strs(&["bench", "--shape", shape, "--iters", "1", "--format", "csv"]);
        let out = run(&args).unwrap_or_else(|e| panic!("bench: {e}"));
        assert!(
            out.status.success(),
            "{shape}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.lines().skip(1).any(|l| l.starts_with("gpu,")),
            "{stdout}"
        );
    }
}

/// The bench prints nothing until every shape has run: stopped while it times its second
/// shape (after the first one's rows exist), it has written nothing to stdout, so a run that
/// fails part-way (a copy roof refused, an allocation) leaves no figures either.
#[test]
fn bench_stopped_part_way_leaves_stdout_empty() {
    use std::io::BufRead as _;
    let mut cmd = Command::new(BIN);
    cmd.args(strs(&[
        "bench",
        "--shape",
        "4x8x6x6,32x64x56x56",
        "--layout",
        "nchw",
        "--iters",
        "50",
        "--format",
        "csv",
    ]))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    with_runtime_dir(&mut cmd);
    let mut child = cmd.spawn().expect("spawn the CLI");
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut v);
        v
    });
    let stderr = std::io::BufReader::new(child.stderr.take().expect("piped"));
    let mut seen = Vec::new();
    for line in stderr.lines() {
        let line = line.expect("stderr");
        let second = line.contains("32x64x56x56 nchw: gpu passes");
        seen.push(line);
        if second {
            break;
        }
    }
    let _ = child.kill();
    let status = child.wait().expect("wait");
    let printed = reader.join().expect("stdout reader");
    assert!(
        seen.iter()
            .any(|l| l.contains("32x64x56x56 nchw: gpu passes")),
        "never reached the second shape: {seen:?}"
    );
    assert!(!status.success(), "finished before it was stopped");
    assert!(
        printed.is_empty(),
        "stdout before the end: {}",
        String::from_utf8_lossy(&printed)
    );
}

/// `batchnorm bench --format csv`: the header, then for each layout one row per command and
/// timing (the copy roof, the three GPU passes, the three CPU ones), every figure a positive
/// number, nothing else on stdout, progress on stderr. 5×8×32×33 is 10,560 vec4: two whole
/// blocks of the copy roof and a part of a third, whose output the bench checks before it
/// times it (a roof that skipped values fails the run).
#[test]
fn bench_csv_has_every_row_and_nothing_else() {
    let out = run(&strs(&[
        "bench",
        "--shape",
        "5x8x32x33",
        "--layout",
        "both",
        "--iters",
        "2",
        "--format",
        "csv",
    ]))
    .unwrap_or_else(|e| panic!("bench: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {}, stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains("5x8x32x33 nchw: verifying against the CPU reference"),
        "no progress on stderr: {stderr}"
    );
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some("impl,shape,layout,pass,median_ms,gbps,timing")
    );
    let mut seen = BTreeSet::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 7, "not a row: {line:?}");
        assert_eq!(f[1], "5x8x32x33", "{line}");
        for figure in [f[4], f[5]] {
            let v: f64 = figure
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}"));
            assert!(v.is_finite() && v > 0.0, "{line}");
        }
        assert!(matches!(f[6], "kernel" | "end_to_end"), "{line}");
        // Kernel rows only where the adapter has timestamps; CPU rows are end to end only.
        assert!(f[0] != "cpu" || f[6] == "end_to_end", "{line}");
        assert!(
            seen.insert((
                f[0].to_string(),
                f[2].to_string(),
                f[3].to_string(),
                f[6].to_string()
            )),
            "twice: {line}"
        );
    }
    for layout in ["nchw", "nhwc"] {
        for (implementation, pass) in [
            ("copy", "copy"),
            ("gpu", "forward"),
            ("gpu", "eval"),
            ("gpu", "backward"),
            ("cpu", "forward"),
            ("cpu", "eval"),
            ("cpu", "backward"),
        ] {
            let key = (
                implementation.to_string(),
                layout.to_string(),
                pass.to_string(),
                "end_to_end".to_string(),
            );
            assert!(seen.contains(&key), "no row for {key:?} in:\n{stdout}");
        }
    }
}
