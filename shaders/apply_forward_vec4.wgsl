// Forward, element-wise, four values per load: the vec4 twin of apply_forward for shapes
// whose [channels][inner] plane divides by four. The four components may belong to different
// channels (common/apply_vec4.wgsl).

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
// (center, scale, shift, 0)
@group(0) @binding(2) var<storage, read> coeff: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<vec4<f32>>;

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
    let scale = k[1];
    let shift = k[2];
    let total = p.total / 4u;
    let r_begin = wid.y * p.apply_rows_per_group;
    let r_end = min(r_begin + p.apply_rows_per_group, p.apply_rows);
    for (var r = r_begin; r < r_end; r++) {
        let idx = r * width + col;
        if idx < total {
            y[idx] = (x[idx] - center) * scale + shift;
        }
    }
}
