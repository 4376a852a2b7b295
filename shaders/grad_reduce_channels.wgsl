// Backward, stage 1, for channels-last tensors (and (N, C)) whose channel count divides by
// four: sum_dy and sum_dy_xmu of four channels per vec4, with stats_reduce_channels' layout
// of lanes and its pipeline constants. x − mean is formed as (x − center) − offset, as in
// grad_reduce.

override CONTIGUOUS_ROWS: bool = false;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy: array<vec4<f32>>;
// (center, offset, invstd, var), mean = center + offset
@group(0) @binding(3) var<storage, read> saved: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec2<f32>>;

// The four channels' center and offset of unit u.
struct Centers {
    center: vec4<f32>,
    offset: vec4<f32>,
}

fn centers(u: u32) -> Centers {
    var mu: Centers;
    for (var c = 0u; c < 4u; c++) {
        mu.center[c] = saved[p.channel_base + 4u * u + c].x;
        mu.offset[c] = saved[p.channel_base + 4u * u + c].y;
    }
    return mu;
}

// Unit `unit`'s partial records for this split (record `record` of each channel's): four
// channels.
fn write_partials(unit: u32, record: u32, s: vec4<f32>, sx: vec4<f32>) {
    for (var c = 0u; c < 4u; c++) {
        partials[partial_index(p, 4u * unit + c, record)] = pack_grad(GradPartial(s[c], sx[c]));
    }
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

    var sum_dy = vec4<f32>(0.0);
    var sum_dy_xmu = vec4<f32>(0.0);
    if u < units_c {
        let r = split_range(p, split, 1u);
        let rows = lane_rows(r, lane.o, p.tile_o, CONTIGUOUS_ROWS);
        let mu = centers(u);
        // Two rows per step, added as a pair: half the serial chain of the sums.
        let t = rows.step * units_c;
        var at = rows.o_begin * units_c + u;
        let end = rows.o_end * units_c;
        for (; at + t < end; at += 2u * t) {
            let g0 = dy[at];
            let g1 = dy[at + t];
            sum_dy += g0 + g1;
            sum_dy_xmu += g0 * ((x[at] - mu.center) - mu.offset) + g1 * ((x[at + t] - mu.center) - mu.offset);
        }
        if at < end {
            let g = dy[at];
            sum_dy += g;
            sum_dy_xmu += g * ((x[at] - mu.center) - mu.offset);
        }
    }

    if LANE_RECORDS {
        // Every lane of a unit writes (see stats_reduce).
        if u < units_c {
            write_partials(u, lane_record(split, lane.o, p.tile_o), sum_dy, sum_dy_xmu);
        }
    } else {
        let folded = fold_sums(lid, lane, GradSums(sum_dy, sum_dy_xmu), p.tile_c, 1u, span, 1u);

        // Lane lid < tile_c now holds unit wid.y·tile_c + lid.
        let unit = wid.y * p.tile_c + lid;
        if lid < p.tile_c && unit < units_c {
            write_partials(unit, split, folded.sum_dy, folded.sum_dy_xmu);
        }
    }
}
