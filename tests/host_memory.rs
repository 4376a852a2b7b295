//! Host memory that runs out: a forward or backward whose result the host cannot allocate
//! is an `Allocation` error before any work, on both engines, and the layer is left as if
//! the call had not been made. The GPU engine reserves its read-back before it records
//! anything: reserved after the submit, the running statistics would already have moved.
//!
//! A global allocator refuses, on the test's own thread, every single allocation at or above
//! a limit that the test sets around the call under test.

mod common;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;

use ndarray::ArrayD;
use wgpu_batchnorm::{BatchNorm, BatchNormConfig, BnError, Device, Layout};

struct Refusing;

thread_local! {
    static REFUSE_FROM: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn refused(size: usize) -> bool {
    REFUSE_FROM.try_with(|r| size >= r.get()).unwrap_or(false)
}

unsafe impl GlobalAlloc for Refusing {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        if refused(layout.size()) {
            return std::ptr::null_mut();
        }
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        if refused(new_size) {
            return std::ptr::null_mut();
        }
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Refusing = Refusing;

/// `work`, with this thread's allocations of `from` bytes or more refused.
fn refusing<T>(from: usize, work: impl FnOnce() -> T) -> T {
    REFUSE_FROM.with(|r| r.set(from));
    let out = work();
    REFUSE_FROM.with(|r| r.set(usize::MAX));
    out
}

const DIMS: [usize; 4] = [4, 8, 128, 256];
/// Under one tensor of DIMS (4 MiB), over everything else a call allocates.
const REFUSE_FROM_BYTES: usize = 3 << 20;

fn engines() -> [(&'static str, Device); 2] {
    [("gpu", Device::Gpu(common::gpu())), ("cpu", Device::Cpu)]
}

fn expect_allocation_error<T: std::fmt::Debug>(
    engine: &str,
    result: Result<T, BnError>,
    gpu_what: &str,
) {
    match result {
        Err(BnError::Allocation { what, bytes }) => {
            assert!(
                bytes >= REFUSE_FROM_BYTES as u64,
                "{engine}: {what} refused at {bytes} bytes"
            );
            if engine == "gpu" {
                assert_eq!(what, gpu_what, "{engine}: the read-back is reserved first");
            }
        }
        other => panic!("{engine}: expected an allocation error, got {other:?}"),
    }
}

#[test]
fn a_forward_without_room_for_y_changes_nothing() {
    let mut rng = common::Rng::new(41);
    let x: ArrayD<f32> = rng.array(&DIMS, 1.5, 2.0);
    for (engine, device) in engines() {
        let mut fresh = BatchNorm::new(BatchNormConfig::new(8), device.clone()).unwrap();
        let want = fresh.forward(x.view(), Layout::ChannelsFirst).unwrap();
        let want_mean = fresh.running_mean().unwrap();

        let mut layer = BatchNorm::new(BatchNormConfig::new(8), device).unwrap();
        let refused = refusing(REFUSE_FROM_BYTES, || {
            layer.forward(x.view(), Layout::ChannelsFirst)
        });
        expect_allocation_error(engine, refused, "y read back");
        assert_eq!(layer.num_batches_tracked(), Some(0), "{engine}");
        assert_eq!(layer.running_mean().unwrap(), vec![0.0; 8], "{engine}");
        assert_eq!(layer.running_var().unwrap(), vec![1.0; 8], "{engine}");

        // The same forward, given room, is the first one the layer counts.
        let got = layer.forward(x.view(), Layout::ChannelsFirst).unwrap();
        assert_eq!(got.y, want.y, "{engine}");
        assert_eq!(layer.num_batches_tracked(), Some(1), "{engine}");
        assert_eq!(layer.running_mean().unwrap(), want_mean, "{engine}");
    }
}

#[test]
fn a_backward_without_room_for_dx_changes_nothing() {
    let mut rng = common::Rng::new(42);
    let x: ArrayD<f32> = rng.array(&DIMS, -0.5, 1.0);
    let dy: ArrayD<f32> = rng.array(&DIMS, 0.0, 1.0);
    for (engine, device) in engines() {
        let mut layer = BatchNorm::new(BatchNormConfig::new(8), device).unwrap();
        // On the GPU each backward adds its dgamma and dbeta to the layer's sums, so a
        // refused one that ran its kernels anyway would show in the next one's sums.
        let accumulating = layer
            .gpu()
            .map(|g| g.set_accumulate_param_grads(true))
            .is_some();
        layer.forward(x.view(), Layout::ChannelsFirst).unwrap();
        let want = layer
            .backward(x.view(), dy.view(), Layout::ChannelsFirst)
            .unwrap();

        let refused = refusing(REFUSE_FROM_BYTES, || {
            layer.backward(x.view(), dy.view(), Layout::ChannelsFirst)
        });
        expect_allocation_error(engine, refused, "dx read back");
        let got = layer
            .backward(x.view(), dy.view(), Layout::ChannelsFirst)
            .unwrap();
        assert_eq!(got.dx, want.dx, "{engine}");
        // g + g is exact: the sums of two backwards, not three.
        let sums = |one: &Option<Vec<f32>>| {
            let times = if accumulating { 2.0 } else { 1.0 };
            one.as_ref()
                .map(|v| v.iter().map(|g| times * g).collect::<Vec<_>>())
        };
        assert_eq!(got.dgamma, sums(&want.dgamma), "{engine}");
        assert_eq!(got.dbeta, sums(&want.dbeta), "{engine}");
    }
}

/// The `.npy` file of an array of DIMS (4 MiB of values), read back from a regular file, from
/// a pipe and from memory, and written to bytes: each refused with an error (the reader's
/// naming the file) where the host cannot hold the values, where `Vec` growth would abort the
/// process. Given room, the same calls give the array back.
#[test]
fn npy_files_without_room_are_errors() {
    use wgpu_batchnorm::npy;
    let x: ArrayD<f32> = common::Rng::new(43).array(&DIMS, 0.0, 1.0);
    let bytes = npy::to_bytes(&x.view()).unwrap();
    match refusing(REFUSE_FROM_BYTES, || npy::to_bytes(&x.view())) {
        Err(BnError::Allocation { bytes: n, .. }) => assert_eq!(n, bytes.len() as u64),
        other => panic!("to_bytes: {:?}", other.map(|b| b.len())),
    }
    let dir = std::env::temp_dir().join(format!("host-memory-npy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("x.npy");
    std::fs::write(&file, &bytes).unwrap();
    let expect_refused = |what: &str, shown: &str, got: Result<ArrayD<f32>, BnError>| match got {
        Err(BnError::Npy { path, reason }) => {
            assert!(reason.contains("cannot allocate"), "{what}: {reason}");
            assert_eq!(path, shown, "{what}");
        }
        other => panic!("{what}: {:?}", other.map(|a| a.len())),
    };
    let shown = file.display().to_string();
    expect_refused(
        "file",
        &shown,
        refusing(REFUSE_FROM_BYTES, || npy::read_f32(&file)),
    );
    expect_refused(
        "bytes",
        npy::BYTES_PATH,
        refusing(REFUSE_FROM_BYTES, || {
            npy::parse_f32(&bytes, npy::BYTES_PATH)
        }),
    );
    assert_eq!(npy::read_f32(&file).unwrap(), x);
    assert_eq!(npy::parse_f32(&bytes, npy::BYTES_PATH).unwrap(), x);
    #[cfg(unix)]
    {
        let fifo = dir.join("x-stream.npy");
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let shown = fifo.display().to_string();
        for room in [false, true] {
            let (w, data) = (fifo.clone(), bytes.clone());
            let writer = std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().write(true).open(&w).unwrap();
                // A reader that stops early ends the writing with a broken pipe.
                let _ = f.write_all(&data);
            });
            if room {
                assert_eq!(npy::read_f32(&fifo).unwrap(), x, "stream");
            } else {
                let got = refusing(REFUSE_FROM_BYTES, || npy::read_f32(&fifo));
                expect_refused("stream", &shown, got);
            }
            writer.join().unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
