// Forward, element-wise: y = (x − center)·scale + shift, with per-channel (center, scale,
// shift) folded by stats_finalize (training) or eval_finalize (eval).
//
// The tensor is viewed as a matrix of apply_rows × apply_width, where a row is a whole
// number of [channels][inner] planes (several when a plane is narrow), so each lane owns
// one column, works out its channel once, and walks down the rows: no division per element.

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
// (center, scale, shift, 0)
@group(0) @binding(2) var<storage, read> coeff: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(256)
fn main(
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
) {
    let col = apply_column(lid, wid, groups);
    if col >= p.apply_width {
        return;
    }
    let k = coeff[p.channel_base + (col / p.inner) % p.channels];
    let r_begin = wid.y * p.apply_rows_per_group;
    let r_end = min(r_begin + p.apply_rows_per_group, p.apply_rows);
    for (var r = r_begin; r < r_end; r++) {
        let idx = r * p.apply_width + col;
        if idx < p.total {
            y[idx] = (x[idx] - k.x) * k.y + k.z;
        }
    }
}
