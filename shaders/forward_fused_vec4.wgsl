// Forward with batch statistics in one read of x, for channels small enough that a workgroup
// holds all their values in its lanes' registers (up to CAPACITY vec4 per lane): the
// statistics are reduced as in stats_reduce_vec4, folded across the workgroup, turned into
// (center, scale, shift) as stats_finalize would, and applied to the values still in
// registers. Eight bytes per element instead of twelve.
//
// The workgroup also writes its channels' partial (one split), so that stats_finalize, run
// after it, updates the running statistics and saves mean and invstd for backward with the
// very same arithmetic that produced y here. `splits` is the plan's (the backward's), so the
// records of splits after the first are written empty.
//
// CHANNELS_IN_VEC4: four channels of one row per vec4 (as in stats_reduce_channels), or
// else four values of one channel (as in stats_reduce_vec4). tile_c/tile_i/tile_o are
// this kernel's own tiling (rows_per_split is all of outer).

override CHANNELS_IN_VEC4: bool = false;

const WG: u32 = 256u;
// vec4 loads a lane keeps; the host picks this path only when a lane needs no more.
const CAPACITY: u32 = 16u;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read_write> y: array<vec4<f32>>;

// After the fold (common/fold_stats.wgsl), slot lid < tile_c of wg_mean and wg_m2 holds its
// unit's center and scale, and wg_shift its shift.
var<workgroup> wg_shift: array<vec4<f32>, WG>;

// The shifts of unit u's values (shift_samples in the prelude): four channels' whose samples
// lie in the same rows (inner is 1), or one channel's, in every component.
fn unit_shift(u: u32) -> vec4<f32> {
    if CHANNELS_IN_VEC4 {
        let s = shift_samples(p, 4u * u) / 4u;
        return median3(x[s.x], x[s.y], x[s.z]);
    }
    let s = shift_samples(p, u);
    return vec4<f32>(median3(vec4<f32>(x[s.x / 4u][s.x % 4u]), vec4<f32>(x[s.y / 4u][s.y % 4u]), vec4<f32>(x[s.z / 4u][s.z % 4u])).x);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    var units_c = p.channels;
    var units_i = p.inner / 4u;
    if CHANNELS_IN_VEC4 {
        units_c = p.channels / 4u;
        units_i = 1u;
    }
    let span = subgroup_span(lid, p.tile_c, p.tile_i);
    let lane = lane_of(lid, p.tile_c, p.tile_i, span);
    let lane_i = lane.i;
    let lane_c = lane.c;
    let lane_o = lane.o;
    let u = wid.x * p.tile_c + lane_c;
    let row_stride = units_c * units_i;

    // The loop bound is a constant so that compilers unroll it and keep `values` in
    // registers; the host guarantees that a lane's loads (rows x runs) fit in CAPACITY.
    let runs = (units_i + p.tile_i - 1u) / p.tile_i;
    let loads = runs * ((p.outer + p.tile_o - 1u) / p.tile_o);
    var values: array<vec4<f32>, CAPACITY>;
    var w = Welford(0.0, vec4<f32>(0.0), vec4<f32>(0.0));
    var shift = vec4<f32>(0.0);
    if u < units_c {
        shift = unit_shift(u);
    }
    for (var j = 0u; j < CAPACITY; j++) {
        if j >= loads {
            break;
        }
        let o = lane_o + p.tile_o * (j / runs);
        let i = lane_i + p.tile_i * (j % runs);
        if u < units_c && o < p.outer && i < units_i {
            let v = x[o * row_stride + u * units_i + i];
            values[j] = v;
            w = add_one(w, v - shift);
        }
    }
    let folded = fold_stats(lid, lane, w, p.tile_c, p.tile_i, span, 1u);

    let writer = wid.x * p.tile_c + lid;
    if lid < p.tile_c && writer < units_c {
        let centers = unit_shift(writer);
        var count = u32(folded.n);
        var means = folded.mean;
        var m2s = folded.m2;
        if !CHANNELS_IN_VEC4 {
            // Four equal-count states of one channel: Chan's merge in closed form.
            let m = (means.x + means.y + means.z + means.w) * 0.25;
            let dev = means - vec4<f32>(m);
            m2s = vec4<f32>(m2s.x + m2s.y + m2s.z + m2s.w + f32(count) * dot(dev, dev));
            means = vec4<f32>(m);
            count = 4u * count;
        }
        var scales: vec4<f32>;
        var shifts: vec4<f32>;
        let lanes_out = select(1u, 4u, CHANNELS_IN_VEC4);
        for (var k = 0u; k < 4u; k++) {
            let c = select(writer, 4u * writer + k, CHANNELS_IN_VEC4);
            // As stats_finalize: var, invstd, and the (center, scale, shift) fold.
            let var_biased = m2s[k] / f32(count);
            let invstd = 1.0 / sqrt(var_biased + p.eps);
            scales[k] = gamma[c] * invstd;
            shifts[k] = beta[c] - means[k] * scales[k];
            if k < lanes_out {
                // The whole channel is in the first split's record; the others are empty.
                partials[partial_index(p, c, 0u)] = pack_stats(StatsPartial(count, means[k], m2s[k], centers[k]));
                for (var s = 1u; s < p.splits; s++) {
                    partials[partial_index(p, c, s)] = pack_stats(StatsPartial(0u, 0.0, 0.0, 0.0));
                }
            }
        }
        wg_mean[lid] = centers;
        wg_m2[lid] = scales;
        wg_shift[lid] = shifts;
    }
    workgroupBarrier();

    let center = wg_mean[lane_c];
    let scale = wg_m2[lane_c];
    let shift_out = wg_shift[lane_c];
    for (var j = 0u; j < CAPACITY; j++) {
        if j >= loads {
            break;
        }
        let o = lane_o + p.tile_o * (j / runs);
        let i = lane_i + p.tile_i * (j % runs);
        if u < units_c && o < p.outer && i < units_i {
            y[o * row_stride + u * units_i + i] = (values[j] - center) * scale + shift_out;
        }
    }
}
