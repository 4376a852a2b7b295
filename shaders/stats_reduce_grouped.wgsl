// Batch statistics, stage 1, four values per load for channels-first shapes whose plane does
// not divide by four (7x7, 3x3, ...) but whose channel count does: four channels together
// hold 4·inner values, which is inner whole vec4. A lane keeps to one vec4 position j of such
// a group (tile_i >= inner), so each of its components always belongs to the same channel,
// (4j + k) / inner, and carries that channel's Welford state. Lanes are folded over rows only;
// then four lanes per group merge, each for one channel, the components that belong to it.
// Values are shifted by their channel's first value, as in stats_reduce.

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> partials: array<StatsPartial>;

// One value of x, by its index as a float.
fn value(index: u32) -> f32 {
    return x[index / 4u][index % 4u];
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
    if g < groups && lane_i < units_i {
        var shift: vec4<f32>;
        for (var k = 0u; k < 4u; k++) {
            let channel = 4u * g + (4u * lane_i + k) / p.inner;
            shift[k] = value(channel * p.inner);
        }
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
        partials[partial_index(p, channel, split)] = StatsPartial(n * p.inner, m, s2, value(channel * p.inner));
    }
}
