// Backward, stage 2: each channel's split sums merged (by p.merge_lanes lanes, as in
// stats_finalize), then dgamma, dbeta, and the coefficients that let apply_backward form
// dx = k1·dy + k2·(x − center) + k0 in one pass.
//
// Training (batch statistics), with g = gamma·invstd, the three paths of the gradient:
//   dx = g·(dy − sum_dy/M − (x − mean)·invstd²·sum_dy_xmu/M)
// so k1 = g, k2 = −g·invstd²·sum_dy_xmu/M, k0 = −g·sum_dy/M − k2·offset, where
// mean = center + offset (see stats_finalize).
// Eval (frozen running statistics): dx = g·dy, so k2 = k0 = 0, and apply_backward's FROZEN
// pipelines leave x out.

// flags
const FROZEN_STATS: u32 = 4u;

// Add dgamma and dbeta to what the buffers hold, as autograd sums a parameter's gradients
// over the calls that used it (GpuBatchNorm::set_accumulate_param_grads), rather than
// overwrite them. A pipeline constant: the choice is made per recorded call, which a uniform
// written at submission could not follow.
override ACCUMULATE: bool = false;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read> saved: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(5) var<storage, read_write> dbeta: array<f32>;
// (center, k1, k2, k0) for apply_backward.
@group(0) @binding(6) var<storage, read_write> coeff: array<f32>;

var<workgroup> wg_sums: array<vec2<f32>, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let lanes = p.merge_lanes;
    let c = wid.x * (256u / lanes) + lid / lanes;
    let lane = lid % lanes;
    var sums = vec2<f32>(0.0);
    if c < p.channels {
        for (var k = lane; k < p.splits; k += lanes) {
            let part = unpack_grad(partials[partial_record(p, c, k)]);
            sums += vec2<f32>(part.sum_dy, part.sum_dy_xmu);
        }
    }
    wg_sums[lid] = sums;
    for (var half = lanes / 2u; half > 0u; half /= 2u) {
        workgroupBarrier();
        if lane < half {
            wg_sums[lid] += wg_sums[lid + half];
        }
    }
    if lane != 0u || c >= p.channels {
        return;
    }
    let sum_dy = wg_sums[lid].x;
    let sum_dy_xmu = wg_sums[lid].y;
    let stats = saved[c];
    let center = stats.x;
    let offset = stats.y;
    let invstd = stats.z;
    var dgamma_before = 0.0;
    var dbeta_before = 0.0;
    if ACCUMULATE {
        dgamma_before = dgamma[c];
        dbeta_before = dbeta[c];
    }
    dgamma[c] = dgamma_before + sum_dy_xmu * invstd;
    dbeta[c] = dbeta_before + sum_dy;

    let g = gamma[c] * invstd;
    if (p.flags & FROZEN_STATS) != 0u {
        store_coeff(c, vec4<f32>(center, g, 0.0, 0.0));
    } else {
        let m = f32(p.count);
        // Means first, then invstd² (PyTorch's proj_scale), then gamma·invstd: formed left to
        // right, gamma·invstd³ overflows where var + eps < 2e-26 (a constant channel under a
        // tiny eps), and inf·0 made a constant channel's dx NaN where PyTorch's is finite.
        let k2 = -g * (sum_dy_xmu / m * invstd * invstd);
        let k0 = -g * (sum_dy / m) - k2 * offset;
        store_coeff(c, vec4<f32>(center, g, k2, k0));
    }
}
