// Batch statistics, stage 1, for channels-last tensors (and (N, C)) whose channel count
// divides by four: a vec4 holds four channels of one row, and each component of a lane's
// Welford state is one channel's. As in stats_reduce, values are shifted by one of their
// channel's values before accumulating.
//
// Lanes are laid out (tile_c, tile_o) over channel units (vec4) and rows. On GPUs the lanes
// along rows take every tile_o-th row of the split, so that each load of a subgroup is one
// contiguous run. On CPU rasterizers (CONTIGUOUS_ROWS, Tuning::contiguous_rows) each takes
// one contiguous range of the split's rows instead: lavapipe runs a SIMD group's loads lane
// by lane, and one group up to its next barrier before the next, so this turns its reads
// into sequential streams rather than short pieces of rows far apart (PERF.md 26). The mode
// is a pipeline constant rather than a uniform: lavapipe runs both sides of a branch.
// Where a workgroup has one lane per unit (tile_o = 1), CPU rasterizers take the twin whose
// lanes write their records themselves (LANE_RECORDS, common/fold_stats.wgsl): the same
// records, no fold.

override CONTIGUOUS_ROWS: bool = false;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec4<u32>>;

// Unit `unit`'s partial records for this split (record `record` of each channel's): four
// channels, one count, shifted by `shifts`.
fn write_partials(unit: u32, record: u32, w: Welford, shifts: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        partials[partial_index(p, 4u * unit + c, record)] = pack_stats(StatsPartial(u32(w.n), w.mean[c], w.m2[c], shifts[c]));
    }
}

// The shifts of unit u's four channels: their samples lie in the same rows (inner is 1).
fn unit_shift(u: u32) -> vec4<f32> {
    let s = shift_samples(p, 4u * u) / 4u;
    return median3(x[s.x], x[s.y], x[s.z]);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let units_c = p.channels / 4u;
    let split = wid.x;
    // The span matters only to the fold, which lane records skip, and its reading costs a
    // barrier (subgroups_on.wgsl), the thing lane records are there to save.
    var span = vec2<u32>(1u, 1u);
    if !LANE_RECORDS {
        span = subgroup_span(lid, p.tile_c, 1u);
    }
    let lane = lane_of(lid, p.tile_c, 1u, span);
    let u = wid.y * p.tile_c + lane.c;

    var w = Welford(0.0, vec4<f32>(0.0), vec4<f32>(0.0));
    var shift = vec4<f32>(0.0);
    if u < units_c {
        let r = split_range(p, split, 1u);
        let rows = lane_rows(r, lane.o, p.tile_o, CONTIGUOUS_ROWS);
        shift = unit_shift(u);
        // Two rows per step, merged as a pair (add_pair in the prelude).
        let t = rows.step * units_c;
        var at = rows.o_begin * units_c + u;
        let end = rows.o_end * units_c;
        for (; at + t < end; at += 2u * t) {
            w = add_pair(w, x[at] - shift, x[at + t] - shift);
        }
        if at < end {
            w = add_one(w, x[at] - shift);
        }
    }

    if LANE_RECORDS {
        // Every lane of a unit writes (see stats_reduce).
        if u < units_c {
            write_partials(u, lane_record(split, lane.o, p.tile_o), w, shift);
        }
    } else {
        let folded = fold_stats(lid, lane, w, p.tile_c, 1u, span, 1u);

        // Lane lid < tile_c now holds unit wid.y·tile_c + lid.
        let unit = wid.y * p.tile_c + lid;
        if lid < p.tile_c && unit < units_c {
            write_partials(unit, split, folded, unit_shift(unit));
        }
    }
}
