// How the finalize kernels (stats_finalize, eval_finalize, grad_finalize) hand a channel's
// coefficients to the element-wise kernels, put before them by the host. The kernel
// declares `p` and `coeff`.
//
// One vec4 record per channel, or, where a lane's four values are four neighbouring channels
// (channels-last and (N, C): GROUPED_COEFF, set by the host with apply_vec4's
// CHANNELS_PER_LANE = 4), the records of four channels side by side: record 4·(c / 4) + k
// holds coefficient k of those four channels, component c % 4 for channel c. A lane then
// loads each coefficient of its four channels in one access, and a kernel that does not use
// the fourth coefficient (the forward) skips its record: lavapipe pays per access and lane
// (PERF.md 48).
//
// The kernel binds `coeff` as array<f32>, where the element-wise kernels read vec4: under
// GROUPED_COEFF four invocations write the four components of one record, and WGSL lets a
// write to one component of a vector touch the whole vector, so that writes to one vec4 by
// different invocations would race. Scalars are separate memory locations.
const GROUPED_COEFF: u32 = 8u;

fn store_coeff(c: u32, k: vec4<f32>) {
    var at = vec4<u32>(4u * c) + vec4<u32>(0u, 1u, 2u, 3u);
    if (p.flags & GROUPED_COEFF) != 0u {
        let first = c - c % 4u;
        at = vec4<u32>(4u * first + c % 4u) + vec4<u32>(0u, 4u, 8u, 12u);
    }
    coeff[at.x] = k.x;
    coeff[at.y] = k.y;
    coeff[at.z] = k.z;
    coeff[at.w] = k.w;
}
