// Backward, element-wise, four values per load: the vec4 twin of apply_backward, laid out
// like apply_forward_vec4.

// Eval with running statistics: dx = k1·dy, x unread (see apply_backward).
override FROZEN: bool = false;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy: array<vec4<f32>>;
// (center, k1, k2, k0)
@group(0) @binding(3) var<storage, read> coeff: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dx: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let col = apply_column(lid, wid, groups);
    let width = p.apply_width / 4u;
    if col >= width {
        return;
    }
    let k = lane_coefficients(col);
    let center = k[0];
    let k1 = k[1];
    let k2 = k[2];
    let k0 = k[3];
    let total = p.total / 4u;
    let r_begin = wid.y * p.apply_rows_per_group;
    let r_end = min(r_begin + p.apply_rows_per_group, p.apply_rows);
    for (var r = r_begin; r < r_end; r++) {
        let idx = r * width + col;
        if idx < total {
            if FROZEN {
                dx[idx] = k1 * dy[idx];
            } else {
                dx[idx] = k1 * dy[idx] + k2 * (x[idx] - center) + k0;
            }
        }
    }
}
