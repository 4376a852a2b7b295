// Backward, stage 1, four values per load: the vec4 twin of grad_reduce for channels-first
// shapes whose plane divides by four, as stats_reduce_vec4 (channels-last:
// grad_reduce_channels).

// Units one lane reads back to back, 1 or even (see stats_reduce_vec4).
override RUN: u32 = 1u;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> dy: array<vec4<f32>>;
// (center, offset, invstd, var), mean = center + offset
@group(0) @binding(3) var<storage, read> saved: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> partials: array<vec2<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let units_c = p.channels;
    let units_i = p.inner / 4u;
    let split = wid.x;
    let span = subgroup_span(lid, p.tile_c, p.tile_i);
    let lane = lane_of(lid, p.tile_c, p.tile_i, span);
    let lane_i = lane.i;
    let lane_c = lane.c;
    let lane_o = lane.o;
    let u = wid.y * p.tile_c + lane_c;

    var sum_dy = vec4<f32>(0.0);
    var sum_dy_xmu = vec4<f32>(0.0);
    if u < units_c {
        let center = vec4<f32>(saved[p.channel_base + u].x);
        let offset = vec4<f32>(saved[p.channel_base + u].y);
        let row_stride = units_c * units_i;
        let r = split_range(p, split, units_i);
        // Two loads per step, added as a pair: half the serial chain of the sums (see
        // stats_reduce_vec4).
        let t = p.tile_i;
        if RUN == 1u {
            for (var o = r.o_begin + lane_o; o < r.o_end; o += p.tile_o) {
                let base = o * row_stride + u * units_i;
                var i = r.i_begin + lane_i;
                for (; i + t < r.i_end; i += 2u * t) {
                    let at = base + i;
                    let g0 = dy[at];
                    let g1 = dy[at + t];
                    sum_dy += g0 + g1;
                    sum_dy_xmu += g0 * ((x[at] - center) - offset) + g1 * ((x[at + t] - center) - offset);
                }
                if i < r.i_end {
                    let g = dy[base + i];
                    sum_dy += g;
                    sum_dy_xmu += g * ((x[base + i] - center) - offset);
                }
            }
        } else {
            let runs = lane_run_count(p, r, lane_i, lane_o, RUN);
            var c = first_run(r, lane_i, lane_o, RUN, row_stride, u * units_i);
            for (var n = 0u; n < runs; n++) {
                for (var k = 0u; k < RUN; k += 2u) {
                    let at = c.at + k;
                    let g0 = dy[at];
                    let g1 = dy[at + 1u];
                    sum_dy += g0 + g1;
                    sum_dy_xmu += g0 * ((x[at] - center) - offset) + g1 * ((x[at + 1u] - center) - offset);
                }
                c = next_run(p, r, c, lane_i, RUN, row_stride);
            }
        }
    }
    let folded = fold_sums(lid, lane, GradSums(sum_dy, sum_dy_xmu), p.tile_c, p.tile_i, span, 1u);

    // Lane lid < tile_c now holds unit `writer`: four sums of one channel each.
    let writer = wid.y * p.tile_c + lid;
    if lid < p.tile_c && writer < units_c {
        let ones = vec4<f32>(1.0);
        partials[partial_index(p, writer, split)] = pack_grad(GradPartial(dot(folded.sum_dy, ones), dot(folded.sum_dy_xmu, ones)));
    }
}
