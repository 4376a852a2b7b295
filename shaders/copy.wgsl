// The roof for the benchmarks: a plain copy of the same bytes, vec4 at a time, on the same
// adapter. Batch norm moves at least these bytes (forward: read x, write y), so its speed
// is reported as a fraction of this kernel's.

// How many vec4 to copy.
@group(0) @binding(0) var<uniform> len4: u32;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    for (var i = gid.x; i < len4; i += stride) {
        dst[i] = src[i];
    }
}
