// Backward, element-wise, four values per load: the vec4 twin of apply_backward, laid out
// like apply_forward_vec4.

// 1, 2 or 4: how many channels a lane's four values fall into (see apply_forward_vec4).
override CHANNELS_PER_LANE: u32 = 1u;

// Eval with running statistics: dx = k1·dy, x unread (see apply_backward).
override FROZEN: bool = false;

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
    if CHANNELS_PER_LANE == 1u {
        let c = coeff[(4u * col / p.inner) % p.channels];
        center = vec4<f32>(c.x);
        k1 = vec4<f32>(c.y);
        k2 = vec4<f32>(c.z);
        k0 = vec4<f32>(c.w);
    } else if CHANNELS_PER_LANE == 2u {
        // The channel of the lane's first value, counted across the row's planes.
        let first = 4u * col / p.inner;
        let a = coeff[first % p.channels];
        let b = coeff[(first + 1u) % p.channels];
        let in_next = vec4<u32>(4u * col) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>((first + 1u) * p.inner);
        center = select(vec4<f32>(a.x), vec4<f32>(b.x), in_next);
        k1 = select(vec4<f32>(a.y), vec4<f32>(b.y), in_next);
        k2 = select(vec4<f32>(a.z), vec4<f32>(b.z), in_next);
        k0 = select(vec4<f32>(a.w), vec4<f32>(b.w), in_next);
    } else {
        let c = (4u * col) % p.channels;
        let c0 = coeff[c];
        let c1 = coeff[c + 1u];
        let c2 = coeff[c + 2u];
        let c3 = coeff[c + 3u];
        center = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
        k1 = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
        k2 = vec4<f32>(c0.z, c1.z, c2.z, c3.z);
        k0 = vec4<f32>(c0.w, c1.w, c2.w, c3.w);
    }
    let total = p.total / 4u;
    let r_begin = wid.y * p.apply_rows_per_group;
    let r_end = min(r_begin + p.apply_rows_per_group, p.apply_rows);
    for (var r = r_begin; r < r_end; r++) {
        let idx = r * width + col;
        if idx < total {
            if FROZEN {
                dx[idx] = k1 * dy[idx];
            } else {
                dx[idx] = k1 * dy[idx] + k2 * (x[idx] - center) + k0;
            }
        }
    }
}
