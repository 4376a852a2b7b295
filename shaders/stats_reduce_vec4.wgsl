// Batch statistics, stage 1, four values per load: the vec4 twin of stats_reduce for
// channels-first shapes whose plane divides by four (channels-last: stats_reduce_channels).
// Fewer, wider loads are what both GPUs and CPU rasterizers (lavapipe runs each lane's load
// as its own scalar access) move fastest.
//
// A vec4 holds four neighbouring values of one channel; each component keeps its own Welford
// state over its quarter of the values, and the four are merged at the end. The four states
// share one count, so a vec4 costs one reciprocal. As in stats_reduce, values are shifted by
// one of their channel's values before accumulating.

// Units one lane reads back to back, 1 or even. GPUs take 1, so that neighbouring lanes
// read neighbouring units; CPU rasterizers take more on long planes (Tuning::run, a second
// pipeline: a branch on a uniform would cost lavapipe both sides), as they run each lane's
// loads one after another and pay less for a run at constant offsets.
override RUN: u32 = 1u;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec4<u32>>;

// Channel c's shift: the median of its three sampled values.
fn channel_shift(c: u32) -> f32 {
    let s = shift_samples(p, c);
    return median3(vec4<f32>(x[s.x / 4u][s.x % 4u]), vec4<f32>(x[s.y / 4u][s.y % 4u]), vec4<f32>(x[s.z / 4u][s.z % 4u])).x;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    // Units: what one lane loads at a time, along channels and along inner.
    let units_c = p.channels;
    let units_i = p.inner / 4u;
    let split = wid.x;
    let span = subgroup_span(lid, p.tile_c, p.tile_i);
    let lane = lane_of(lid, p.tile_c, p.tile_i, span);
    let lane_i = lane.i;
    let lane_c = lane.c;
    let lane_o = lane.o;
    let u = wid.y * p.tile_c + lane_c;

    var w = Welford(0.0, vec4<f32>(0.0), vec4<f32>(0.0));
    if u < units_c {
        let shift = vec4<f32>(channel_shift(u));
        let row_stride = units_c * units_i;
        let r = split_range(p, split, units_i);
        // Two loads per step, merged as a pair: half the serial chain of one-at-a-time
        // Welford, which a CPU rasterizer runs lane group by lane group without overlap.
        if RUN == 1u {
            for (var o = r.o_begin + lane_o; o < r.o_end; o += p.tile_o) {
                let base = o * row_stride + u * units_i;
                var i = r.i_begin + lane_i;
                for (; i + p.tile_i < r.i_end; i += 2u * p.tile_i) {
                    w = add_pair(w, x[base + i] - shift, x[base + i + p.tile_i] - shift);
                }
                if i < r.i_end {
                    w = add_one(w, x[base + i] - shift);
                }
            }
        } else {
            let runs = lane_run_count(p, r, lane_i, lane_o, RUN);
            var c = first_run(r, lane_i, lane_o, RUN, row_stride, u * units_i);
            for (var n = 0u; n < runs; n++) {
                for (var k = 0u; k < RUN; k += 2u) {
                    w = add_pair(w, x[c.at + k] - shift, x[c.at + k + 1u] - shift);
                }
                c = next_run(p, r, c, lane_i, RUN, row_stride);
            }
        }
    }
    let folded = fold_stats(lid, lane, w, p.tile_c, p.tile_i, span, 1u);

    // Lane lid < tile_c now holds unit `writer`.
    let writer = wid.y * p.tile_c + lid;
    if lid < p.tile_c && writer < units_c {
        let count = u32(folded.n);
        let means = folded.mean;
        let m2s = folded.m2;
        // Four equal-count states of one channel: Chan's merge in closed form.
        let m = (means.x + means.y + means.z + means.w) * 0.25;
        let dev = means - vec4<f32>(m);
        let m2_all = m2s.x + m2s.y + m2s.z + m2s.w + f32(count) * dot(dev, dev);
        partials[partial_index(p, writer, split)] = pack_stats(StatsPartial(4u * count, m, m2_all, channel_shift(writer)));
    }
}
