// Batch statistics, stage 1: per (channel, split) count, shifted mean and M2.
//
// The tensor is viewed as [outer][channels][inner] (inner = 1 for channels-last), so one
// kernel serves both layouts. A workgroup covers `tile_c` channels and the outer rows of
// one split; lanes are laid out (tile_c, tile_i, tile_o) so that neighbouring lanes read
// neighbouring addresses in either layout.
//
// Values are shifted by the channel's first element before accumulating: for data whose
// mean is large next to its spread (mean 1e4, std 1e-2) the differences are small and exact,
// so the f32 mean and M2 keep their precision. Welford within a lane, Chan's merge across
// lanes; counts stay integers.

const WG: u32 = 256u;

// Params and the partial records are in shaders/common/prelude.wgsl, prepended by the host.
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<StatsPartial>;

var<workgroup> wg_count: array<u32, WG>;
var<workgroup> wg_mean: array<f32, WG>;
var<workgroup> wg_m2: array<f32, WG>;

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
    wg_m2[a] = wg_m2[a] + wg_m2[b] + delta * delta * f32(na) * fb;
    wg_count[a] = n;
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let split = wid.x;
    let span = subgroup_span(p.tile_c, p.tile_i);
    let lane = lane_of(lid, p.tile_c, p.tile_i, span);
    let lane_i = lane.i;
    let lane_c = lane.c;
    let lane_o = lane.o;
    let slot = lane.slot;
    let c = wid.y * p.tile_c + lane_c;

    var n = 0.0;
    var mean = 0.0;
    var m2 = 0.0;
    var shift = 0.0;
    if c < p.channels {
        shift = x[c * p.inner];
        let row_stride = p.channels * p.inner;
        let r = split_range(p, split, p.inner);
        for (var o = r.o_begin + lane_o; o < r.o_end; o += p.tile_o) {
            let base = o * row_stride + c * p.inner;
            for (var i = r.i_begin + lane_i; i < r.i_end; i += p.tile_i) {
                let d = x[base + i] - shift;
                n += 1.0;
                let delta = d - mean;
                mean += delta / n;
                m2 += delta * (d - mean);
            }
        }
    }
    let w = subgroup_welford(Welford(n, vec4<f32>(mean, 0.0, 0.0, 0.0), vec4<f32>(m2, 0.0, 0.0, 0.0)), p.tile_c, p.tile_i, span);
    if lane.rep {
        wg_count[slot] = u32(w.n);
        wg_mean[slot] = w.mean.x;
        wg_m2[slot] = w.m2.x;
    }

    // Lanes of one channel sit tile_c apart. Fold them sixteen at a time: two barriers for
    // 256 lanes instead of eight, which matters where a barrier is expensive (lavapipe).
    var lanes = fold_lanes(p.tile_c, span);
    while lanes > 1u {
        let fold = min(lanes, 16u);
        let next = lanes / fold;
        workgroupBarrier();
        if lid / p.tile_c < next {
            for (var j = 1u; j < fold; j++) {
                merge_into(lid, lid + j * next * p.tile_c);
            }
        }
        lanes = next;
    }
    // Where subgroups left no fold to do, slot lid still holds another lane's state.
    workgroupBarrier();

    // Slot lid < tile_c now holds channel `writer`.
    let writer = wid.y * p.tile_c + lid;
    if lid < p.tile_c && writer < p.channels {
        let first = x[writer * p.inner];
        partials[partial_index(p, writer, split)] = StatsPartial(wg_count[lid], wg_mean[lid], wg_m2[lid], first);
    }
}
