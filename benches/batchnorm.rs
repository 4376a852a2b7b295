//! CPU reference against GPU kernels, same shapes, same passes (forward, eval, backward).
//! Each GPU pass's output is checked against the CPU reference before it is timed.
//! Device setup, uploads and the first (plan-making) call stay outside the timed code; the GPU
//! figure is submit-to-done of the recorded pass. Under `cargo test --benches` (no `--bench`
//! argument, criterion's test mode) the shapes shrink and each benchmark runs once, so the
//! benches are tested too. (A `harness = false` bench is built without cfg(test) either way,
//! so the choice is made at run time, by the argument.) The inputs do not rotate here, as
//! they do in `batchnorm bench`: a shape that fits a cache is timed from it, and the
//! uploads reach the device with the first timed submit, which criterion's warm-up absorbs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ndarray::ArrayD;
use wgpu_batchnorm::bench::{
    bench_parameters, dx_error, dx_paths, input, layout_name, memory_dims, rel_l2, shape_name,
    DEFAULT_SHAPES,
};
use wgpu_batchnorm::{
    BatchNorm, BatchNormConfig, Device, GpuBatchNorm, GpuContext, GpuTensor, Layout,
};

/// `batchnorm bench`'s shapes; under test, small ones with the same kinds of plane (a
/// multiple of four, an odd 7×7, none).
const SHAPES: &[&[usize]] = DEFAULT_SHAPES;
const TEST_SHAPES: &[&[usize]] = &[&[4, 8, 6, 6], &[4, 16, 7, 7], &[16, 32]];

/// `cargo bench` passes `--bench`; `cargo test --benches` does not.
fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn runtime_dir() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        let dir = std::env::temp_dir().join(format!("batchnorm-bench-xdg-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        std::env::set_var("XDG_RUNTIME_DIR", dir);
    }
}

/// Times one recorded GPU pass from submit to done, `iters` times.
fn gpu_pass(
    ctx: &GpuContext,
    iters: u64,
    mut record: impl FnMut(&mut wgpu::CommandEncoder),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let mut encoder = ctx.device().create_command_encoder(&Default::default());
        record(&mut encoder);
        // Encoding happens in finish(): the host's part of recording, before the clock.
        let commands = encoder.finish();
        let start = Instant::now();
        ctx.queue().submit([commands]);
        ctx.device()
            .poll(wgpu::PollType::wait_indefinitely())
            .expect("poll");
        total += start.elapsed();
    }
    total
}

/// The first `n` f32 of `buffer` (COPY_SRC), read back through a staging buffer.
fn read_back(ctx: &GpuContext, buffer: &wgpu::Buffer, n: usize) -> Vec<f32> {
    let bytes = n as u64 * 4;
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench read-back"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device().create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes);
    ctx.queue().submit([encoder.finish()]);
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let values = bytemuck::cast_slice(&staging.slice(..).get_mapped_range().unwrap()).to_vec();
    staging.unmap();
    values
}

/// How far a GPU pass's output may be from the CPU reference's (relative L2; dx as
/// `dx_error` measures it), as in `batchnorm bench`.
const TOLERANCE: f64 = 1e-5;

/// Refuses to time a pass whose output the CPU reference does not confirm; `err` is its
/// error.
fn check(name: &str, what: &str, err: f64) {
    assert!(
        err <= TOLERANCE,
        "{name}: GPU {what} off the CPU reference by {err:.2e}, over {TOLERANCE:e}"
    );
}

/// Gives `layer` (a GPU or CPU one) the bench's random parameters and running statistics, so
/// that a kernel which dropped one of them fails its check.
macro_rules! set_bench_parameters {
    ($layer:expr, $channels:expr) => {{
        let [gamma, beta, running_mean, running_var] = bench_parameters($channels);
        $layer.set_gamma(&gamma).unwrap();
        $layer.set_beta(&beta).unwrap();
        $layer.set_running_mean(&running_mean).unwrap();
        $layer.set_running_var(&running_var).unwrap();
    }};
}

fn bench(c: &mut Criterion) {
    runtime_dir();
    let ctx: Arc<GpuContext> = GpuContext::new().expect("a GPU adapter (mesa-vulkan-drivers)");
    let shapes = if benchmarking() { SHAPES } else { TEST_SHAPES };
    for &logical in shapes {
        for layout in [Layout::ChannelsFirst, Layout::ChannelsLast] {
            if logical.len() == 2 && layout == Layout::ChannelsLast {
                continue;
            }
            let dims = memory_dims(logical, layout);
            let channels = logical[1];
            let numel: usize = dims.iter().product();
            let x = input(&dims, 1, 0.5, 2.0);
            let dy = input(&dims, 2, 0.0, 1.0);
            let name = format!("{}/{}", shape_name(logical), layout_name(logical, layout));

            let usage = wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC;
            let buffer = |data: Option<&ndarray::ArrayD<f32>>| {
                let b = ctx.device().create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: numel as u64 * 4,
                    usage,
                    mapped_at_creation: false,
                });
                if let Some(d) = data {
                    ctx.queue()
                        .write_buffer(&b, 0, bytemuck::cast_slice(d.as_slice().unwrap()));
                }
                b
            };
            let (xb, dyb, out) = (buffer(Some(&x)), buffer(Some(&dy)), buffer(None));
            let t = |b| GpuTensor::new(b, &dims, layout).unwrap();
            let config = BatchNormConfig::new(channels);
            let mut gpu_train = GpuBatchNorm::new(ctx.clone(), config.clone()).unwrap();
            let mut gpu_eval = GpuBatchNorm::new(ctx.clone(), config.clone()).unwrap();
            gpu_eval.set_training(false);
            set_bench_parameters!(gpu_train, channels);
            set_bench_parameters!(gpu_eval, channels);
            let mut cpu = BatchNorm::new(config.clone(), Device::Cpu).unwrap();

            // What the timed passes write, checked first, in both modes: a pass that wrote
            // the wrong buffer, or nothing, or dropped a parameter, would otherwise be timed
            // as if it worked.
            let mut reference = BatchNorm::new(config.clone(), Device::Cpu).unwrap();
            set_bench_parameters!(reference, channels);
            let flat = |a: &ArrayD<f32>| a.as_slice().expect("standard layout").to_vec();
            gpu_pass(&ctx, 1, |e| {
                gpu_train.forward(e, &t(&xb), &t(&out)).unwrap()
            });
            let forward = reference.forward(x.view(), layout).unwrap();
            let err = rel_l2(&read_back(&ctx, &out, numel), &flat(&forward.y));
            check(&name, "forward y", err);
            gpu_pass(&ctx, 1, |e| {
                gpu_train.backward(e, &t(&xb), &t(&dyb), &t(&out)).unwrap()
            });
            let want = reference.backward(x.view(), dy.view(), layout).unwrap();
            let paths = dx_paths(
                &forward,
                &reference.gamma().unwrap(),
                &reference.running_var().unwrap(),
                config.eps,
                &dy,
            );
            let err = dx_error(&read_back(&ctx, &out, numel), &flat(&want.dx), paths);
            check(&name, "backward dx", err);
            for (what, buffer, want) in [
                ("dgamma", gpu_train.dgamma_buffer(), &want.dgamma),
                ("dbeta", gpu_train.dbeta_buffer(), &want.dbeta),
            ] {
                let want = want.as_deref().expect("an affine layer");
                check(
                    &name,
                    what,
                    rel_l2(&read_back(&ctx, buffer, channels), want),
                );
            }
            let mut reference = BatchNorm::new(config, Device::Cpu).unwrap();
            set_bench_parameters!(reference, channels);
            reference.eval();
            gpu_pass(&ctx, 1, |e| gpu_eval.forward(e, &t(&xb), &t(&out)).unwrap());
            let want = reference.forward(x.view(), layout).unwrap().y;
            let err = rel_l2(&read_back(&ctx, &out, numel), &flat(&want));
            check(&name, "eval y", err);

            let mut group = c.benchmark_group(name);
            group.throughput(Throughput::Bytes(numel as u64 * 8));
            if benchmarking() {
                group
                    .sample_size(20)
                    .measurement_time(Duration::from_secs(2));
            }
            for (pass, training) in [("forward", true), ("eval", false)] {
                group.bench_function(BenchmarkId::new("gpu", pass), |b| {
                    let layer = if training {
                        &mut gpu_train
                    } else {
                        &mut gpu_eval
                    };
                    b.iter_custom(|iters| {
                        gpu_pass(&ctx, iters, |e| {
                            layer.forward(e, &t(&xb), &t(&out)).unwrap()
                        })
                    })
                });
                cpu.set_training(training);
                group.bench_function(BenchmarkId::new("cpu", pass), |b| {
                    b.iter(|| cpu.forward(x.view(), layout).unwrap())
                });
            }
            group.throughput(Throughput::Bytes(numel as u64 * 12));
            gpu_pass(&ctx, 1, |e| {
                gpu_train.forward(e, &t(&xb), &t(&out)).unwrap()
            });
            group.bench_function(BenchmarkId::new("gpu", "backward"), |b| {
                b.iter_custom(|iters| {
                    gpu_pass(&ctx, iters, |e| {
                        gpu_train.backward(e, &t(&xb), &t(&dyb), &t(&out)).unwrap()
                    })
                })
            });
            cpu.set_training(true);
            cpu.forward(x.view(), layout).unwrap();
            group.bench_function(BenchmarkId::new("cpu", "backward"), |b| {
                b.iter(|| cpu.backward(x.view(), dy.view(), layout).unwrap())
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
