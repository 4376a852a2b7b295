// Eval-mode coefficients from the running statistics, one invocation per channel: the same
// (center, scale, shift) fold as stats_finalize, so eval forward reuses apply_forward, and the
// same saved layout, so eval backward reuses grad_reduce.

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> running_mean: array<f32>;
@group(0) @binding(2) var<storage, read> running_var: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
// (center, offset, invstd, var): the running mean is its own center, offset 0.
@group(0) @binding(5) var<storage, read_write> saved: array<vec4<f32>>;
// (center, scale, shift, 0) for apply_forward.
@group(0) @binding(6) var<storage, read_write> coeff: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c >= p.channels {
        return;
    }
    let mean = running_mean[c];
    let variance = running_var[c];
    let invstd = 1.0 / sqrt(variance + p.eps);
    saved[c] = vec4<f32>(mean, 0.0, invstd, variance);
    store_coeff(c, vec4<f32>(mean, gamma[c] * invstd, beta[c], 0.0));
}
