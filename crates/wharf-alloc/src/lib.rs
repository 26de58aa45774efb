//! Wharf's global allocator: a length prefix that lies costs address space, not memory.
//!
//! Wire decoders from crates (the `kafka-protocol` codec in particular) pre-allocate from counts read off the
//! wire: `Vec::with_capacity(n)` before reading the `n` elements. A 14-byte request that claims a billion array
//! entries makes the process ask for ~35 GB; the system allocator refuses (it is more than RAM + swap), Rust
//! calls `handle_alloc_error`, and the process aborts — `catch_unwind` cannot stop that. The decoder would have
//! failed a microsecond later on the missing second element and freed the buffer, untouched.
//!
//! [`GuardedAlloc`] serves every allocation of at least [`LARGE_ALLOC_MIN_BYTES`] with its own anonymous
//! `mmap` marked `MAP_NORESERVE`: the kernel hands out address space without reserving memory for it, and pages
//! become memory only when written. A lying capacity therefore reserves address space for a moment (x86-64 has
//! 128 TiB of it) and is unmapped when the decoder gives up; an honest large buffer behaves as before. Smaller
//! allocations go to the system allocator unchanged, so the hot path costs one comparison.
//!
//! What it does not do: bound *honest* memory use. A request that really carries a million elements gets them;
//! request sizes are bounded by each protocol's own limits before anything is decoded (the Kafka front end allows
//! only Produce the full 100 MiB, because decoding inflates requests of many tiny elements 15–40 times).
//!
//! Limits: `MAP_NORESERVE` is honoured under `vm.overcommit_memory` 0 (Linux's default) and 1; under strict
//! accounting (2) the kernel reserves anyway, the mapping fails and the process aborts as it would without this
//! allocator. The broker logs a warning at start when the setting is 2 ([`overcommit_is_strict`]).
//!
//! Install it once per binary (`#[global_allocator] static A: GuardedAlloc = GuardedAlloc;`); protocol crates
//! check [`is_installed`] and warn when it is missing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Allocations of this size or more get their own `MAP_NORESERVE` mapping. Large enough that only big buffers
/// pay for a system call (glibc also maps such sizes directly), small enough to catch every absurd capacity.
pub const LARGE_ALLOC_MIN_BYTES: usize = 64 * 1024 * 1024;

/// `mmap` returns page-aligned memory; 4 KiB is the smallest page size Linux uses.
const MAP_ALIGN_MAX: usize = 4096;

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The global allocator described in the crate docs.
pub struct GuardedAlloc;

/// True once any allocation went through [`GuardedAlloc`], i.e. it is the process's global allocator.
pub fn is_installed() -> bool {
    // Any allocation at all marks it; make one so the answer does not depend on what ran before.
    drop(Box::new(0u8));
    INSTALLED.load(Ordering::Relaxed)
}

/// True when the kernel reserves memory for every mapping (`vm.overcommit_memory = 2`), which defeats
/// `MAP_NORESERVE`. Unknown (no procfs) counts as not strict.
pub fn overcommit_is_strict() -> bool {
    std::fs::read_to_string("/proc/sys/vm/overcommit_memory")
        .map(|s| s.trim() == "2")
        .unwrap_or(false)
}

fn is_large(layout: &Layout) -> bool {
    layout.size() >= LARGE_ALLOC_MIN_BYTES && layout.align() <= MAP_ALIGN_MAX
}

/// Maps `size` bytes of zeroed, lazily backed memory, or returns null.
fn map_large(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping at a kernel-chosen address touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// Records that this allocator is in use. Loads first: a store on every allocation would bounce the flag's
/// cache line between cores.
#[inline]
fn mark_installed() {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
}

// SAFETY: every block is either the system allocator's (small layouts, passed through unchanged) or one whole
// private mapping of exactly `layout.size()` bytes (large layouts); `is_large` depends only on the layout, which
// the caller passes back unchanged to `dealloc`/`realloc`, so each block returns to the allocator it came from.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        if is_large(&layout) {
            map_large(layout.size())
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        mark_installed();
        if is_large(&layout) {
            // Fresh anonymous mappings are zero-filled by the kernel.
            map_large(layout.size())
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_large(&layout) {
            libc::munmap(ptr.cast(), layout.size());
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (is_large(&layout), is_large(&new_layout)) {
            (false, false) => System.realloc(ptr, layout, new_size),
            (true, true) => {
                let p = libc::mremap(ptr.cast(), layout.size(), new_size, libc::MREMAP_MAYMOVE);
                if p == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}
