// Backward, element-wise: dx = k1·dy + k2·(x − center) + k0, with per-channel
// (center, k1, k2, k0) from grad_finalize. Same matrix view as apply_forward.

// Eval with running statistics: dx = k1·dy, x unread. PyTorch's eval backward never reads x,
// so a NaN or Inf there must not reach dx, as it would through 0·(x − center).
override FROZEN: bool = false;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
// (center, k1, k2, k0)
@group(0) @binding(3) var<storage, read> coeff: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

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
            if FROZEN {
                dx[idx] = k.y * dy[idx];
            } else {
                dx[idx] = k.y * dy[idx] + k.z * (x[idx] - k.x) + k.w;
            }
        }
    }
}
