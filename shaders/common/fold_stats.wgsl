// The workgroup fold of the statistics kernels (stats_reduce*, forward_fused*), which the
// host puts before them (src/gpu/kernels.rs): one Welford state per lane in, one per channel
// unit out. The one-value-per-load kernels carry theirs in component x.

// Set in the grouped and channels-last reductions on CPU rasterizers (Tuning::lane_records;
// Geometry::new says where): each lane writes its own partial records, which the finalize
// kernels merge, and the workgroup does no fold. Lavapipe runs a workgroup with barriers as
// coroutines and pays per lane for every workgroup-memory access, which cost 16×2048×7×7's
// statistics a third of their time (PERF.md 42); a GPU folds for next to nothing and keeps
// its records few.
override LANE_RECORDS: bool = false;

var<workgroup> wg_count: array<u32, 256>;
var<workgroup> wg_mean: array<vec4<f32>, 256>;
var<workgroup> wg_m2: array<vec4<f32>, 256>;

// Chan's merge of slot b into slot a.
fn merge_into(a: u32, b: u32) {
    let nb = wg_count[b];
    if nb == 0u {
        return;
    }
    let na = wg_count[a];
    let n = na + nb;
    let fb = f32(nb) / f32(n);
    let delta = wg_mean[b] - wg_mean[a];
    wg_mean[a] = wg_mean[a] + delta * fb;
    wg_m2[a] = wg_m2[a] + wg_m2[b] + delta * (delta * (f32(na) * fb));
    wg_count[a] = n;
}

// Merges lane `lane`'s state with those of the other lanes of its channel unit: by subgroup
// shuffles where the host turned them on, then through workgroup memory, sixteen slots at a
// time (two barriers for 256 lanes instead of eight: a barrier is dear where the lanes run
// as CPU threads). The lanes of a unit sit tile_c slots apart (lane_of); the fold stops when
// `keep` of them are left (1, or tile_i where the slots along inner hold different values).
// Afterwards slot lid < tile_c holds unit lid of the workgroup, which this returns in lane
// lid. Call from uniform control flow.
fn fold_stats(lid: u32, lane: Lane, w: Welford, tile_c: u32, tile_i: u32, span: vec2<u32>, keep: u32) -> Welford {
    let merged = subgroup_welford(w, tile_c, tile_i, span);
    if lane.rep {
        wg_count[lane.slot] = u32(merged.n);
        wg_mean[lane.slot] = merged.mean;
        wg_m2[lane.slot] = merged.m2;
    }
    var lanes = fold_lanes(tile_c, span);
    while lanes > keep {
        let fold = min(lanes / keep, 16u);
        let next = lanes / fold;
        workgroupBarrier();
        if lid / tile_c < next {
            for (var j = 1u; j < fold; j++) {
                merge_into(lid, lid + j * next * tile_c);
            }
        }
        lanes = next;
    }
    // Where there was no fold to do, slot lid still holds another lane's state.
    workgroupBarrier();
    return Welford(f32(wg_count[lid]), wg_mean[lid], wg_m2[lid]);
}
