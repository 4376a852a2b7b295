// The roof for the benchmarks: a plain copy of the same bytes, vec4 at a time, on the same
// adapter. Batch norm moves at least these bytes (forward: read x, write y), so its speed
// is reported as a fraction of this kernel's.
//
// Each workgroup copies one block of PER_LANE·256 neighbouring vec4, neighbouring lanes on
// neighbouring vec4 at every step (coalesced on a GPU), at constant offsets from one index
// (a CPU rasterizer unrolls the loop and reads one stream per workgroup). On lavapipe this
// copy took 0.83–1.05 of a grid-stride copy's time, 0.94 in the median (PERF.md 30); the
// bench takes the faster of it and the one-per-lane form (PER_LANE = 1) as the roof.

// How many vec4 to copy.
@group(0) @binding(0) var<uniform> len4: u32;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

// Sixteen, as the element-wise kernels take sixteen rows per lane, so that the roof pays no
// more per-workgroup overhead than they do. The bench also times one per lane, which an H100
// ran faster (PERF.md 41), and takes the faster copy as the roof.
override PER_LANE: u32 = 16u;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    // Blocks beyond one dimension's workgroup limit continue along y.
    let block = wid.x + wid.y * groups.x;
    let first = block * PER_LANE * 256u + lid;
    for (var k = 0u; k < PER_LANE; k++) {
        let i = first + k * 256u;
        if i < len4 {
            dst[i] = src[i];
        }
    }
}
