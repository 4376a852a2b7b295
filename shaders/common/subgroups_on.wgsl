// Lanes of one channel merged through subgroup shuffles before the workgroup fold: fewer
// shared-memory rounds and barriers. The host uses this file only where it has checked that
// a subgroup is a run of consecutive local_invocation_index aligned to its power-of-two
// size (shaders/subgroup_probe.wgsl), so that the lanes differing from `lid` in one bit are
// the lanes of the same subgroup differing in that bit of subgroup_invocation_id. Of the lid
// bits (inner, then channels, then rows, see lane_of), those along inner and along rows
// belong to one channel; the butterfly exchanges over exactly those and leaves the merged
// state in every lane of the group. Call from uniform control flow: all lanes active.

var<workgroup> wg_subgroup_size: u32;

// The lanes along inner and along rows that a subgroup spans. Call from uniform control
// flow, once per workgroup: the fold's barriers loop on the span, so it must be uniform to
// WGSL's analysis, and subgroupAdd's sum, though the same in every lane of a 256-lane
// workgroup of whole subgroups, is not; workgroupUniformLoad's result is (at the price of a
// barrier).
fn subgroup_span(lid: u32, tile_c: u32, tile_i: u32) -> vec2<u32> {
    let lanes = subgroupAdd(1u);
    if lid == 0u {
        wg_subgroup_size = lanes;
    }
    let size = workgroupUniformLoad(&wg_subgroup_size);
    return vec2<u32>(min(tile_i, size), max(size / (tile_i * tile_c), 1u));
}

// The butterfly's bits: below span.x along inner, then span.y's worth from tile_i·tile_c on
// along rows (see subgroup_span; one of the two runs is empty unless tile_i fits).
fn subgroup_welford(w: Welford, tile_c: u32, tile_i: u32, span: vec2<u32>) -> Welford {
    var out = w;
    for (var bit = 1u; bit < span.x; bit *= 2u) {
        out = merge_welford(out, shuffle_welford(out, bit));
    }
    let rows = tile_i * tile_c;
    for (var bit = rows; bit < rows * span.y; bit *= 2u) {
        out = merge_welford(out, shuffle_welford(out, bit));
    }
    return out;
}

fn shuffle_welford(w: Welford, bit: u32) -> Welford {
    return Welford(subgroupShuffleXor(w.n, bit), subgroupShuffleXor(w.mean, bit), subgroupShuffleXor(w.m2, bit));
}

fn subgroup_sum(v: vec4<f32>, tile_c: u32, tile_i: u32, span: vec2<u32>) -> vec4<f32> {
    var out = v;
    for (var bit = 1u; bit < span.x; bit *= 2u) {
        out += subgroupShuffleXor(out, bit);
    }
    let rows = tile_i * tile_c;
    for (var bit = rows; bit < rows * span.y; bit *= 2u) {
        out += subgroupShuffleXor(out, bit);
    }
    return out;
}
