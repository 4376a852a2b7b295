//! Thread safety: the public types are Send + Sync, and layers on one shared `GpuContext`
//! driven from several threads at once compute exactly what one thread computes alone.

mod common;

use std::sync::{Arc, Barrier};

use ndarray::ArrayD;
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, Device, GpuBatchNorm, GpuContext, Layout};

fn assert_send_sync<T: Send + Sync>() {}

/// A compile-time check: this test does not build if any of the three types loses Send or
/// Sync.
#[test]
fn public_types_are_send_and_sync() {
    assert_send_sync::<GpuContext>();
    assert_send_sync::<Arc<GpuContext>>();
    assert_send_sync::<GpuBatchNorm>();
    assert_send_sync::<BatchNorm>();
}

/// The re-exports are the crate's own wgpu and ndarray: a caller's values of either type
/// go in where the crate's are taken (a compile-time check).
#[test]
fn reexports_are_the_crates_own() {
    fn takes_ours(_: Option<&wgpu::Device>, _: Option<&ndarray::ArrayD<f32>>) {}
    let device: Option<&wgpu_batchnorm::wgpu::Device> = None;
    let array: Option<&wgpu_batchnorm::ndarray::ArrayD<f32>> = None;
    takes_ours(device, array);
}

/// A model struct that holds layers can derive Debug, and what the layers print says which
/// layer it is and where it runs.
#[test]
fn public_types_are_debug() {
    #[derive(Debug)]
    #[allow(dead_code)]
    struct Model {
        gpu: BatchNorm,
        cpu: BatchNorm,
        device: Device,
    }
    common::set_runtime_dir();
    let ctx = GpuContext::new().unwrap();
    let mut gpu = BatchNorm::new(BatchNormConfig::new(5), Device::Gpu(ctx.clone())).unwrap();
    gpu.eval();
    let model = Model {
        gpu,
        cpu: BatchNorm::new(BatchNormConfig::new(7), Device::Cpu).unwrap(),
        device: Device::Gpu(ctx.clone()),
    };
    let adapter = &ctx.adapter_info().unwrap().name;
    let has_all = |text: &str, parts: &[&str]| {
        for part in parts {
            assert!(text.contains(part), "no {part:?} in {text}");
        }
    };
    let gpu = format!("{:?}", model.gpu);
    let cpu = format!("{:?}", model.cpu);
    let common = "num_batches_tracked: Some(0)";
    has_all(
        &gpu,
        &[
            "device: \"Gpu\"",
            "num_features: 5",
            "training: false",
            common,
            adapter,
        ],
    );
    has_all(
        &cpu,
        &[
            "device: \"Cpu\"",
            "num_features: 7",
            "training: true",
            common,
        ],
    );
    assert!(!cpu.contains(adapter.as_str()), "{cpu}");
    let device = format!("{:?}", model.device);
    assert!(
        device.starts_with("Gpu(GpuContext") && device.contains(adapter.as_str()),
        "{device}"
    );
    assert!(format!("{model:?}").contains(&gpu));
}

const THREADS: usize = 4;
const STEPS: usize = 20;

/// Everything one step produced, as raw f32 so it can be compared bit for bit.
#[derive(Debug, PartialEq)]
struct StepResult {
    y: Vec<u32>,
    stats: Option<[Vec<u32>; 3]>,
    dx: Vec<u32>,
    dgamma: Option<Vec<u32>>,
    dbeta: Option<Vec<u32>>,
}

#[derive(Debug, PartialEq)]
struct Run {
    steps: Vec<StepResult>,
    running_mean: Vec<u32>,
    running_var: Vec<u32>,
    num_batches_tracked: u64,
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn array_bits(a: &ArrayD<f32>) -> Vec<u32> {
    a.iter().map(|x| x.to_bits()).collect()
}

/// Worker `id`'s shape and layout: a different channel count and layout per worker, so the
/// workers also run different pipelines' geometries side by side.
fn geometry(id: usize) -> (Vec<usize>, Layout, usize) {
    let c = 3 + id;
    if id.is_multiple_of(2) {
        (vec![4, c, 5, 7], Layout::ChannelsFirst, c)
    } else {
        (vec![4, 5, 7, c], Layout::ChannelsLast, c)
    }
}

fn new_layer(id: usize, ctx: &Arc<GpuContext>) -> BatchNorm {
    new_layer_on(id, Device::Gpu(ctx.clone()))
}

fn new_layer_on(id: usize, device: Device) -> BatchNorm {
    let (_, _, c) = geometry(id);
    let mut config = BatchNormConfig::new(c);
    if id == 3 {
        config.momentum = None;
    }
    let mut layer = BatchNorm::new(config, device).unwrap();
    let mut rng = common::Rng::new(1000 + id as u64);
    layer.set_gamma(&rng.normal_vec(c, 1.0, 0.3)).unwrap();
    layer.set_beta(&rng.normal_vec(c, 0.0, 1.0)).unwrap();
    layer
}

/// Worker `id`'s 20 steps: training forward + backward with its own seeded inputs, an eval
/// step every fifth step, the running statistics read back along the way.
fn run_worker(id: usize, mut layer: BatchNorm, start: Option<&Barrier>) -> Run {
    let (dims, layout, _) = geometry(id);
    let mut rng = common::Rng::new(id as u64);
    if let Some(barrier) = start {
        barrier.wait();
    }
    let mut steps = Vec::new();
    for step in 0..STEPS {
        layer.set_training(step % 5 != 4);
        let x = rng.array(&dims, id as f64 - 1.0, 1.0 + id as f64);
        let dy = rng.array(&dims, 0.0, 1.0);
        let f = layer.forward(x.view(), layout).unwrap();
        let b = layer.backward(x.view(), dy.view(), layout).unwrap();
        if step % 7 == 3 {
            // Read-backs (map + poll) interleaved with other threads' submissions.
            layer.running_mean().unwrap();
            layer.gamma().unwrap();
        }
        steps.push(StepResult {
            y: array_bits(&f.y),
            stats: f
                .stats
                .map(|s| [bits(&s.mean), bits(&s.var), bits(&s.invstd)]),
            dx: array_bits(&b.dx),
            dgamma: b.dgamma.as_deref().map(bits),
            dbeta: b.dbeta.as_deref().map(bits),
        });
    }
    Run {
        steps,
        running_mean: bits(&layer.running_mean().unwrap()),
        running_var: bits(&layer.running_var().unwrap()),
        num_batches_tracked: layer.num_batches_tracked().unwrap(),
    }
}

#[test]
fn four_threads_on_one_context_match_one_thread() {
    let ctx = common::gpu();

    // Layers are made here and moved into the threads (Send), the context shared (Sync).
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|id| {
            let layer = new_layer(id, &ctx);
            let barrier = barrier.clone();
            std::thread::spawn(move || run_worker(id, layer, Some(&barrier)))
        })
        .collect();
    let parallel: Vec<Run> = handles.into_iter().map(|h| h.join().unwrap()).collect();

    // The same work, one worker after another on this thread.
    let sequential: Vec<Run> = (0..THREADS)
        .map(|id| run_worker(id, new_layer(id, &ctx), None))
        .collect();

    for (id, (p, s)) in parallel.iter().zip(&sequential).enumerate() {
        assert_eq!(
            p.num_batches_tracked,
            (STEPS - STEPS / 5) as u64,
            "worker {id}"
        );
        assert_eq!(p.num_batches_tracked, s.num_batches_tracked, "worker {id}");
        assert_eq!(p.running_mean, s.running_mean, "worker {id}: running_mean");
        assert_eq!(p.running_var, s.running_var, "worker {id}: running_var");
        for (step, (ps, ss)) in p.steps.iter().zip(&s.steps).enumerate() {
            assert!(
                ps == ss,
                "worker {id} step {step}: results differ from one thread's"
            );
        }
        assert_eq!(p.steps.len(), STEPS);
    }
    // And what they agree on is right: each worker's run on the CPU reference, which shares
    // nothing with the GPU's, every output of every step within 1e-5.
    let floats = |v: &[u32]| v.iter().map(|&b| f32::from_bits(b)).collect::<Vec<_>>();
    for (id, p) in parallel.iter().enumerate() {
        let reference = run_worker(id, new_layer_on(id, Device::Cpu), None);
        let mut errors = Vec::new();
        let mut compare = |what: String, got: &[u32], want: &[u32]| {
            common::check::compare(&mut errors, &what, &floats(got), &floats(want))
        };
        compare(
            format!("worker {id} running_mean"),
            &p.running_mean,
            &reference.running_mean,
        );
        compare(
            format!("worker {id} running_var"),
            &p.running_var,
            &reference.running_var,
        );
        for (step, (ps, rs)) in p.steps.iter().zip(&reference.steps).enumerate() {
            let at = |what: &str| format!("worker {id} step {step} {what}");
            compare(at("y"), &ps.y, &rs.y);
            compare(at("dx"), &ps.dx, &rs.dx);
            let pairs = [
                ("dgamma", &ps.dgamma, &rs.dgamma),
                ("dbeta", &ps.dbeta, &rs.dbeta),
            ];
            for (what, got, want) in pairs {
                assert_eq!(got.is_some(), want.is_some(), "{}", at(what));
                if let (Some(got), Some(want)) = (got, want) {
                    compare(at(what), got, want);
                }
            }
            assert_eq!(ps.stats.is_some(), rs.stats.is_some(), "{}", at("stats"));
            if let (Some(got), Some(want)) = (&ps.stats, &rs.stats) {
                for (k, what) in ["mean", "var", "invstd"].into_iter().enumerate() {
                    compare(at(what), &got[k], &want[k]);
                }
            }
        }
        common::check::assert_no_mismatches(&errors);
    }
}

/// One layer used from several threads in turn, behind a mutex (Send + Sync of `BatchNorm`
/// put to use), gives what it gives on one thread.
#[test]
fn a_layer_behind_a_mutex_is_usable_from_any_thread() {
    let ctx = common::gpu();
    let dims = [6usize, 3, 4, 4];
    let mut rng = common::Rng::new(77);
    let inputs: Vec<_> = (0..8)
        .map(|_| (rng.array(&dims, 0.5, 2.0), rng.array(&dims, 0.0, 1.0)))
        .collect();
    let inputs = Arc::new(inputs);

    let shared = Arc::new(std::sync::Mutex::new(
        BatchNorm::new(BatchNormConfig::new(3), Device::Gpu(ctx.clone())).unwrap(),
    ));
    for i in 0..inputs.len() {
        let (shared, inputs) = (shared.clone(), inputs.clone());
        std::thread::spawn(move || {
            let (x, dy) = &inputs[i];
            let mut l = shared.lock().unwrap();
            l.forward(x.view(), Layout::ChannelsFirst).unwrap();
            l.backward(x.view(), dy.view(), Layout::ChannelsFirst)
                .unwrap();
        })
        .join()
        .unwrap();
    }

    // The same steps on one thread, on the GPU (bit for bit) and on the CPU reference.
    let mut alone = BatchNorm::new(BatchNormConfig::new(3), Device::Gpu(ctx)).unwrap();
    let mut reference = BatchNorm::new(BatchNormConfig::new(3), Device::Cpu).unwrap();
    for layer in [&mut alone, &mut reference] {
        for (x, dy) in inputs.iter() {
            layer.forward(x.view(), Layout::ChannelsFirst).unwrap();
            layer
                .backward(x.view(), dy.view(), Layout::ChannelsFirst)
                .unwrap();
        }
    }
    let l = shared.lock().unwrap();
    for (what, got, want) in [
        ("running_mean", l.running_mean(), reference.running_mean()),
        ("running_var", l.running_var(), reference.running_var()),
    ] {
        let (got, want) = (got.unwrap(), want.unwrap());
        let e = common::rel_l2(&got, want.iter().map(|&v| v as f64));
        assert!(e < 1e-5, "{what} off the CPU reference by {e:e}");
    }
    assert_eq!(l.num_batches_tracked(), Some(8));
    assert_eq!(
        bits(&l.running_mean().unwrap()),
        bits(&alone.running_mean().unwrap())
    );
    assert_eq!(
        bits(&l.running_var().unwrap()),
        bits(&alone.running_var().unwrap())
    );
}

/// The getters take `&self`, so one layer may be read from several threads at once (it is
/// `Sync`): each read must still return its own buffer's values, not another getter's, and
/// never fail on a staging buffer that another read holds mapped.
#[test]
fn concurrent_getters_on_one_layer_each_read_their_own_values() {
    let ctx = common::gpu();
    let c = 6;
    let mut layer = BatchNorm::new(BatchNormConfig::new(c), Device::Gpu(ctx)).unwrap();
    let want: Vec<Vec<f32>> = (0..4)
        .map(|k| (0..c).map(|i| (10 * k + i) as f32 + 0.5).collect())
        .collect();
    layer.set_gamma(&want[0]).unwrap();
    layer.set_beta(&want[1]).unwrap();
    layer.set_running_mean(&want[2]).unwrap();
    layer.set_running_var(&want[3]).unwrap();

    let layer = &layer;
    type Getter = fn(&BatchNorm) -> wgpu_batchnorm::Result<Vec<f32>>;
    let getters: [Getter; 4] = [
        BatchNorm::gamma,
        BatchNorm::beta,
        BatchNorm::running_mean,
        BatchNorm::running_var,
    ];
    let start = Barrier::new(getters.len());
    std::thread::scope(|s| {
        for (k, get) in getters.iter().enumerate() {
            let (start, want) = (&start, &want[k]);
            s.spawn(move || {
                start.wait();
                for round in 0..100 {
                    let got =
                        get(layer).unwrap_or_else(|e| panic!("getter {k}, round {round}: {e}"));
                    assert_eq!(&got, want, "getter {k}, round {round}");
                }
            });
        }
    });
}
