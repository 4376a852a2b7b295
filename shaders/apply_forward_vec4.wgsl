// Forward, element-wise, four values per load: the vec4 twin of apply_forward for shapes
// whose [channels][inner] plane divides by four. The four components may belong to different
// channels; each lane works out its four channels once, as its column never changes.

// How many channels a lane's four values (which start at a multiple of four) fall into, fixed
// by the shape: 1 where inner divides by four; 2 where inner is at least 2, the second being
// the next channel; 4 where inner is 1 (channels-last), four neighbouring channels, as the
// plane divides by four. A pipeline constant, not a test of p.inner: lavapipe runs both
// sides of a branch on a uniform, and each coefficient load and integer division is a loop
// over its SIMD group's lanes there.
override CHANNELS_PER_LANE: u32 = 1u;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
// (center, scale, shift, 0)
@group(0) @binding(2) var<storage, read> coeff: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let col = gid.x;
    let width = p.apply_width / 4u;
    if col >= width {
        return;
    }
    var center: vec4<f32>;
    var scale: vec4<f32>;
    var shift: vec4<f32>;
    if CHANNELS_PER_LANE == 1u {
        let c = coeff[(4u * col / p.inner) % p.channels];
        center = vec4<f32>(c.x);
        scale = vec4<f32>(c.y);
        shift = vec4<f32>(c.z);
    } else if CHANNELS_PER_LANE == 2u {
        // The channel of the lane's first value, counted across the row's planes.
        let first = 4u * col / p.inner;
        let a = coeff[first % p.channels];
        let b = coeff[(first + 1u) % p.channels];
        let in_next = vec4<u32>(4u * col) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>((first + 1u) * p.inner);
        center = select(vec4<f32>(a.x), vec4<f32>(b.x), in_next);
        scale = select(vec4<f32>(a.y), vec4<f32>(b.y), in_next);
        shift = select(vec4<f32>(a.z), vec4<f32>(b.z), in_next);
    } else {
        let c = (4u * col) % p.channels;
        let c0 = coeff[c];
        let c1 = coeff[c + 1u];
        let c2 = coeff[c + 2u];
        let c3 = coeff[c + 3u];
        center = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
        scale = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
        shift = vec4<f32>(c0.z, c1.z, c2.z, c3.z);
    }
    let total = p.total / 4u;
    let r_begin = wid.y * p.apply_rows_per_group;
    let r_end = min(r_begin + p.apply_rows_per_group, p.apply_rows);
    for (var r = r_begin; r < r_end; r++) {
        let idx = r * width + col;
        if idx < total {
            y[idx] = (x[idx] - center) * scale + shift;
        }
    }
}
