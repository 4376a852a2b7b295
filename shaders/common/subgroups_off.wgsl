// Without subgroup operations every lane enters the workgroup fold with its own state.
// (Twin of subgroups_on.wgsl; the host appends one of the two to the prelude.)

fn subgroup_span(lid: u32, tile_c: u32, tile_i: u32) -> vec2<u32> {
    return vec2<u32>(1u, 1u);
}

fn subgroup_welford(w: Welford, tile_c: u32, tile_i: u32, span: vec2<u32>) -> Welford {
    return w;
}

fn subgroup_sum(v: vec4<f32>, tile_c: u32, tile_i: u32, span: vec2<u32>) -> vec4<f32> {
    return v;
}
