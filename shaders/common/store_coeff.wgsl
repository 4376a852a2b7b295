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
const GROUPED_COEFF: u32 = 8u;

fn store_coeff(c: u32, k: vec4<f32>) {
    if (p.flags & GROUPED_COEFF) != 0u {
        let first = c - c % 4u;
        let lane = c % 4u;
        coeff[first][lane] = k.x;
        coeff[first + 1u][lane] = k.y;
        coeff[first + 2u][lane] = k.z;
        coeff[first + 3u][lane] = k.w;
    } else {
        coeff[c] = k;
    }
}
