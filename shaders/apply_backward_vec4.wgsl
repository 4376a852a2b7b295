// Backward, element-wise, four values per load: the vec4 twin of apply_backward, laid out
// like apply_forward_vec4.

// Set where inner divides by four (see apply_forward_vec4).
override ONE_CHANNEL_PER_LANE: bool = false;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy: array<vec4<f32>>;
// (center, k1, k2, k0)
@group(0) @binding(3) var<storage, read> coeff: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dx: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let col = gid.x;
    let width = p.apply_width / 4u;
    if col >= width {
        return;
    }
    var center: vec4<f32>;
    var k1: vec4<f32>;
    var k2: vec4<f32>;
    var k0: vec4<f32>;
    if ONE_CHANNEL_PER_LANE {
        let c = coeff[(4u * col / p.inner) % p.channels];
        center = vec4<f32>(c.x);
        k1 = vec4<f32>(c.y);
        k2 = vec4<f32>(c.z);
        k0 = vec4<f32>(c.w);
    } else {
        for (var k = 0u; k < 4u; k++) {
            let c = coeff[((4u * col + k) / p.inner) % p.channels];
            center[k] = c.x;
            k1[k] = c.y;
            k2[k] = c.z;
            k0[k] = c.w;
        }
    }
    let total = p.total / 4u;
    let r_begin = wid.y * p.apply_rows_per_group;
    let r_end = min(r_begin + p.apply_rows_per_group, p.apply_rows);
    for (var r = r_begin; r < r_end; r++) {
        let idx = r * width + col;
        if idx < total {
            dx[idx] = k1 * dy[idx] + k2 * (x[idx] - center) + k0;
        }
    }
}
