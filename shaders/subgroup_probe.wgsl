// Run once when a device offers subgroups: records, per local_invocation_index, the lane's
// index in its subgroup, the subgroup's size and its first lane's index, so that the host can
// check the layout that common/subgroups_on.wgsl relies on before using it.

@group(0) @binding(0) var<storage, read_write> lanes: array<vec4<u32>, 256>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) lid: u32, @builtin(subgroup_invocation_id) id: u32, @builtin(subgroup_size) size: u32) {
    lanes[lid] = vec4<u32>(id, size, subgroupBroadcastFirst(lid), subgroupAdd(1u));
}
