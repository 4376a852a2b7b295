// Backward, stage 1: per (channel, split) sum_dy = Σ dy and sum_dy_xmu = Σ dy·(x − mean),
// with the mean saved by the forward (or the running mean in eval). Same tiling as
// stats_reduce. x − mean is formed as (x − center) − offset (see stats_finalize) so that it
// keeps its precision when the mean is large next to the spread.

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
// (center, offset, invstd, var), mean = center + offset
@group(0) @binding(3) var<storage, read> saved: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec2<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let split = wid.x;
    let span = subgroup_span(lid, p.tile_c, p.tile_i);
    let lane = lane_of(lid, p.tile_c, p.tile_i, span);
    let lane_i = lane.i;
    let lane_c = lane.c;
    let lane_o = lane.o;
    let c = wid.y * p.tile_c + lane_c;

    var sum_dy = 0.0;
    var sum_dy_xmu = 0.0;
    if c < p.channels {
        let center = saved[p.channel_base + c].x;
        let offset = saved[p.channel_base + c].y;
        let row_stride = p.channels * p.inner;
        let r = split_range(p, split, p.inner);
        for (var o = r.o_begin + lane_o; o < r.o_end; o += p.tile_o) {
            let base = o * row_stride + c * p.inner;
            for (var i = r.i_begin + lane_i; i < r.i_end; i += p.tile_i) {
                let g = dy[base + i];
                sum_dy += g;
                sum_dy_xmu += g * ((x[base + i] - center) - offset);
            }
        }
    }
    let sums = GradSums(vec4<f32>(sum_dy, 0.0, 0.0, 0.0), vec4<f32>(sum_dy_xmu, 0.0, 0.0, 0.0));
    let folded = fold_sums(lid, lane, sums, p.tile_c, p.tile_i, span, 1u);

    // Lane lid < tile_c now holds channel `writer`.
    let writer = wid.y * p.tile_c + lid;
    if lid < p.tile_c && writer < p.channels {
        partials[partial_index(p, writer, split)] = pack_grad(GradPartial(folded.sum_dy.x, folded.sum_dy_xmu.x));
    }
}
