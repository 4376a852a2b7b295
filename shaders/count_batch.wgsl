// num_batches_tracked + 1 for an empty training batch, which runs no other kernel but still
// counts (PyTorch's module counts before it normalizes). On the GPU and in recording order,
// as stats_finalize counts a batch with values, so that a forward recorded after it reads
// the right count without a buffer made or written per call.

// One count per channel (see stats_finalize).
@group(0) @binding(0) var<storage, read_write> batches_tracked: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if c < arrayLength(&batches_tracked) {
        batches_tracked[c] += 1u;
    }
}
