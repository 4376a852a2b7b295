// PERF.md 59's harness: what a two-pass forward and backward cost lavapipe at best. Not built
// with the crate: copy it into examples/ and run `cargo run --release --example floor59 -- ELEMS`.
// Kernels with the copy roof's blocking (16 vec4 per lane, 256 lanes): copy, a read-only
// pass (x), a two-input read-only pass (x, dy), and two-in-one-out (x, dy -> dx).
use wgpu_batchnorm::GpuContext;

const SRC: &str = r#"
override RUN: u32 = 16u;
override MODE: u32 = 0u;
@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let n = arrayLength(&a);
    let lane = wid.x * 256u + lid;
    let base = wid.x * RUN * 256u + lid;
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < RUN; k++) {
        let i = base + k * 256u;
        if i < n {
            if MODE == 0u { dst[i] = a[i]; }
            if MODE == 1u { acc += a[i]; }
            if MODE == 2u { acc += a[i] * b[i]; }
            if MODE == 3u { dst[i] = a[i] * 0.5 + b[i]; }
        }
    }
    if (MODE == 1u || MODE == 2u) && base < n {
        dst[lane] = acc;
    }
}
"#;

fn main() {
    let elems: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let iters = 20;
    let ctx = GpuContext::new().unwrap();
    let d = ctx.device();
    let q = ctx.queue();
    let bytes = (elems * 4) as u64;
    let rot = ((256usize << 20) / (elems * 4)).clamp(2, 64);
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
    let mk = |size: u64| {
        d.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage,
            mapped_at_creation: false,
        })
    };
    let data: Vec<f32> = (0..elems).map(|i| (i % 97) as f32 * 0.01).collect();
    let xs: Vec<_> = (0..rot)
        .map(|_| {
            let b = mk(bytes);
            q.write_buffer(&b, 0, bytemuck::cast_slice(&data));
            b
        })
        .collect();
    let ys: Vec<_> = (0..rot)
        .map(|_| {
            let b = mk(bytes);
            q.write_buffer(&b, 0, bytemuck::cast_slice(&data));
            b
        })
        .collect();
    let module = d.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: None,
        source: wgpu::ShaderSource::Wgsl(SRC.into()),
    });
    let pipes: Vec<_> = (0..4)
        .map(|m| {
            d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: None,
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &[("MODE", m as f64)],
                    ..Default::default()
                },
                cache: None,
            })
        })
        .collect();
    let set = d.create_query_set(&wgpu::QuerySetDescriptor {
        label: None,
        ty: wgpu::QueryType::Timestamp,
        count: 2,
    });
    let resolve = d.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = d.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let period = q.get_timestamp_period() as f64;
    let groups = (elems / 4).div_ceil(256 * 16) as u32;
    let mut times = vec![Vec::new(); 4];
    let mut turn = 0usize;
    for it in 0..(iters + rot / 4 + 2) {
        for m in 0..4 {
            // Inputs from x's rotation (and ys as dy), output into a buffer of the other
            // rotation that this command does not read.
            let i = turn % rot;
            turn += 1;
            let (a, b, dst) = (&xs[i], &ys[(i + rot / 2) % rot], &ys[(i + 1) % rot]);
            let bg = d.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipes[m].get_bind_group_layout(0),
                entries: &[
                    wgpu::BindGroupEntry {
                        binding: 0,
                        resource: a.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 1,
                        resource: b.as_entire_binding(),
                    },
                    wgpu::BindGroupEntry {
                        binding: 2,
                        resource: dst.as_entire_binding(),
                    },
                ],
            });
            let mut e = d.create_command_encoder(&Default::default());
            e.write_timestamp(&set, 0);
            {
                let mut p = e.begin_compute_pass(&Default::default());
                p.set_pipeline(&pipes[m]);
                p.set_bind_group(0, &bg, &[]);
                p.dispatch_workgroups(groups, 1, 1);
            }
            e.write_timestamp(&set, 1);
            e.resolve_query_set(&set, 0..2, &resolve, 0);
            e.copy_buffer_to_buffer(&resolve, 0, &read, 0, 16);
            q.submit([e.finish()]);
            read.slice(..).map_async(wgpu::MapMode::Read, |_| {});
            d.poll(wgpu::PollType::wait_indefinitely()).unwrap();
            let ts: [u64; 2] =
                bytemuck::cast_slice::<u8, u64>(&read.slice(..).get_mapped_range().unwrap())[..2]
                    .try_into()
                    .unwrap();
            read.unmap();
            if it >= rot / 4 + 2 {
                times[m].push((ts[1] - ts[0]) as f64 * period / 1e6);
            }
        }
    }
    let med = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let t: Vec<f64> = times.iter().map(med).collect();
    println!(
        "elems {elems}: copy {:.3} ms, read x {:.3} ({:.2} copy), read x+dy {:.3} ({:.2}), x+dy->dx {:.3} ({:.2}); floor forward {:.2}, backward {:.2}",
        t[0], t[1], t[1] / t[0], t[2], t[2] / t[0], t[3], t[3] / t[0],
        t[0] / (t[1] + t[0]), 1.5 * t[0] / (t[2] + t[3])
    );
}
