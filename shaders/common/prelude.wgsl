// What the kernels share, prepended to each shader by the host (and by the portability
// test): the uniform every kernel reads, written once here and once in src/gpu/kernels.rs,
// the partial records that reductions write and finalize kernels merge, and the vec4
// Welford steps of the reductions.
//
// The tensor is viewed as [outer][channels][inner]; tile_* lay a reduction's lanes out over
// channel units, inner units and rows, and its splits cover rows_per_split rows (and
// inner_per_split units of each); apply_* cut the element-wise kernels' matrix view;
// total counts the elements of this chunk; count, the values of one channel in the tensor.

struct Params {
    channels: u32,
    inner: u32,
    outer: u32,
    count: u32,
    splits: u32,
    rows_per_split: u32,
    tile_c: u32,
    tile_i: u32,
    tile_o: u32,
    apply_width: u32,
    apply_rows: u32,
    apply_rows_per_group: u32,
    total: u32,
    flags: u32,
    eps: f32,
    momentum: f32,
    // Where this chunk's records start among its channels' (a tensor over one storage binding
    // runs in chunks of rows: the chunk's first split; a sample over one in blocks of
    // channels: also past the records of the block's first channel_base channels).
    split_offset: u32,
    // Where rows are few and long, a reduction's splits also cut each row into ranges of
    // inner_per_split units (what one lane loads at a time): inner_splits of them.
    inner_splits: u32,
    inner_per_split: u32,
    // Lanes that merge one channel's splits in stats_finalize and grad_finalize.
    merge_lanes: u32,
    // Where the values a reduction shifts a channel by lie (shift_samples).
    shift_at: vec3<u32>,
    // The chunk's first channel, where the per-channel records it reads start (coefficients,
    // saved statistics): 0 but in a block of a sample over one binding (Geometry::row_blocks),
    // whose channels the kernels count from 0 in the data and from here in the records.
    channel_base: u32,
}

// One split's statistics of one channel: count, mean and M2 of the values shifted by
// `shift` (see stats_reduce).
struct StatsPartial {
    count: u32,
    mean: f32,
    m2: f32,
    shift: f32,
}

// One split's gradient sums of one channel.
struct GradPartial {
    sum_dy: f32,
    sum_dy_xmu: f32,
}

// The records are stored as one vector each (the floats' bits in a vec4<u32>, so that no
// float move can touch them, the count being a denormal's bits): one 16- or 8-byte access
// per record where a struct's members would be four or two, and lavapipe pays per access
// (PERF.md 46).
fn pack_stats(r: StatsPartial) -> vec4<u32> {
    return vec4<u32>(r.count, bitcast<u32>(r.mean), bitcast<u32>(r.m2), bitcast<u32>(r.shift));
}

fn unpack_stats(v: vec4<u32>) -> StatsPartial {
    return StatsPartial(v.x, bitcast<f32>(v.y), bitcast<f32>(v.z), bitcast<f32>(v.w));
}

fn pack_grad(g: GradPartial) -> vec2<f32> {
    return vec2<f32>(g.sum_dy, g.sum_dy_xmu);
}

fn unpack_grad(v: vec2<f32>) -> GradPartial {
    return GradPartial(v.x, v.y);
}

// The values every lane of a reduction subtracts from a channel's values before accumulating
// (the records' `shift`) is the median of three of the channel's values in this chunk, at
// places the host picks (shift_offsets in src/gpu/kernels.rs says which and why). These are
// their element indices in the [outer][channels][inner] view of this chunk.
fn shift_samples(q: Params, c: u32) -> vec3<u32> {
    return q.shift_at + vec3<u32>(c * q.inner);
}

// The median of three, component by component.
fn median3(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>) -> vec4<f32> {
    return max(min(a, b), min(max(a, b), c));
}

// A lane's running state: count, shifted mean and M2 for each of four components.
struct Welford {
    n: f32,
    mean: vec4<f32>,
    m2: vec4<f32>,
}

fn add_one(w: Welford, d: vec4<f32>) -> Welford {
    let n = w.n + 1.0;
    let delta = d - w.mean;
    let mean = w.mean + delta * (1.0 / n);
    return Welford(n, mean, w.m2 + delta * (d - mean));
}

// Chan's merge of the pair (count 2, mean (a + b) / 2, M2 (a - b)² / 2) into w.
fn add_pair(w: Welford, a: vec4<f32>, b: vec4<f32>) -> Welford {
    let n = w.n + 2.0;
    let half_gap = (a - b) * 0.5;
    let delta = (a + b) * 0.5 - w.mean;
    let share = 2.0 / n;
    return Welford(n, w.mean + delta * share, w.m2 + 2.0 * half_gap * half_gap + delta * (delta * (w.n * share)));
}

// Where a reduction lane sits in its workgroup's (tile_c, tile_i, tile_o) tiling.
// Neighbouring lanes take neighbouring addresses: inner first, then channels, then rows.
// `span` counts the lanes along inner and along rows whose states subgroup operations have
// already merged (see common/subgroups_*.wgsl; (1, 1) without them): one lane of each such
// group, `rep`, carries the merged state into the workgroup fold, at `slot`, where the
// lanes of one channel sit tile_c apart.
struct Lane {
    i: u32,
    c: u32,
    o: u32,
    slot: u32,
    rep: bool,
}

fn lane_of(lid: u32, tile_c: u32, tile_i: u32, span: vec2<u32>) -> Lane {
    let i = lid % tile_i;
    let c = (lid / tile_i) % tile_c;
    let o = lid / (tile_i * tile_c);
    let rank = i / span.x + (tile_i / span.x) * (o / span.y);
    return Lane(i, c, o, c + tile_c * rank, i % span.x == 0u && o % span.y == 0u);
}

// Lanes of one channel left for the workgroup fold.
fn fold_lanes(tile_c: u32, span: vec2<u32>) -> u32 {
    return 256u / (tile_c * span.x * span.y);
}

// Chan's merge of two Welford states; either may be empty.
fn merge_welford(a: Welford, b: Welford) -> Welford {
    let n = a.n + b.n;
    if b.n == 0.0 {
        return a;
    }
    let fb = b.n / n;
    let delta = b.mean - a.mean;
    return Welford(n, a.mean + delta * fb, a.m2 + b.m2 + delta * (delta * (a.n * fb)));
}

// The grouped reductions' vec4 position j holds values 4j .. 4j + 3 of a group of four
// channels; this sums the components of v that lie in [e0, e1), one channel's values. A
// select, not a multiply by a mask: another channel's NaN must not reach this one.
fn channel_part(v: vec4<f32>, j: u32, e0: u32, e1: u32) -> f32 {
    let e = vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u);
    let inside = (e >= vec4<u32>(e0)) & (e < vec4<u32>(e1));
    return dot(select(vec4<f32>(0.0), v, inside), vec4<f32>(1.0));
}

// The channels, within its group of four, of the first and the last component of position j
// in the grouped kernels: with inner >= 2 and j's components starting at a multiple of four,
// they span at most two channels (so a lane loads its per-channel constants twice, not
// four times).
fn group_channel_split(j: u32, inner: u32) -> vec2<u32> {
    return vec2<u32>(4u * j / inner, (4u * j + 3u) / inner);
}

// Which components of position j belong to the second of those channels, `split`.y, where
// it differs from the first (none where the position lies in one channel).
fn second_channel(j: u32, split: vec2<u32>, inner: u32) -> vec4<bool> {
    let e = vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u);
    return (e >= vec4<u32>(split.y * inner)) & vec4<bool>(split.y != split.x);
}

// How many positions of a group hold values of one channel, at most: the lanes of one
// channel in the grouped kernels, as many records per split where each lane writes its own
// (LANE_RECORDS). Channel c spans positions c·inner / 4 ..= ((c + 1)·inner - 1) / 4.
// Written once more in src/gpu/kernels.rs (grouped_positions).
fn grouped_positions(inner: u32) -> u32 {
    return (inner + 2u) / 4u + 1u;
}

// How many channels position j's components lie in (see group_channel_split).
fn grouped_channels(split: vec2<u32>) -> u32 {
    return select(2u, 1u, split.x == split.y);
}

// Under LANE_RECORDS, the records a grouped lane at position j writes for the k-th channel
// of its position: that channel's records are one per position it spans, the lane's at
// `slot`; the slots from `empty_from` up to grouped_positions are written empty by the lane
// at the channel's last position (grouped_positions if this is not it).
struct GroupedSlot {
    // The channel within the group, and which of the lane's components lie in it.
    c: u32,
    mine: vec4<bool>,
    slot: u32,
    empty_from: u32,
}

// The record of slot `slot` of the grouped lane along rows lane_o in `split`: each lane
// along rows has grouped_positions slots per channel.
fn grouped_record(q: Params, split: u32, lane_o: u32, slot: u32) -> u32 {
    let positions = grouped_positions(q.inner);
    return lane_record(split, lane_o * positions + slot, q.tile_o * positions);
}

fn grouped_slot(j: u32, split: vec2<u32>, in_b: vec4<bool>, k: u32, inner: u32) -> GroupedSlot {
    let c = split[k];
    let j0 = c * inner / 4u;
    let j1 = ((c + 1u) * inner - 1u) / 4u;
    let empty_from = select(grouped_positions(inner), j1 - j0 + 1u, j == j1);
    return GroupedSlot(c, select(!in_b, in_b, k == 1u), j - j0, empty_from);
}

// Where the record of (channel, split) is: channel-major, each channel's splits side by
// side for the finalize lanes that merge them. `split` counts over all chunks. (Split-major
// records measured slower on lavapipe: 8×64×56×56 forward at 0.32 of the copy roof against
// 0.42; PERF.md 26.)
fn partial_record(q: Params, channel: u32, split: u32) -> u32 {
    return channel * q.splits + split;
}

// Where a reduction writes its record of (channel, split), `split` counting from this
// chunk's first (split_offset).
fn partial_index(q: Params, channel: u32, split: u32) -> u32 {
    return partial_record(q, channel, q.split_offset + split);
}

// Under LANE_RECORDS a split of a reduction holds `lanes` records of each channel, one per
// lane of the channel in the workgroup: this is the one of the lane of rank `rank`.
fn lane_record(split: u32, rank: u32, lanes: u32) -> u32 {
    return split * lanes + rank;
}

// The rows of a split that one lane along rows reads: every tile_o-th from its own, or, with
// `contiguous` (CPU rasterizers, see stats_reduce_channels), one range of about
// rows / tile_o. The lane reads rows o_begin, o_begin + step, ... below o_end.
struct LaneRows {
    o_begin: u32,
    o_end: u32,
    step: u32,
}

fn lane_rows(r: SplitRange, lane_o: u32, tile_o: u32, contiguous: bool) -> LaneRows {
    if contiguous {
        let rows = (r.o_end - r.o_begin + tile_o - 1u) / tile_o;
        let o_begin = r.o_begin + lane_o * rows;
        return LaneRows(o_begin, min(o_begin + rows, r.o_end), 1u);
    }
    return LaneRows(r.o_begin + lane_o, r.o_end, tile_o);
}

// The rows [o_begin, o_end) and inner units [i_begin, i_end) that one split of a reduction
// covers: splits are numbered inner range first, then row range.
struct SplitRange {
    o_begin: u32,
    o_end: u32,
    i_begin: u32,
    i_end: u32,
}

fn split_range(q: Params, split: u32, units_i: u32) -> SplitRange {
    let o_begin = (split / q.inner_splits) * q.rows_per_split;
    let i_begin = (split % q.inner_splits) * q.inner_per_split;
    return SplitRange(o_begin, min(o_begin + q.rows_per_split, q.outer), i_begin, min(i_begin + q.inner_per_split, units_i));
}

// The runs of RUN units one lane reads in a split (see stats_reduce_vec4), row after row, as
// one flat loop: lavapipe pays for each level of loop nesting around a few loads (PERF.md
// 32). The host takes runs only where a row's units, and so every split's range, divide
// into whole runs. `at` indexes the run's first unit in the tensor, `i` its unit along inner.
struct RunCursor {
    at: u32,
    i: u32,
}

// How many runs the lane reads: as many per row as start below the range's end, on each of
// its rows.
fn lane_run_count(q: Params, r: SplitRange, lane_i: u32, lane_o: u32, run: u32) -> u32 {
    let i0 = r.i_begin + lane_i * run;
    let step = q.tile_i * run;
    let o0 = r.o_begin + lane_o;
    let per_row = select(0u, (r.i_end - i0 + step - 1u) / step, i0 < r.i_end);
    let rows = select(0u, (r.o_end - o0 + q.tile_o - 1u) / q.tile_o, o0 < r.o_end);
    return rows * per_row;
}

fn first_run(r: SplitRange, lane_i: u32, lane_o: u32, run: u32, row_stride: u32, channel_at: u32) -> RunCursor {
    let i0 = r.i_begin + lane_i * run;
    return RunCursor((r.o_begin + lane_o) * row_stride + channel_at + i0, i0);
}

// The run after c: the next along inner, or the first of the lane's next row.
fn next_run(q: Params, r: SplitRange, c: RunCursor, lane_i: u32, run: u32, row_stride: u32) -> RunCursor {
    let i0 = r.i_begin + lane_i * run;
    let step = q.tile_i * run;
    let wrap = c.i + step >= r.i_end;
    let at = select(c.at + step, c.at + q.tile_o * row_stride - (c.i - i0), wrap);
    return RunCursor(at, select(c.i + step, i0, wrap));
}

// The element-wise kernels' column (one lane each, 256 per workgroup): along x, and on into z
// where a plane has more columns than one dimension of workgroups holds (Chunk's
// apply_groups). Lanes past the plane's width return.
fn apply_column(lid: u32, wid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return (wid.z * groups.x + wid.x) * 256u + lid;
}
