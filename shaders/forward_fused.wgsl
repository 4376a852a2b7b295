// Forward with batch statistics in one read of x, one value per load: the scalar twin of
// forward_fused_vec4 for shapes whose contiguous axis does not divide by four (7x7 planes,
// say). See forward_fused_vec4 for how it works.

const WG: u32 = 256u;
// Values a lane keeps; the host picks this path only when a lane needs no more.
const CAPACITY: u32 = 64u;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

// After the fold (common/fold_stats.wgsl), slot lid < tile_c of wg_mean and wg_m2 holds its
// channel's center and scale (component x), and wg_shift its shift.
var<workgroup> wg_shift: array<f32, WG>;

// Channel c's shift: the median of its three sampled values (shift_samples in the prelude).
fn channel_shift(c: u32) -> f32 {
    let s = shift_samples(p, c);
    return median3(vec4<f32>(x[s.x]), vec4<f32>(x[s.y]), vec4<f32>(x[s.z])).x;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let span = subgroup_span(lid, p.tile_c, p.tile_i);
    let lane = lane_of(lid, p.tile_c, p.tile_i, span);
    let lane_i = lane.i;
    let lane_c = lane.c;
    let lane_o = lane.o;
    let c = wid.x * p.tile_c + lane_c;
    let row_stride = p.channels * p.inner;

    // The loop bound is a constant so that compilers unroll it and keep `values` in
    // registers; the host guarantees that a lane's loads (rows x runs) fit in CAPACITY.
    let runs = (p.inner + p.tile_i - 1u) / p.tile_i;
    let loads = runs * ((p.outer + p.tile_o - 1u) / p.tile_o);
    var values: array<f32, CAPACITY>;
    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    var shift = 0.0;
    if c < p.channels {
        shift = channel_shift(c);
    }
    for (var j = 0u; j < CAPACITY; j++) {
        if j >= loads {
            break;
        }
        let o = lane_o + p.tile_o * (j / runs);
        let i = lane_i + p.tile_i * (j % runs);
        if c < p.channels && o < p.outer && i < p.inner {
            let v = x[o * row_stride + c * p.inner + i];
            values[j] = v;
            let d = v - shift;
            n += 1.0;
            let delta = d - mean;
            mean += delta / n;
            m2 += delta * (d - mean);
        }
    }
    let w = Welford(n, vec4<f32>(mean, 0.0, 0.0, 0.0), vec4<f32>(m2, 0.0, 0.0, 0.0));
    let folded = fold_stats(lid, lane, w, p.tile_c, p.tile_i, span, 1u);

    let writer = wid.x * p.tile_c + lid;
    if lid < p.tile_c && writer < p.channels {
        let center = channel_shift(writer);
        let count = u32(folded.n);
        // As stats_finalize: var, invstd, and the (center, scale, shift) fold.
        let var_biased = folded.m2.x / f32(count);
        let invstd = 1.0 / sqrt(var_biased + p.eps);
        let scale = gamma[writer] * invstd;
        // The whole channel is in the first split's record; the others are empty.
        partials[partial_index(p, writer, 0u)] = pack_stats(StatsPartial(count, folded.mean.x, folded.m2.x, center));
        for (var s = 1u; s < p.splits; s++) {
            partials[partial_index(p, writer, s)] = pack_stats(StatsPartial(0u, 0.0, 0.0, 0.0));
        }
        wg_shift[lid] = beta[writer] - folded.mean.x * scale;
        wg_mean[lid].x = center;
        wg_m2[lid].x = scale;
    }
    workgroupBarrier();

    let center = wg_mean[lane_c].x;
    let scale = wg_m2[lane_c].x;
    let shift_out = wg_shift[lane_c];
    for (var j = 0u; j < CAPACITY; j++) {
        if j >= loads {
            break;
        }
        let o = lane_o + p.tile_o * (j / runs);
        let i = lane_i + p.tile_i * (j % runs);
        if c < p.channels && o < p.outer && i < p.inner {
            y[o * row_stride + c * p.inner + i] = (values[j] - center) * scale + shift_out;
        }
    }
}
