//! The data plane's global allocator: mimalloc, asked the way std's `System`
//! allocator asks malloc.
//!
//! The `mimalloc` crate asks `mi_malloc_aligned` for every block. Blocks of
//! the alignment mimalloc gives anyway (up to 16 bytes, and no more than the
//! size) then take mimalloc's aligned path, whose fast case needs a free block
//! that happens to be aligned and whose fallback over-allocates: in
//! mp-gather's profile that was ~850 of ~21,000 instructions per call.
//! [`MpAlloc`] asks `mi_malloc` for those and `mi_malloc_aligned` only for
//! larger alignments.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: mp_alloc::MpAlloc = mp_alloc::MpAlloc;
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every mimalloc block of at least that size has
/// (`MI_MAX_ALIGN_SIZE`); smaller blocks are aligned to their size class,
/// which `Layout`'s size (a multiple of its alignment) never undercuts.
const MIN_ALIGN: usize = 16;

/// True when a plain `mi_malloc` block is aligned enough for `layout`.
#[inline]
fn plain(layout: &Layout) -> bool {
    layout.align() <= MIN_ALIGN && layout.align() <= layout.size()
}

/// mimalloc as the global allocator; see the crate docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct MpAlloc;

// SAFETY: every method hands the request to mimalloc, which returns blocks of
// at least the requested size, aligned as asked (mi_*_aligned) or as `plain`
// guarantees; `dealloc` and `realloc` receive only blocks mimalloc made.
unsafe impl GlobalAlloc for MpAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc accepts any size; the alignment is a power of two.
        unsafe {
            if plain(&layout) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(&layout) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = Layout::from_size_align(new_size, layout.align());
        // SAFETY: `ptr` came from this allocator; the alignment is kept.
        unsafe {
            if new.is_ok_and(|n| plain(&n)) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment a program asks for comes back aligned as
    /// asked, zeroed when asked, and keeps its bytes across reallocations.
    #[test]
    fn blocks_are_aligned_zeroed_and_kept() {
        let a = MpAlloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [align, align * 2, align * 3, align * 7, 1000 * align] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed below.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xab));
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
