//! A decode step allocates nothing once its buffers have grown: counted by a global allocator over every
//! thread of the process (the pool's included). Checked for the SIMD kernel sets, the ones that run; the
//! scalar oracle keeps its per-call tile buffer for readability.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bitnet_format::BitnetFile;
use bitnet_kernels::Kernels;
use bitnet_model::{Backend, PackedModel, argmax};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator unchanged; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_allocate_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for head in [bitnet_convert::LmHead::Exact, bitnet_convert::LmHead::Int8] {
        let out = tmp.path().join(format!("m-{head:?}.bitnet"));
        bitnet_convert::convert(
            root.join("fixtures/bitnet-llama3-tiny").to_str().unwrap(),
            &out,
            &bitnet_convert::ConvertOptions { lm_head: head },
            &bitnet_convert::HubEnv::default(),
            &|_| {},
            &mut |_| {},
        )
        .unwrap();
        let file = Arc::new(BitnetFile::open(&out).unwrap());
        for k in Kernels::available()
            .into_iter()
            .filter(|k| k.name != "scalar")
        {
            let m = PackedModel::load_with(file.clone(), k, 2).unwrap();
            let mut s = m.session(64);
            let mut logits = Vec::new();
            m.forward_logits(&mut s, &[1, 2, 3, 4, 5], &mut logits)
                .unwrap();
            // Two steps to grow every buffer, then count.
            for _ in 0..2 {
                let next = argmax(&logits);
                m.forward_logits(&mut s, &[next], &mut logits).unwrap();
            }
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            for _ in 0..20 {
                let next = argmax(&logits);
                m.forward_logits(&mut s, &[next], &mut logits).unwrap();
            }
            let n = ALLOCATIONS.load(Ordering::SeqCst) - before;
            assert_eq!(n, 0, "{head:?} {k:?}: {n} allocations in 20 decode steps");
        }
    }
}
