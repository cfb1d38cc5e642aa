//! The `braid` binary's global allocator: mimalloc, entered the way the
//! system allocator is.
//!
//! The `mimalloc` crate hands every allocation to `mi_malloc_aligned`,
//! whatever its alignment. For the alignments mimalloc gives anyway (at
//! most 16 bytes, and at most the size: its own `mi_malloc_is_naturally_aligned`),
//! that path checks the alignment, looks the size class up and calls the
//! page allocator out of line, and blocks over 1 KB take its generic path;
//! `mi_malloc` is the inlined fast path. Counted with callgrind, the
//! aligned entry was 8.5% of a no-op run's instructions (BENCHMARKS.md).
//! Rust's own `System` allocator makes the same choice between `malloc`
//! and `posix_memalign`. Larger alignments, reallocation and freeing go
//! to `mimalloc::MiMalloc` unchanged.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;

/// The alignment every mimalloc block of at least that size has
/// (`MI_MAX_ALIGN_SIZE`).
const MIN_ALIGN: usize = 16;

/// See the [module docs](self).
pub(crate) struct Allocator;

/// Whether `mi_malloc` alone returns a block aligned for `layout`.
fn natural(layout: Layout) -> bool {
    layout.align() <= MIN_ALIGN && layout.align() <= layout.size()
}

// SAFETY: `alloc` and `alloc_zeroed` return either mimalloc's own aligned
// allocation or, when `natural` holds, an `mi_malloc`/`mi_zalloc` block,
// which mimalloc aligns to `min(size, 16)` rounded down to a power of two,
// so to `layout.align()`. Every block comes from mimalloc, so `mi_free`
// (what `MiMalloc::dealloc` calls) and `mi_realloc_aligned` accept each.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if natural(layout) {
            // SAFETY: `mi_malloc` takes any size; `layout.size()` is not 0
            // (a zero-sized layout has align > size).
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller upholds `alloc`'s contract.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if natural(layout) {
            // SAFETY: as in `alloc`.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller upholds `alloc_zeroed`'s contract.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as in `dealloc`; mimalloc's aligned reallocation takes
        // its plain path itself for alignments up to 8.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    /// Blocks of `N` elements aligned to `A`, through the safe API: the
    /// test binary's global allocator is this one (`main.rs`).
    fn check<T: Copy + PartialEq + std::fmt::Debug>(fill: T) {
        let align = std::mem::align_of::<T>();
        for n in [1, 2, 3, 7, 16, 33, 100, 1000, 5000] {
            let mut v = vec![fill; n]; // `alloc_zeroed` when `fill` is zero
            assert_eq!(v.as_ptr() as usize % align, 0, "{n} x align {align}");
            v.extend(std::iter::repeat_n(fill, 2 * n)); // `realloc`
            assert_eq!(v.as_ptr() as usize % align, 0, "{n} x align {align}, grown");
            assert!(v.iter().all(|x| *x == fill));
            let mut w = Vec::with_capacity(n); // `alloc`
            w.push(fill);
            assert_eq!(
                w.as_ptr() as usize % align,
                0,
                "capacity {n} x align {align}"
            );
        }
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    #[repr(align(32))]
    struct A32(u8);
    #[derive(Clone, Copy, PartialEq, Debug)]
    #[repr(align(64))]
    struct A64(u8);
    #[derive(Clone, Copy, PartialEq, Debug)]
    #[repr(align(4096))]
    struct A4096(u8);

    /// The fast path's layouts (alignment up to 16 and the size) and those
    /// it leaves to `MiMalloc` each get a block aligned for them, zeroed or
    /// not, that keeps its contents as it grows.
    #[test]
    fn every_block_is_aligned_for_its_layout_and_keeps_its_contents_as_it_grows() {
        for zero in [true, false] {
            let byte = u8::from(!zero);
            check(byte);
            check(u16::from(byte));
            check(u32::from(byte));
            check(u64::from(byte));
            check(u128::from(byte));
            check(A32(byte));
            check(A64(byte));
            check(A4096(byte));
        }
        // Odd sizes under the alignment: three bytes aligned to 2 and 4.
        check([0u16; 3]);
        check([7u32; 3]);
    }
}
