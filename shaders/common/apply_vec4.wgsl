// What the vec4 element-wise kernels (apply_forward_vec4, apply_backward_vec4) share, put
// before them by the host (src/gpu/kernels.rs): the coefficient records of a lane's four
// values. The kernel declares `coeff`, one vec4 record per channel.

// How many channels a lane's four values (which start at a multiple of four) fall into, fixed
// by the shape: 1 where inner divides by four; 2 where inner is at least 2, the second being
// the next channel; 4 where inner is 1 (channels-last), four neighbouring channels, as the
// plane divides by four. A pipeline constant, not a test of p.inner: lavapipe runs both
// sides of a branch on a uniform, and each coefficient load and integer division is a loop
// over its SIMD group's lanes there.
override CHANNELS_PER_LANE: u32 = 1u;

// Column k holds component k of the records of the lane's four values, one per value. Its
// column never changes, so a lane does this once.
fn lane_coefficients(col: u32) -> mat4x4<f32> {
    if CHANNELS_PER_LANE == 1u {
        let c = coeff[p.channel_base + (4u * col / p.inner) % p.channels];
        return mat4x4<f32>(vec4<f32>(c.x), vec4<f32>(c.y), vec4<f32>(c.z), vec4<f32>(c.w));
    } else if CHANNELS_PER_LANE == 2u {
        // The channel of the lane's first value, counted across the row's planes.
        let first = 4u * col / p.inner;
        let a = coeff[p.channel_base + first % p.channels];
        let b = coeff[p.channel_base + (first + 1u) % p.channels];
        let in_next = vec4<u32>(4u * col) + vec4<u32>(0u, 1u, 2u, 3u) >= vec4<u32>((first + 1u) * p.inner);
        return mat4x4<f32>(
            select(vec4<f32>(a.x), vec4<f32>(b.x), in_next),
            select(vec4<f32>(a.y), vec4<f32>(b.y), in_next),
            select(vec4<f32>(a.z), vec4<f32>(b.z), in_next),
            select(vec4<f32>(a.w), vec4<f32>(b.w), in_next),
        );
    }
    // Records by four channels (common/store_coeff.wgsl): column k is record c + k.
    let c = p.channel_base + (4u * col) % p.channels;
    return mat4x4<f32>(coeff[c], coeff[c + 1u], coeff[c + 2u], coeff[c + 3u]);
}
