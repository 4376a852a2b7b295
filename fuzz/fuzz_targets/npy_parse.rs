//! The `.npy` reader on arbitrary bytes: it must never panic, never allocate far beyond the
//! input's size, and whatever it accepts must round-trip. Run (nightly, from fuzz/):
//!
//!   cargo +nightly fuzz run npy_parse -- -max_total_time=600 -dict=npy.dict \
//!       -malloc_limit_mb=64
//!
//! `-malloc_limit_mb=64` turns any single allocation over 64 MiB (from inputs of at most
//! 4 KiB) into a reported crash: the header's claimed size must be checked first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wgpu_batchnorm::npy::{parse_f32, to_bytes, BYTES_PATH};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = parse_f32(data, BYTES_PATH) {
        assert!(
            a.len() * 4 <= data.len(),
            "{} elements from {} bytes",
            a.len(),
            data.len()
        );
        let bytes = to_bytes(&a.view()).expect("room for what was parsed");
        let b = parse_f32(&bytes, BYTES_PATH).expect("a re-serialized array must parse");
        assert_eq!(a.shape(), b.shape());
        assert!(a
            .iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
});
