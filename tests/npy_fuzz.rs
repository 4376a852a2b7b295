//! Fuzzing the input validation with proptest: the `.npy` reader on arbitrary bytes and on
//! structured mutations of valid files, `to_bytes` → `parse_f32` round trips, `Shape::new` on
//! arbitrary dimension vectors and `BatchNormConfig::validate` on arbitrary eps and momentum.
//!
//! A counting global allocator records the largest single allocation made on the parsing
//! thread, so "never allocates what a header claims before checking it against the file size"
//! is asserted, not assumed: every parse must stay within a bound proportional to its input.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use proptest::sample::Index;
use wgpu_batchnorm::npy::{parse_f32, read_f32, to_bytes, BYTES_PATH};
use wgpu_batchnorm::{BatchNormConfig, BnError, Layout, Shape};

// ---------------------------------------------------------------------------------------------
// Largest allocation per thread.

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: allocations while the thread-local is being torn down are not counted.
    let _ = LARGEST.try_with(|c| {
        if size > c.get() {
            c.set(size)
        }
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Parses `bytes`, returning the result and the largest single allocation made meanwhile.
fn parse_tracked(bytes: &[u8]) -> (Result<ArrayD<f32>, BnError>, usize) {
    LARGEST.with(|c| c.set(0));
    let r = parse_f32(bytes, BYTES_PATH);
    let largest = LARGEST.with(|c| c.get());
    (r, largest)
}

/// What a parse may allocate in one piece: the data (at most the input), the dims vector and
/// error messages quoting the header (a small multiple of the header length), plus slack.
fn allocation_bound(input_len: usize) -> usize {
    16 * input_len + 4096
}

/// The checks every parse must pass, whatever the input: no panic (a panic fails the test),
/// a bounded allocation, an `Npy` error naming `<bytes>`, or an array no larger than the input
/// that survives a round trip.
fn check_parse(bytes: &[u8]) -> Result<Option<ArrayD<f32>>, TestCaseError> {
    let (r, largest) = parse_tracked(bytes);
    prop_assert!(
        largest <= allocation_bound(bytes.len()),
        "parsing {} bytes allocated {} bytes in one piece",
        bytes.len(),
        largest
    );
    match r {
        Ok(a) => {
            prop_assert!(a.len() * 4 <= bytes.len());
            let again = parse_f32(&to_bytes(&a.view()).unwrap(), BYTES_PATH).unwrap();
            prop_assert_eq!(again.shape(), a.shape());
            prop_assert!(a
                .iter()
                .zip(again.iter())
                .all(|(x, y)| x.to_bits() == y.to_bits()));
            Ok(Some(a))
        }
        Err(BnError::Npy { path, reason }) => {
            prop_assert_eq!(path, BYTES_PATH);
            prop_assert!(!reason.is_empty());
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!("not an Npy error: {other:?}"))),
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A version 1.0 file around `dict`, padded as numpy pads it.
fn file_with_header(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

// ---------------------------------------------------------------------------------------------
// Fixed cases: huge claims in tiny files.

/// What "fails fast" allows.
const FAST: Duration = Duration::from_secs(2);

#[test]
fn huge_claimed_shape_in_a_100_byte_file_fails_fast_without_allocating() {
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }";
    // 10-byte prefix + header, then data bytes up to exactly 100 bytes in all.
    let mut header = dict.to_string();
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(100, 0x3f);
    assert_eq!(bytes.len(), 100);

    let start = Instant::now();
    let (r, largest) = parse_tracked(&bytes);
    let elapsed = start.elapsed();
    let err = r.expect_err("a 100-byte file cannot hold 2**40 floats");
    assert!(err.to_string().contains("truncated"), "{err}");
    // Generous, for a loaded 2-core machine running proptest beside it: reading or zeroing
    // what the header claims would take minutes, and the allocation bound below is exact.
    assert!(elapsed < FAST, "took {elapsed:?} to refuse");
    assert!(
        largest < 4096,
        "refusing the file allocated {largest} bytes in one piece"
    );

    // The same claim with many dimensions, and ones whose product overflows usize.
    for shape in [
        "(1024, 1024, 1024, 1024,)",
        "(4611686018427387904,)",
        "(18446744073709551615,)",
        "(18446744073709551615, 18446744073709551615)",
        "(4294967296, 4294967296, 4294967296)",
        "(2, 2305843009213693952)",
    ] {
        let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        let bytes = file_with_header(&dict, &[0; 24]);
        let start = Instant::now();
        let (r, largest) = parse_tracked(&bytes);
        assert!(r.is_err(), "{shape} parsed");
        assert!(start.elapsed() < FAST, "{shape}");
        assert!(largest < 4096, "{shape}: allocated {largest} bytes");
    }
}

#[test]
fn header_length_fields_pointing_past_the_end_fail_without_allocating() {
    for (version, len) in [
        ([1u8, 0u8], &0xffffu32.to_le_bytes()[..2]),
        ([2, 0], &0xffff_ffffu32.to_le_bytes()[..]),
        ([3, 0], &0x8000_0000u32.to_le_bytes()[..]),
        ([2, 0], &0x0000_0100u32.to_le_bytes()[..]),
    ] {
        let mut bytes = b"\x93NUMPY".to_vec();
        bytes.extend_from_slice(&version);
        bytes.extend_from_slice(len);
        bytes.extend_from_slice(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n");
        let (r, largest) = parse_tracked(&bytes);
        assert!(r.is_err(), "{version:?} {len:?}");
        assert!(largest < 4096, "allocated {largest} bytes");
    }
}

/// The allocation tracker itself must see a large allocation, or the bounds above prove
/// nothing.
#[test]
fn the_allocation_tracker_sees_allocations() {
    LARGEST.with(|c| c.set(0));
    let v: Vec<u8> = Vec::with_capacity(1 << 20);
    std::hint::black_box(&v);
    assert!(LARGEST.with(|c| c.get()) >= 1 << 20);
    // And a valid parse of n floats allocates about 4n bytes.
    let a = ArrayD::from_shape_vec(IxDyn(&[1000]), vec![1.5f32; 1000]).unwrap();
    let bytes = to_bytes(&a.view()).unwrap();
    let (r, largest) = parse_tracked(&bytes);
    assert_eq!(r.unwrap(), a);
    assert!((4000..=allocation_bound(bytes.len())).contains(&largest));
}

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes.

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check_parse(&bytes)?;
    }

    /// Arbitrary bytes after a correct magic string and version, so the fuzzing reaches the
    /// header-length and header code instead of stopping at the magic.
    #[test]
    fn arbitrary_bytes_after_the_magic_never_panic(
        version in prop_oneof![Just([1u8, 0]), Just([2, 0]), Just([3, 0]), any::<[u8; 2]>()],
        rest in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = b"\x93NUMPY".to_vec();
        bytes.extend_from_slice(&version);
        bytes.extend_from_slice(&rest);
        check_parse(&bytes)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Structured mutations of valid headers.

/// A dimension as written in the header text: mostly numbers, some huge, some malformed.
fn dim_text() -> impl Strategy<Value = (String, Option<usize>)> {
    prop_oneof![
        6 => (0usize..6).prop_map(|d| (d.to_string(), Some(d))),
        2 => prop_oneof![
            Just(1usize << 40),
            Just(1usize << 62),
            Just(usize::MAX),
            Just(usize::MAX / 4 + 1),
            any::<usize>(),
        ]
        .prop_map(|d| (d.to_string(), Some(d))),
        1 => (0usize..4).prop_map(|d| (format!("{d}L"), Some(d))),
        1 => prop_oneof![
            Just("-1".to_string()),
            Just("99999999999999999999999999".to_string()),
            Just("18446744073709551616".to_string()),
            Just("2.0".to_string()),
            Just("".to_string()),
            Just("0x10".to_string()),
            "[0-9]{15,25}",
            "[ -~]{0,4}",
        ]
        .prop_map(|s| (s, None)),
    ]
}

#[derive(Clone, Debug)]
struct ShapeText {
    text: String,
    /// The dimensions when `text` is a well-formed tuple of in-range integers.
    dims: Option<Vec<usize>>,
}

fn shape_text() -> impl Strategy<Value = ShapeText> {
    let tuple = (
        prop::collection::vec(dim_text(), 0..7),
        any::<bool>(),
        prop_oneof![Just(", "), Just(","), Just(" , ")],
    )
        .prop_map(|(dims, trailing, sep)| {
            let parts: Vec<&str> = dims.iter().map(|(t, _)| t.as_str()).collect();
            let mut text = format!("({}", parts.join(sep));
            let tuple_ok = dims.len() != 1 || trailing;
            if trailing && !dims.is_empty() {
                text.push(',');
            }
            text.push(')');
            let values: Option<Vec<usize>> = dims.iter().map(|(_, d)| *d).collect();
            ShapeText {
                text,
                dims: values.filter(|_| tuple_ok),
            }
        });
    prop_oneof![
        8 => tuple,
        1 => prop_oneof![
            Just("[2, 3]".to_string()),
            Just("2".to_string()),
            Just("(2,,)".to_string()),
            Just("(".to_string()),
            Just("((2,),)".to_string()),
            "[ -~]{0,12}",
        ]
        .prop_map(|text| ShapeText { text, dims: None }),
    ]
}

fn descr_text() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => Just("'<f4'".to_string()),
        1 => prop_oneof![
            Just("'<f8'"), Just("'>f4'"), Just("'|u1'"), Just("'f4'"), Just("'<f4 '"),
            Just("\"<f4\""), Just("'=f4'"), Just("[('a', '<f4')]"), Just("'<f4"), Just("<f4"),
        ]
        .prop_map(str::to_string),
        1 => "[ -~]{0,8}".prop_map(|s| format!("'{s}'")),
        1 => "[ -~]{0,8}",
    ]
}

fn fortran_text() -> impl Strategy<Value = String> {
    prop_oneof![
        16 => Just("False".to_string()),
        1 => prop_oneof![
            Just("True"), Just("false"), Just("0"), Just(""), Just("Fals"), Just("False_"),
            Just("'False'"),
        ]
        .prop_map(str::to_string),
        1 => "[A-Za-z0-9_]{0,6}",
    ]
}

#[derive(Clone, Debug)]
enum HeaderLen {
    Correct,
    Delta(i64),
    Any(u32),
}

#[derive(Clone, Debug)]
enum Data {
    /// Exactly the declared element count (when it is small enough to write).
    Exact,
    Short(usize),
    Extra(usize),
    Random(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Structured {
    version: [u8; 2],
    descr: String,
    fortran: String,
    shape: ShapeText,
    /// Key order (a permutation of 0..3), and whether to drop, duplicate or add a key.
    order: Vec<usize>,
    key_edit: u8,
    key_quote: char,
    trailing_comma: bool,
    pad: bool,
    header_len: HeaderLen,
    data: Data,
    truncate: Option<Index>,
    /// Overwrite one header byte with this (non-ASCII or control) byte.
    poke: Option<(Index, u8)>,
    seed: u64,
}

fn structured() -> impl Strategy<Value = Structured> {
    (
        (
            prop_oneof![
                12 => Just([1u8, 0]),
                3 => Just([2u8, 0]),
                3 => Just([3u8, 0]),
                1 => any::<[u8; 2]>(),
            ],
            descr_text(),
            fortran_text(),
            shape_text(),
            Just(vec![0usize, 1, 2]).prop_shuffle(),
            prop_oneof![16 => Just(0u8), 1 => 1u8..4],
            prop_oneof![Just('\''), Just('"')],
            any::<bool>(),
            any::<bool>(),
        ),
        (
            prop_oneof![
                16 => Just(HeaderLen::Correct),
                1 => (-8i64..8).prop_map(HeaderLen::Delta),
                1 => any::<u32>().prop_map(HeaderLen::Any),
            ],
            prop_oneof![
                16 => Just(Data::Exact),
                1 => (1usize..8).prop_map(Data::Short),
                1 => (1usize..8).prop_map(Data::Extra),
                1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Data::Random),
            ],
            prop::option::weighted(0.1, any::<Index>()),
            prop::option::weighted(0.05, (any::<Index>(), prop_oneof![128u8..=255, 0u8..32])),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (version, descr, fortran, shape, order, key_edit, key_quote, trailing, pad),
                (header_len, data, truncate, poke, seed),
            )| Structured {
                version,
                descr,
                fortran,
                shape,
                order,
                key_edit,
                key_quote,
                trailing_comma: trailing,
                pad,
                header_len,
                data,
                truncate,
                poke,
                seed,
            },
        )
}

/// Whether ndarray (like numpy) can hold an array of these dims: the product of the non-zero
/// dims must fit in isize even when a zero dim makes the element count 0. A file declaring
/// (0, 2, 2**62) is refused, cleanly, and that is right.
fn representable(dims: &[usize]) -> bool {
    dims.iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .is_some_and(|n| n <= isize::MAX as usize)
}

/// The dims and values a fully valid generated file must parse to.
type Expected = (Vec<usize>, Vec<f32>);

/// Largest element count for which the generator writes real data.
const MAX_WRITTEN: usize = 4096;

impl Structured {
    /// The file bytes, and the array it must parse to when every part is valid.
    fn build(&self) -> (Vec<u8>, Option<Expected>) {
        let q = self.key_quote;
        let entry = |k: usize| match k {
            0 => format!("{q}descr{q}: {}", self.descr),
            1 => format!("{q}fortran_order{q}: {}", self.fortran),
            _ => format!("{q}shape{q}: {}", self.shape.text),
        };
        let mut entries: Vec<String> = self.order.iter().map(|&k| entry(k)).collect();
        match self.key_edit {
            1 => {
                entries.remove(0);
            }
            2 => entries.push(entries[0].clone()),
            3 => entries.push(format!("{q}extra{q}: 1")),
            _ => {}
        }
        let mut dict = format!("{{{}", entries.join(", "));
        if self.trailing_comma {
            dict.push_str(", ");
        }
        dict.push('}');

        let major = self.version[0];
        let prefix = if major == 1 { 10 } else { 12 };
        let mut header = dict.into_bytes();
        if self.pad {
            while (prefix + header.len() + 1) % 64 != 0 {
                header.push(b' ');
            }
            header.push(b'\n');
        }
        if let Some((at, byte)) = self.poke {
            if !header.is_empty() {
                let i = at.index(header.len());
                header[i] = byte;
            }
        }

        let len = match self.header_len {
            HeaderLen::Correct => header.len() as u64,
            HeaderLen::Delta(d) => (header.len() as i64 + d).max(0) as u64,
            HeaderLen::Any(n) => n as u64,
        };

        let count = self
            .shape
            .dims
            .as_ref()
            .and_then(|d| d.iter().try_fold(1usize, |a, &b| a.checked_mul(b)));
        let mut rng = self.seed;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) as u32
        };
        let values: Vec<f32> = match count {
            Some(n) if n <= MAX_WRITTEN => (0..n).map(|_| f32::from_bits(next())).collect(),
            _ => Vec::new(),
        };
        let mut data = f32_bytes(&values);
        match &self.data {
            Data::Exact => {}
            Data::Short(k) => data.truncate(data.len().saturating_sub(*k)),
            Data::Extra(k) => data.extend(std::iter::repeat_n(0x41, *k)),
            Data::Random(bytes) => data = bytes.clone(),
        }

        let mut out = b"\x93NUMPY".to_vec();
        out.extend_from_slice(&self.version);
        if major == 1 {
            out.extend_from_slice(&(len as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&(len as u32).to_le_bytes());
        }
        out.extend_from_slice(&header);
        out.extend_from_slice(&data);

        let full_len = out.len();
        if let Some(cut) = self.truncate {
            out.truncate(cut.index(full_len + 1));
        }

        let version_ok = matches!(self.version, [1, 0] | [2, 0] | [3, 0]);
        let len_ok = match self.header_len {
            HeaderLen::Correct => true,
            HeaderLen::Delta(d) => d == 0,
            HeaderLen::Any(n) => n as usize == header.len(),
        } && (major != 1 || header.len() <= u16::MAX as usize);
        let valid = version_ok
            && len_ok
            && self.descr == "'<f4'"
            && self.fortran == "False"
            && self.key_edit == 0
            && self.poke.is_none()
            && matches!(self.data, Data::Exact)
            && out.len() == full_len
            && count.is_some_and(|n| n <= MAX_WRITTEN)
            && representable(self.shape.dims.as_deref().unwrap_or(&[]));
        let expected = valid.then(|| (self.shape.dims.clone().unwrap(), values));
        (out, expected)
    }

    /// Parts that make the file invalid whatever else is generated.
    fn surely_invalid(&self) -> bool {
        let definitely_bad_descr = matches!(
            self.descr.as_str(),
            "'<f8'" | "'>f4'" | "'|u1'" | "'f4'" | "'<f4 '" | "'=f4'"
        );
        definitely_bad_descr || self.fortran == "True" || self.key_edit != 0
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn structured_headers_never_panic_and_valid_ones_parse(s in structured()) {
        let (bytes, expected) = s.build();
        let parsed = check_parse(&bytes)?;
        if let Some((dims, values)) = expected {
            let a = parsed.as_ref().ok_or_else(|| TestCaseError::fail(format!(
                "a valid file was refused: {:?}",
                parse_f32(&bytes, BYTES_PATH).unwrap_err().to_string()
            )))?;
            prop_assert_eq!(a.shape(), &dims[..]);
            prop_assert!(a.iter().zip(&values).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        if s.surely_invalid() && s.poke.is_none() {
            prop_assert!(parsed.is_none(), "an invalid header was accepted: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]));
        }
    }

    /// Byte-level mutations of a valid file: flips, deletions, insertions, truncations and
    /// header-length rewrites, several at a time.
    #[test]
    fn mutated_valid_files_never_panic(
        dims in prop::collection::vec(0usize..5, 0..5),
        edits in prop::collection::vec((0u8..6, any::<Index>(), any::<u8>()), 1..6),
    ) {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n).map(|i| i as f32 - 1.5).collect();
        let a = ArrayD::from_shape_vec(IxDyn(&dims), values).unwrap();
        let mut bytes = to_bytes(&a.view()).unwrap();
        for (op, at, byte) in edits {
            match op {
                0 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes[i] = byte; }
                1 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes[i] ^= 1 << (byte % 8); }
                2 => { let cut = at.index(bytes.len() + 1); bytes.truncate(cut); }
                3 if !bytes.is_empty() => { let i = at.index(bytes.len()); bytes.remove(i); }
                4 => { let i = at.index(bytes.len() + 1); bytes.insert(i, byte); }
                _ if bytes.len() >= 10 => { bytes[8 + at.index(2)] = byte; }
                _ => {}
            }
        }
        check_parse(&bytes)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips.

fn any_f32_bits() -> impl Strategy<Value = f32> {
    prop_oneof![
        any::<u32>().prop_map(f32::from_bits),
        Just(f32::NAN),
        Just(-0.0f32),
        Just(f32::INFINITY),
        Just(f32::from_bits(1)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn round_trips_are_bit_identical(
        (dims, values) in prop::collection::vec(0usize..6, 0..6).prop_flat_map(|dims| {
            let n: usize = dims.iter().product();
            (Just(dims), prop::collection::vec(any_f32_bits(), n))
        }),
        transpose in any::<bool>(),
    ) {
        let a = ArrayD::from_shape_vec(IxDyn(&dims), values).unwrap();
        // A transposed view writes in logical (C) order too.
        let view = if transpose { a.view().reversed_axes() } else { a.view() };
        let bytes = to_bytes(&view).unwrap();
        let (r, largest) = parse_tracked(&bytes);
        let b = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(largest <= allocation_bound(bytes.len()));
        prop_assert_eq!(b.shape(), view.shape());
        prop_assert!(view.iter().zip(b.iter()).all(|(x, y)| x.to_bits() == y.to_bits()));
        prop_assert_eq!(to_bytes(&b.view()).unwrap(), bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Shape and config validation.

fn any_dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        6 => 0usize..8,
        1 => Just(0usize),
        1 => prop_oneof![
            Just(usize::MAX),
            Just(usize::MAX / 2 + 1),
            Just(1usize << 32),
            Just(1usize << 31),
            Just((1usize << 32) + 1),
        ],
        1 => any::<usize>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn shape_validation_accepts_exactly_the_documented_shapes(
        dims in prop::collection::vec(any_dim(), 0..8),
        channels_last in any::<bool>(),
    ) {
        let layout = if channels_last { Layout::ChannelsLast } else { Layout::ChannelsFirst };
        let product = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        // Its f32 bytes must fit one allocation (isize::MAX), computed here in u128 over the
        // non-zero dims (an empty batch's other dims are bounded too).
        let nonzero = dims.iter().filter(|&&d| d != 0).try_fold(1u128, |a, &d| a.checked_mul(d as u128));
        let fits = nonzero.and_then(|n| n.checked_mul(4)).is_some_and(|b| b <= isize::MAX as u128);
        // Zero-sized dimensions are accepted: an empty batch is PyTorch's too.
        let should_accept = (2..=5).contains(&dims.len()) && fits;
        match Shape::new(&dims, layout) {
            Ok(shape) => {
                prop_assert!(should_accept, "accepted {:?}", dims);
                prop_assert_eq!(shape.dims(), &dims[..]);
                prop_assert_eq!(shape.layout(), layout);
                // Every derived size is computable without overflow.
                let numel = product.unwrap();
                prop_assert_eq!(shape.numel(), numel);
                let (outer, c, inner) = shape.view();
                prop_assert_eq!(outer.checked_mul(c).and_then(|v| v.checked_mul(inner)), Some(numel));
                prop_assert_eq!(shape.per_channel().checked_mul(shape.channels()), Some(numel));
                prop_assert!(shape.expect_channels(shape.channels()).is_ok());
            }
            Err(e) => {
                prop_assert!(!should_accept, "refused {:?}: {}", dims, e);
                let ok = match e {
                    BnError::Rank { rank } => rank == dims.len() && !(2..=5).contains(&rank),
                    BnError::TooLarge { shape, limit } => {
                        !fits && shape == dims && limit == isize::MAX as u64
                    }
                    _ => false,
                };
                prop_assert!(ok, "wrong reason for {:?}", dims);
            }
        }
    }

    #[test]
    fn config_validation_accepts_exactly_the_documented_configs(
        num_features in prop_oneof![
            Just(0usize),
            1usize..4,
            Just(u32::MAX as usize),
            Just(u32::MAX as usize + 1),
            Just(usize::MAX),
        ],
        eps in special_f32(),
        momentum in prop::option::of(special_f32()),
        affine in any::<bool>(),
        track in any::<bool>(),
    ) {
        let mut config = BatchNormConfig::new(1);
        config.num_features = num_features;
        config.eps = eps;
        config.momentum = momentum;
        config.affine = affine;
        config.track_running_stats = track;
        let eps_ok = eps.is_finite() && eps >= f32::MIN_POSITIVE;
        let momentum_ok = momentum.is_none_or(|m| (0.0..=1.0).contains(&m));
        match config.validate() {
            Ok(()) => {
                prop_assert!(num_features >= 1);
                prop_assert!(num_features <= u32::MAX as usize);
                prop_assert!(eps_ok, "accepted eps {:e}", eps);
                prop_assert!(momentum_ok, "accepted momentum {:?}", momentum);
            }
            Err(BnError::Config { name, .. }) => {
                let expected = if num_features == 0 {
                    "num_features"
                } else if !eps_ok {
                    "eps"
                } else {
                    prop_assert!(!momentum_ok, "refused a valid config: {:?}", config);
                    "momentum"
                };
                prop_assert_eq!(name, expected);
            }
            Err(BnError::Limit { what, value, limit }) => {
                prop_assert_eq!(what, "num_features");
                prop_assert!(num_features > u32::MAX as usize);
                prop_assert_eq!((value, limit), (num_features as u64, u32::MAX as u64));
            }
            Err(other) => return Err(TestCaseError::fail(format!("{other:?}"))),
        }
    }
}

/// Every f32 bit pattern, with the edge cases weighted up.
fn special_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        2 => any::<u32>().prop_map(f32::from_bits),
        1 => any::<f32>(),
        1 => 0.0f32..=1.0,
        2 => prop_oneof![
            Just(f32::NAN),
            Just(-f32::NAN),
            Just(f32::from_bits(0x7f80_0001)), // signalling NaN
            Just(f32::INFINITY),
            Just(f32::NEG_INFINITY),
            Just(0.0f32),
            Just(-0.0f32),
            Just(1.0f32),
            Just(-1.0f32),
            Just(1.0f32 + f32::EPSILON),
            Just(f32::from_bits(1)),          // smallest subnormal
            Just(-f32::from_bits(1)),
            Just(f32::MIN_POSITIVE),
            Just(f32::MAX),
            Just(f32::MIN),
            Just(1e-5f32),
        ],
    ]
}

/// A file of the wrong dtype, or whose size disagrees with its header, is refused from its
/// header and its length, before its data is read: sparse files of 8 GiB (a float64 tensor
/// the size of a model's activations) and of 1 GiB (four float32 values declared) are
/// refused with the largest allocation a few kilobytes, where reading them whole would take
/// their size. A file that is what its header says still reads.
#[test]
fn a_file_is_refused_from_its_header_and_length_before_its_data_is_read() {
    let dir = std::env::temp_dir().join(format!("npy-sparse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (1048576, 1024), }",
            8u64 << 30,
            "unsupported dtype '<f8'",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }",
            1 << 30,
            "trailing bytes",
        ),
        (
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1073741824,), }",
            16,
            "truncated",
        ),
    ];
    for (i, (dict, data_bytes, says)) in cases.into_iter().enumerate() {
        let path = dir.join(format!("{i}.npy"));
        let header = file_with_header(dict, &[]);
        std::fs::write(&path, &header).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(header.len() as u64 + data_bytes).unwrap();
        LARGEST.with(|c| c.set(0));
        let r = read_f32(&path);
        let largest = LARGEST.with(|c| c.get());
        let err = r.expect_err(dict).to_string();
        assert!(err.contains(says), "{dict}: {err}");
        assert!(
            largest < 65536,
            "{dict}: allocated {largest} bytes in one piece"
        );
    }
    let good = dir.join("good.npy");
    let a = ndarray::Array::from_shape_fn(IxDyn(&[3, 5]), |i| (i[0] * 5 + i[1]) as f32);
    std::fs::write(&good, to_bytes(&a.view()).unwrap()).unwrap();
    assert_eq!(read_f32(&good).unwrap(), a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The positive oracle above must not be vacuous: a fair share of the generated files are
/// fully valid (and parse), and a fair share are surely invalid (and are refused).
#[test]
fn structured_generator_makes_valid_and_invalid_files() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = structured();
    let (mut valid, mut invalid, total) = (0, 0, 2000);
    for _ in 0..total {
        let s = strategy.new_tree(&mut runner).unwrap().current();
        let (bytes, expected) = s.build();
        let parsed = parse_f32(&bytes, BYTES_PATH);
        if expected.is_some() {
            assert!(parsed.is_ok(), "{s:?}");
            valid += 1;
        }
        if s.surely_invalid() && s.poke.is_none() {
            assert!(parsed.is_err(), "{s:?}");
            invalid += 1;
        }
    }
    assert!(
        valid * 10 > total,
        "only {valid} of {total} generated files are valid"
    );
    assert!(
        invalid * 20 > total,
        "only {invalid} of {total} are surely invalid"
    );
}
