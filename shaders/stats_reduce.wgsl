// Batch statistics, stage 1: per (channel, split) count, shifted mean and M2.
//
// The tensor is viewed as [outer][channels][inner] (inner = 1 for channels-last), so one
// kernel serves both layouts. A workgroup covers `tile_c` channels and the outer rows of
// one split; lanes are laid out (tile_c, tile_i, tile_o) so that neighbouring lanes read
// neighbouring addresses in either layout.
//
// Values are shifted by one of the channel's values before accumulating (shift_samples in
// the prelude says which and why). Welford within a lane, Chan's merge across lanes; counts
// stay integers.

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec4<u32>>;

// Channel c's shift: the median of its three sampled values.
fn channel_shift(c: u32) -> f32 {
    let s = shift_samples(p, c);
    return median3(vec4<f32>(x[s.x]), vec4<f32>(x[s.y]), vec4<f32>(x[s.z])).x;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let split = wid.x;
    let span = subgroup_span(lid, p.tile_c, p.tile_i);
    let lane = lane_of(lid, p.tile_c, p.tile_i, span);
    let lane_i = lane.i;
    let lane_c = lane.c;
    let lane_o = lane.o;
    let c = wid.y * p.tile_c + lane_c;

    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    var shift = 0.0;
    if c < p.channels {
        shift = channel_shift(c);
        let row_stride = p.channels * p.inner;
        let r = split_range(p, split, p.inner);
        for (var o = r.o_begin + lane_o; o < r.o_end; o += p.tile_o) {
            let base = o * row_stride + c * p.inner;
            for (var i = r.i_begin + lane_i; i < r.i_end; i += p.tile_i) {
                let d = x[base + i] - shift;
                n += 1.0;
                let delta = d - mean;
                mean += delta / n;
                m2 += delta * (d - mean);
            }
        }
    }
    let w = Welford(n, vec4<f32>(mean, 0.0, 0.0, 0.0), vec4<f32>(m2, 0.0, 0.0, 0.0));
    let folded = fold_stats(lid, lane, w, p.tile_c, p.tile_i, span, 1u);

    // Lane lid < tile_c now holds channel `writer`.
    let writer = wid.y * p.tile_c + lid;
    if lid < p.tile_c && writer < p.channels {
        partials[partial_index(p, writer, split)] = pack_stats(StatsPartial(u32(folded.n), folded.mean.x, folded.m2.x, channel_shift(writer)));
    }
}
