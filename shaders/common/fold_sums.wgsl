// The workgroup fold of the gradient reductions (grad_reduce*), which the host puts before
// them (src/gpu/kernels.rs): fold_stats' layout and steps (common/fold_stats.wgsl), for
// sums. The one-value-per-load kernel carries its sums in component x.

// Each lane writes its own records instead of folding (see fold_stats).
override LANE_RECORDS: bool = false;

var<workgroup> wg_sum_dy: array<vec4<f32>, 256>;
var<workgroup> wg_sum_dy_xmu: array<vec4<f32>, 256>;

struct GradSums {
    sum_dy: vec4<f32>,
    sum_dy_xmu: vec4<f32>,
}

// As fold_stats: afterwards slot lid < tile_c holds unit lid of the workgroup, which this
// returns in lane lid. Call from uniform control flow.
fn fold_sums(lid: u32, lane: Lane, sums: GradSums, tile_c: u32, tile_i: u32, span: vec2<u32>, keep: u32) -> GradSums {
    let sum_dy = subgroup_sum(sums.sum_dy, tile_c, tile_i, span);
    let sum_dy_xmu = subgroup_sum(sums.sum_dy_xmu, tile_c, tile_i, span);
    if lane.rep {
        wg_sum_dy[lane.slot] = sum_dy;
        wg_sum_dy_xmu[lane.slot] = sum_dy_xmu;
    }
    var lanes = fold_lanes(tile_c, span);
    while lanes > keep {
        let fold = min(lanes / keep, 16u);
        let next = lanes / fold;
        workgroupBarrier();
        if lid / tile_c < next {
            for (var j = 1u; j < fold; j++) {
                let b = lid + j * next * tile_c;
                wg_sum_dy[lid] += wg_sum_dy[b];
                wg_sum_dy_xmu[lid] += wg_sum_dy_xmu[b];
            }
        }
        lanes = next;
    }
    // Where there was no fold to do, slot lid still holds another lane's state.
    workgroupBarrier();
    return GradSums(wg_sum_dy[lid], wg_sum_dy_xmu[lid]);
}
