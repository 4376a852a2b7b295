// Batch statistics, stage 2: merge each channel's split partials, then everything per
// channel that the element-wise kernels should not repeat: invstd, the running-statistics
// update, and the folded (center, scale, shift) used by apply_forward.
//
// p.merge_lanes lanes (a power of two) share a channel: each merges every merge_lanes-th
// split, neighbouring lanes reading neighbouring records, and then the lanes fold in
// workgroup memory. One lane per channel walking all of its splits in turn made a pass
// on an H100 several times slower wherever splits ran into the hundreds (channels-last
// 32×64×56×56 forward 0.58 ms, against 0.12–0.14 ms with the lanes; PERF.md 41).
//
// The mean is kept as the unevaluated sum center + offset: center is the channel's shift (the
// median of three of its values, so near the mean), offset the shifted mean. apply_forward computes
// (x - center) * scale + (beta - offset * scale): x - center is exact when x is near the
// mean, so y keeps full precision even when the mean is large next to the spread, where
// x * scale + (beta - mean * scale) would cancel. (A normalized hi/lo pair by TwoSum would
// need error-free arithmetic that shader compilers may legally simplify away.)

// flags
const UPDATE_RUNNING: u32 = 1u;
const BIASED_RUNNING_VAR: u32 = 2u;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> running_var: array<f32>;
// num_batches_tracked, one copy per channel so that every invocation owns what it writes.
@group(0) @binding(6) var<storage, read_write> batches_tracked: array<u32>;
// (center, offset, invstd, biased var) with mean = center + offset, read by backward.
@group(0) @binding(7) var<storage, read_write> saved: array<vec4<f32>>;
// (center, scale, shift, 0) for apply_forward.
@group(0) @binding(8) var<storage, read_write> coeff: array<f32>;

var<workgroup> wg_count: array<u32, 256>;
var<workgroup> wg_mean: array<f32, 256>;
var<workgroup> wg_m2: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lanes = p.merge_lanes;
    let c = wid.x * (256u / lanes) + lid / lanes;
    let lane = lid % lanes;
    // Every lane's mean is of its values shifted by the shift of the channel's first record.
    var shift = 0.0;
    var n = 0u;
    var mean = 0.0;
    var m2 = 0.0;
    if c < p.channels {
        shift = unpack_stats(partials[partial_record(p, c, 0u)]).shift;
        for (var k = lane; k < p.splits; k += lanes) {
            let b = unpack_stats(partials[partial_record(p, c, k)]);
            if b.count == 0u {
                continue;
            }
            if n == 0u {
                // Taken whole: the merge below would form 0·delta², NaN for |delta| > 1.8e19.
                mean = (b.shift - shift) + b.mean;
                m2 = b.m2;
                n = b.count;
                continue;
            }
            let total = n + b.count;
            let fb = f32(b.count) / f32(total);
            // Chunks of a large tensor shift by their own sampled value (shift_samples in the
            // prelude); both shifts are values of this channel, so their difference is exact
            // where it matters.
            let delta = (b.shift - shift) + (b.mean - mean);
            mean += delta * fb;
            m2 += b.m2 + delta * (delta * (f32(n) * fb));
            n = total;
        }
    }
    wg_count[lid] = n;
    wg_mean[lid] = mean;
    wg_m2[lid] = m2;
    for (var half = lanes / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        let other = lid + half;
        if lane < half && wg_count[lid] == 0u {
            wg_count[lid] = wg_count[other];
            wg_mean[lid] = wg_mean[other];
            wg_m2[lid] = wg_m2[other];
        } else if lane < half && wg_count[other] != 0u {
            let na = wg_count[lid];
            let total = na + wg_count[other];
            let fb = f32(wg_count[other]) / f32(total);
            let delta = wg_mean[other] - wg_mean[lid];
            wg_mean[lid] += delta * fb;
            wg_m2[lid] += wg_m2[other] + delta * (delta * (f32(na) * fb));
            wg_count[lid] = total;
        }
    }
    if lane != 0u || c >= p.channels {
        return;
    }
    n = wg_count[lid];
    mean = wg_mean[lid];
    m2 = wg_m2[lid];

    // No clamp at zero: every Welford and Chan step adds a non-negative amount to M2, even
    // rounded (the new mean lies between the old one and the value), so M2 >= 0 unless it
    // is NaN, and a NaN must reach the variance as it does in PyTorch (a clamp by max() or
    // select() lets compilers turn NaN into 0).
    let var_biased = m2 / f32(n);
    let invstd = 1.0 / sqrt(var_biased + p.eps);

    if (p.flags & UPDATE_RUNNING) != 0u {
        let batches = batches_tracked[c] + 1u;
        batches_tracked[c] = batches;
        // momentum < 0 encodes PyTorch's momentum=None: a cumulative moving average.
        var factor = p.momentum;
        if p.momentum < 0.0 {
            factor = 1.0 / f32(batches);
        }
        var var_running = m2 / f32(n - 1u);
        if (p.flags & BIASED_RUNNING_VAR) != 0u {
            var_running = var_biased;
        }
        running_mean[c] = (1.0 - factor) * running_mean[c] + factor * (shift + mean);
        running_var[c] = (1.0 - factor) * running_var[c] + factor * var_running;
    }

    saved[c] = vec4<f32>(shift, mean, invstd, var_biased);
    let scale = gamma[c] * invstd;
    store_coeff(c, vec4<f32>(shift, scale, beta[c] - mean * scale, 0.0));
}
