//! A global allocator that lets model weights stay in the memory-mapped checkpoint.
//!
//! Candle's CPU tensors own a `Vec`, so a tensor can only use the checkpoint's bytes in place if a
//! `Vec` may point into a file mapping. Reading the weights into fresh buffers instead costs a page
//! fault, a zeroed page and a copy for every 4 KiB: on the development machine 0.26 s for the 352 MB
//! ViT-B/32 vision tower (2.3 GB/s), against a few milliseconds to map it. That was a third of a
//! single-image call.
//!
//! [`Allocator`] is the system allocator plus a small table of mapped regions. A `Vec` built by
//! [`Mapping::f32s`] points into a region; when it is freed (or grown), the allocator recognises the
//! address, and the region is unmapped once its last `Vec` and its [`Mapping`] are gone. Nothing else
//! changes: every other pointer goes to the system allocator after two relaxed loads.
//!
//! The binary installs it (`#[global_allocator]` in `main.rs`) and then says so with
//! [`enable_in_place`], an `unsafe` call: only the program knows which allocator frees its memory,
//! and a `Vec` pointing into a mapping must never reach any other allocator's `dealloc`. Installing
//! [`Allocator`] alone changes nothing: until `enable_in_place` is called, [`mapping_available`]
//! is false and the loader reads the weights into buffers as before. Library users and unit tests
//! get that by default, including a program that wraps [`Allocator`] in an allocator of its own.
//!
//! The mapping is private (copy-on-write): nothing is ever written to the file. As with every loader
//! that maps its weights (Candle's, safetensors', llama.cpp's), truncating the file while `vlm` runs
//! is not supported.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The system allocator, aware of mapped weight regions. Install it in a binary with
/// `#[global_allocator] static ALLOC: vlm::alloc::Allocator = vlm::alloc::Allocator;`.
pub struct Allocator;

/// Set by [`enable_in_place`]: only then may `Vec`s point into a mapping, since only then are they
/// known to be freed by code that knows about mappings.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Lets [`Mapping::f32s`] hand out `Vec`s that point into mapped files (see the module docs).
///
/// # Safety
/// [`Allocator`] must be the process's global allocator (`#[global_allocator]`), or every
/// `dealloc` and `realloc` of the global allocator must reach [`Allocator`]'s, unchanged, for every
/// pointer (a wrapper that only counts or logs, say). Otherwise a `Vec` whose buffer is a file
/// mapping would be handed to an allocator that never gave it out.
pub unsafe fn enable_in_place() {
    ENABLED.store(true, Ordering::Release);
}

const SLOTS: usize = 64;

/// One mapped region. `start == 0` means the slot is free. `live` counts the `Vec`s pointing into it
/// plus one for its [`Mapping`].
struct Region {
    start: AtomicUsize,
    end: AtomicUsize,
    live: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Region = Region {
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    live: AtomicUsize::new(0),
};

static REGIONS: [Region; SLOTS] = [FREE; SLOTS];
/// Lowest start and highest end of any region ever registered: a quick test that lets almost every
/// `dealloc` skip the table. It only widens, which is safe: the table decides.
static LOW: AtomicUsize = AtomicUsize::new(usize::MAX);
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Serialises claiming and freeing slots (rare: once per weight file).
static SLOT_LOCK: Mutex<()> = Mutex::new(());

/// The slot whose region contains `addr`, if any.
fn region_of(addr: usize) -> Option<&'static Region> {
    if addr < LOW.load(Ordering::Relaxed) || addr >= HIGH.load(Ordering::Relaxed) {
        return None;
    }
    REGIONS.iter().find(|r| {
        let start = r.start.load(Ordering::Acquire);
        start != 0 && addr >= start && addr < r.end.load(Ordering::Acquire)
    })
}

/// Drops one reference to `region`; the last one unmaps it.
fn release(region: &Region) {
    if region.live.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let _guard = SLOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let start = region.start.load(Ordering::Acquire);
    let len = region.end.load(Ordering::Acquire) - start;
    // Free the slot before unmapping: once the range is unmapped the system allocator may hand out
    // addresses in it, and those must not be taken for ours.
    region.start.store(0, Ordering::Release);
    region.end.store(0, Ordering::Release);
    unmap(start, len);
}

// SAFETY: every block comes from the system allocator, which meets GlobalAlloc's contract, or
// is part of a mapped file handed out as a Vec (`Mapping::f32s`), freed only through `dealloc`
// and `realloc` below, which tell the two apart by address (`region_of`) and give each back to
// where it came from.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match region_of(ptr as usize) {
            Some(region) => {
                discard(ptr as usize, layout.size());
                release(region);
            }
            // SAFETY: not in a region, so the system allocator gave it out.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some(region) = region_of(ptr as usize) else {
            // SAFETY: not in a region, so the system allocator gave it out.
            return unsafe { System.realloc(ptr, layout, new_size) };
        };
        // A mapped Vec that grows or shrinks moves to the heap.
        // SAFETY: the caller guarantees `new_size`, with `layout`'s alignment, is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid, non-zero-sized layout (GlobalAlloc::realloc's contract).
        let new = unsafe { System.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both ranges are valid for the smaller size and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            discard(ptr as usize, layout.size());
            release(region);
        }
        new
    }
}

/// True when the program has called [`enable_in_place`] and this platform can map files.
pub fn mapping_available() -> bool {
    cfg!(unix) && ENABLED.load(Ordering::Acquire)
}

/// A whole file mapped privately (copy-on-write), registered with [`Allocator`].
pub struct Mapping {
    region: &'static Region,
    start: usize,
    len: usize,
}

impl Mapping {
    /// Maps `file`, or `None` when mapping is not available (see [`mapping_available`]), the file
    /// is empty, the table is full or the system refuses.
    pub fn new(file: &std::fs::File) -> Option<Mapping> {
        if !mapping_available() {
            return None;
        }
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len == 0 {
            return None;
        }
        let _guard = SLOT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let region = REGIONS
            .iter()
            .find(|r| r.start.load(Ordering::Acquire) == 0)?;
        let start = map(file, len)?;
        region.live.store(1, Ordering::Release);
        region.end.store(start + len, Ordering::Release);
        region.start.store(start, Ordering::Release);
        LOW.fetch_min(start, Ordering::AcqRel);
        HIGH.fetch_max(start + len, Ordering::AcqRel);
        Some(Mapping { region, start, len })
    }

    /// `count` f32 values at byte `offset` of the file, as a `Vec` that uses the mapped bytes in
    /// place. `None` when the range is outside the file or not 4-byte aligned.
    ///
    /// The values are the file's bytes as they are: the caller checks that they are stored as f32
    /// in the machine's byte order.
    ///
    /// # Safety
    /// The byte ranges of the `Vec`s alive at once must not overlap: two would alias one buffer.
    pub unsafe fn f32s(&self, offset: usize, count: usize) -> Option<Vec<f32>> {
        // SAFETY: the caller's promise; every bit pattern is a valid f32.
        unsafe { self.values(offset, count) }
    }

    /// `len` bytes at byte `offset` of the file, as a `Vec` that uses the mapped bytes in place
    /// (the packed-weight cache, `model/packs.rs`). `None` when the range is outside the file.
    ///
    /// # Safety
    /// As for [`Mapping::f32s`]: the byte ranges of the `Vec`s alive at once must not overlap.
    pub(crate) unsafe fn bytes(&self, offset: usize, len: usize) -> Option<Vec<u8>> {
        // SAFETY: the caller's promise; every bit pattern is a valid u8.
        unsafe { self.values(offset, len) }
    }

    /// `count` values of `T` at byte `offset`, in place.
    ///
    /// # Safety
    /// Every bit pattern must be a valid `T` (a plain number), and the byte ranges of the `Vec`s
    /// alive at once must not overlap.
    unsafe fn values<T>(&self, offset: usize, count: usize) -> Option<Vec<T>> {
        let size = count.checked_mul(std::mem::size_of::<T>())?;
        if count == 0 || offset.checked_add(size)? > self.len {
            return None;
        }
        let addr = self.start + offset;
        if !addr.is_multiple_of(std::mem::align_of::<T>()) {
            return None;
        }
        populate(addr, size);
        self.region.live.fetch_add(1, Ordering::AcqRel);
        // SAFETY: the range lies inside a live private mapping that stays mapped while this Vec
        // holds its reference; it is readable and writable (copy-on-write), aligned for T, no
        // other live Vec covers it (the caller's promise), and every bit pattern is a valid T
        // (the caller's promise). The global allocator is `Allocator` (the promise of
        // `enable_in_place`, which `mapping_available` checks), which recognises the address
        // when the Vec frees or grows it and drops the reference instead of handing the pointer
        // to the system allocator.
        Some(unsafe { Vec::from_raw_parts(addr as *mut T, count, count) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        release(self.region);
    }
}

#[cfg(unix)]
fn map(file: &std::fs::File, len: usize) -> Option<usize> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: a fresh private mapping of an open file; the kernel picks the address.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    (ptr != libc::MAP_FAILED && !ptr.is_null()).then_some(ptr as usize)
}

#[cfg(not(unix))]
fn map(_: &std::fs::File, _: usize) -> Option<usize> {
    None
}

#[cfg(unix)]
fn unmap(start: usize, len: usize) {
    // SAFETY: exactly a range `map` returned, no longer referenced by any Vec or Mapping.
    unsafe {
        libc::munmap(start as *mut libc::c_void, len);
    }
}

#[cfg(not(unix))]
fn unmap(_: usize, _: usize) {}

/// Maps the page-cache pages of a range in one call instead of one fault per 64 KiB at first use
/// (`MADV_POPULATE_READ`, Linux 5.14+; older kernels refuse it and the pages fault in as used).
#[cfg(target_os = "linux")]
fn populate(addr: usize, size: usize) {
    const MADV_POPULATE_READ: libc::c_int = 22;
    let page = page_size();
    let start = addr / page * page;
    // SAFETY: advice only, on a range inside our mapping (rounded down to its page).
    unsafe {
        libc::madvise(
            start as *mut libc::c_void,
            addr + size - start,
            MADV_POPULATE_READ,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn populate(_: usize, _: usize) {}

#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Gives back the pages wholly inside a freed tensor's range while the rest of its file stays
/// mapped. The model builder turns some tensors into new ones (q, k and v into one matrix, for
/// instance) and drops the originals; without this their pages would stay resident until the whole
/// mapping goes (measured: +96 MB for ViT-B/32). Pages shared with a neighbouring tensor are kept.
#[cfg(unix)]
fn discard(addr: usize, size: usize) {
    let page = page_size();
    let start = addr.div_ceil(page) * page;
    let end = (addr + size) / page * page;
    if end > start {
        // SAFETY: the pages lie inside our private mapping and no live Vec refers to them (each
        // Vec's range is its own, and shared edge pages are excluded); if touched again they would
        // read the file's bytes afresh.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
        }
    }
}

#[cfg(not(unix))]
fn discard(_: usize, _: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unit tests never call `enable_in_place`: mapping must then be off, even after
    /// allocations through `Allocator` (before, the first one turned it on, which a wrapping
    /// allocator's would too).
    #[test]
    fn nothing_is_mapped_until_the_program_enables_it() {
        let layout = Layout::from_size_align(64, 8).unwrap();
        // SAFETY: a valid non-zero layout; the pointer is freed with the same layout.
        unsafe {
            let p = Allocator.alloc(layout);
            assert!(!p.is_null());
            Allocator.dealloc(p, layout);
        }
        assert!(!mapping_available());
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), [0u8; 64]).unwrap();
        assert!(Mapping::new(f.as_file()).is_none());
    }
}
