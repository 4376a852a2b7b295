// Backward, stage 1, for the shapes of stats_reduce_grouped (channels-first, inner % 4 != 0,
// channels % 4 == 0), laid out the same way: a lane keeps to one vec4 position of a group of
// four channels, so each component's channel is fixed; lanes are summed over rows only, then
// four lanes per group add up, each for one channel, the components that belong to it. On CPU
// rasterizers (LANE_RECORDS) each lane writes its own records instead, laid out as
// stats_reduce_grouped's.

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy: array<vec4<f32>>;
// (center, offset, invstd, var), mean = center + offset
@group(0) @binding(3) var<storage, read> saved: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec2<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let groups = p.channels / 4u;
    let units_i = p.inner;
    let split = wid.x;
    // Lanes of one position are tile_i·tile_c apart: no subgroup merge here.
    let no_span = vec2<u32>(1u, 1u);
    let lane = lane_of(lid, p.tile_c, p.tile_i, no_span);
    let lane_i = lane.i;
    let lane_c = lane.c;
    let lane_o = lane.o;
    let g = wid.y * p.tile_c + lane_c;

    var sum_dy = vec4<f32>(0.0);
    var sum_dy_xmu = vec4<f32>(0.0);
    let reads = g < groups && lane_i < units_i;
    // The lane's components lie in channels a and b of the group (the same, or neighbours).
    let split_at = group_channel_split(lane_i, p.inner);
    let in_b = second_channel(lane_i, split_at, p.inner);
    if reads {
        let stats_a = saved[p.channel_base + 4u * g + split_at.x];
        let stats_b = saved[p.channel_base + 4u * g + split_at.y];
        let center = select(vec4<f32>(stats_a.x), vec4<f32>(stats_b.x), in_b);
        let offset = select(vec4<f32>(stats_a.y), vec4<f32>(stats_b.y), in_b);
        let row_stride = groups * units_i;
        // Rows are at most 256 units long here: splits never cut them (inner_splits = 1).
        let r = split_range(p, split, units_i);
        let o_begin = r.o_begin;
        let o_end = r.o_end;
        // Two rows per step, added as a pair: half the serial chain of the sums.
        let t = p.tile_o * row_stride;
        var at = (o_begin + lane_o) * row_stride + g * units_i + lane_i;
        let end = o_end * row_stride;
        for (; at + t < end; at += 2u * t) {
            let g0 = dy[at];
            let g1 = dy[at + t];
            sum_dy += g0 + g1;
            sum_dy_xmu += g0 * ((x[at] - center) - offset) + g1 * ((x[at + t] - center) - offset);
        }
        if at < end {
            let gy = dy[at];
            sum_dy += gy;
            sum_dy_xmu += gy * ((x[at] - center) - offset);
        }
    }
    if LANE_RECORDS {
        // Each lane writes its own records, laid out as stats_reduce_grouped's.
        if reads {
            let ones = vec4<f32>(1.0);
            let zero = vec4<f32>(0.0);
            for (var k = 0u; k < grouped_channels(split_at); k++) {
                let s = grouped_slot(lane_i, split_at, in_b, k, p.inner);
                let channel = 4u * g + s.c;
                let sums = GradPartial(dot(select(zero, sum_dy, s.mine), ones), dot(select(zero, sum_dy_xmu, s.mine), ones));
                let record = grouped_record(p, split, lane_o, s.slot);
                partials[partial_index(p, channel, record)] = pack_grad(sums);
                for (var slot = s.empty_from; slot < grouped_positions(p.inner); slot++) {
                    let empty = grouped_record(p, split, lane_o, slot);
                    partials[partial_index(p, channel, empty)] = pack_grad(GradPartial(0.0, 0.0));
                }
            }
        }
        return;
    }

    // Sum over rows only, as stats_reduce_grouped folds.
    fold_sums(lid, lane, GradSums(sum_dy, sum_dy_xmu), p.tile_c, p.tile_i, no_span, p.tile_i);

    let local = lid / 4u;
    let c = lid % 4u;
    let writer = wid.y * p.tile_c + local;
    if local < p.tile_c && writer < groups {
        // Channel c is the values e0 .. e1 of the group, components of positions j0 ..= j1.
        let e0 = c * p.inner;
        let e1 = e0 + p.inner;
        var s = 0.0;
        var sx = 0.0;
        for (var j = e0 / 4u; j <= (e1 - 1u) / 4u; j++) {
            let at = local + p.tile_c * j;
            s += channel_part(wg_sum_dy[at], j, e0, e1);
            sx += channel_part(wg_sum_dy_xmu[at], j, e0, e1);
        }
        partials[partial_index(p, 4u * writer + c, split)] = pack_grad(GradPartial(s, sx));
    }
}
