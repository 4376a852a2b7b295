// Batch statistics, stage 1, four values per load for channels-first shapes whose plane does
// not divide by four (7x7, 3x3, ...) but whose channel count does: four channels together
// hold 4·inner values, which is inner whole vec4. A lane keeps to one vec4 position j of such
// a group (tile_i >= inner), so each of its components always belongs to the same channel,
// (4j + k) / inner, and carries that channel's Welford state. Lanes are folded over rows only;
// then four lanes per group merge, each for one channel, the components that belong to it.
// On CPU rasterizers (LANE_RECORDS, common/fold_stats.wgsl) there is no fold and no merge:
// each lane writes a record for each channel its position holds, and stats_finalize merges
// a channel's positions with its splits.
// Values are shifted by one of their channel's values, as in stats_reduce.

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec4<u32>>;

// One value of x, by its index as a float.
fn value(index: u32) -> f32 {
    return x[index / 4u][index % 4u];
}

// The record of the components `mine` of a lane's state, all of one channel and all shifted
// by that channel's shift: equal-count states, merged in closed form.
fn group_record(w: Welford, mine: vec4<bool>, shift: f32) -> StatsPartial {
    let ones = vec4<f32>(1.0);
    let k = dot(select(vec4<f32>(0.0), ones, mine), ones);
    let m = dot(select(vec4<f32>(0.0), w.mean, mine), ones) / k;
    let dev = w.mean - vec4<f32>(m);
    let m2 = dot(select(vec4<f32>(0.0), w.m2 + w.n * dev * dev, mine), ones);
    return StatsPartial(u32(w.n * k), m, m2, shift);
}

// Channel c's shift: the median of its three sampled values.
fn channel_shift(c: u32) -> f32 {
    let s = shift_samples(p, c);
    return median3(vec4<f32>(value(s.x)), vec4<f32>(value(s.y)), vec4<f32>(value(s.z))).x;
}

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

    var w = Welford(0.0, vec4<f32>(0.0), vec4<f32>(0.0));
    let reads = g < groups && lane_i < units_i;
    // The lane's components lie in channels a and b of the group (the same, or neighbours).
    let split_at = group_channel_split(lane_i, p.inner);
    let in_b = second_channel(lane_i, split_at, p.inner);
    var shift_a = 0.0;
    var shift_b = 0.0;
    if reads {
        shift_a = channel_shift(4u * g + split_at.x);
        shift_b = channel_shift(4u * g + split_at.y);
        let shift = select(vec4<f32>(shift_a), vec4<f32>(shift_b), in_b);
        let row_stride = groups * units_i;
        // Rows are at most 256 units long here: splits never cut them (inner_splits = 1).
        let r = split_range(p, split, units_i);
        let o_begin = r.o_begin;
        let o_end = r.o_end;
        // Two rows per step, merged as a pair (add_pair in the prelude).
        let t = p.tile_o * row_stride;
        var at = (o_begin + lane_o) * row_stride + g * units_i + lane_i;
        let end = o_end * row_stride;
        for (; at + t < end; at += 2u * t) {
            w = add_pair(w, x[at] - shift, x[at + t] - shift);
        }
        if at < end {
            w = add_one(w, x[at] - shift);
        }
    }
    if LANE_RECORDS {
        if reads {
            for (var k = 0u; k < grouped_channels(split_at); k++) {
                let s = grouped_slot(lane_i, split_at, in_b, k, p.inner);
                let channel = 4u * g + s.c;
                let shift = select(shift_a, shift_b, k == 1u);
                let record = grouped_record(p, split, lane_o, s.slot);
                partials[partial_index(p, channel, record)] = pack_stats(group_record(w, s.mine, shift));
                for (var slot = s.empty_from; slot < grouped_positions(p.inner); slot++) {
                    let empty = grouped_record(p, split, lane_o, slot);
                    partials[partial_index(p, channel, empty)] = pack_stats(StatsPartial(0u, 0.0, 0.0, shift));
                }
            }
        }
        return;
    }

    // Fold over rows only, keeping the tile_i slots of a group apart: slots r and r + j·next
    // hold the same vec4 position while next is a multiple of tile_i.
    fold_stats(lid, lane, w, p.tile_c, p.tile_i, no_span, p.tile_i);

    // Lane 4·group + c merges channel c of its group: the values e0 .. e1 = c·inner ..
    // (c + 1)·inner of the group, components of positions j0 ..= j1. Every position has seen
    // the same rows, so they are equal-count states, merged in closed form a vec4 at a time:
    // the mean of the means, then M2 plus the means' spread about it.
    let local = lid / 4u;
    let c = lid % 4u;
    let writer = wid.y * p.tile_c + local;
    if local < p.tile_c && writer < groups {
        let e0 = c * p.inner;
        let e1 = e0 + p.inner;
        let j0 = e0 / 4u;
        let j1 = (e1 - 1u) / 4u;
        let n = wg_count[local + p.tile_c * j0];
        // The means sum as deviations from the first, which keeps them small: summed as
        // they are (all near the shift's offset) they lose ~1e-6 of it.
        let first_mean = wg_mean[local + p.tile_c * j0][e0 % 4u];
        var sum_devs = 0.0;
        for (var j = j0; j <= j1; j++) {
            sum_devs += channel_part(wg_mean[local + p.tile_c * j] - vec4<f32>(first_mean), j, e0, e1);
        }
        let m = first_mean + sum_devs / f32(p.inner);
        var s2 = 0.0;
        for (var j = j0; j <= j1; j++) {
            let at = local + p.tile_c * j;
            let dev = wg_mean[at] - vec4<f32>(m);
            s2 += channel_part(wg_m2[at] + f32(n) * dev * dev, j, e0, e1);
        }
        let channel = 4u * writer + c;
        partials[partial_index(p, channel, split)] = pack_stats(StatsPartial(n * p.inner, m, s2, channel_shift(channel)));
    }
}
