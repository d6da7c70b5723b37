//! Cache-line-aligned buffers of plain numbers: packed weights, and per-thread scratch for the
//! converted inputs.

// Used by the x86 kernels only; tested everywhere.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::cell::RefCell;

/// Types whose every bit pattern is a valid value and that have no padding, aligned to at most 64.
///
/// # Safety
/// Implementors must be plain numbers: all bit patterns valid, `size_of` dividing 64.
pub(crate) unsafe trait Plain: Copy {}
// SAFETY: plain numbers.
unsafe impl Plain for f32 {}
// SAFETY: plain numbers.
unsafe impl Plain for u16 {}
// SAFETY: plain numbers.
unsafe impl Plain for u8 {}
// SAFETY: plain numbers.
unsafe impl Plain for i8 {}
// SAFETY: plain numbers.
unsafe impl Plain for i16 {}
// SAFETY: plain numbers.
unsafe impl Plain for i32 {}

/// A zero-initialised `[T]` starting on a cache line.
///
/// The bytes come from `vec![0u8; n]`, which the allocator serves with `calloc`: a large buffer
/// is fresh zero pages from the OS, with nothing written until the packing threads fill it (a
/// `Vec` of 64-byte-aligned lines was zeroed by a `memset` on the calling thread first: 350 MB
/// for ViT-B/32's weights, one core, the other idle). The slice starts at the buffer's first
/// 64-byte boundary.
pub(crate) struct Aligned<T: Plain> {
    bytes: Vec<u8>,
    offset: usize,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Plain> Aligned<T> {
    pub(crate) fn zeroed(len: usize) -> Self {
        let size = len.saturating_mul(std::mem::size_of::<T>());
        let bytes = vec![0u8; size.saturating_add(63)];
        let offset = bytes.as_ptr().align_offset(64);
        Self {
            bytes,
            offset,
            len,
            _t: std::marker::PhantomData,
        }
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `bytes` holds offset + len · size_of::<T>() initialised (zero or since written)
        // bytes (zeroed() sized it so: offset < 64), starting at a 64-byte boundary ≥
        // align_of::<T>(), and every bit pattern is a valid T (Plain).
        unsafe {
            std::slice::from_raw_parts(self.bytes.as_ptr().add(self.offset).cast::<T>(), self.len)
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in as_slice; the &mut self borrow makes it unique.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.bytes.as_mut_ptr().add(self.offset).cast::<T>(),
                self.len,
            )
        }
    }

    /// The values of `bytes` (machine byte order) as an aligned buffer: `bytes` itself when it
    /// starts on a 64-byte boundary (a page of a mapped cache file: no copy, no fresh pages),
    /// else a copy. `None` when the length is not a whole number of values.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Option<Self> {
        let size = std::mem::size_of::<T>();
        if !bytes.len().is_multiple_of(size) {
            return None;
        }
        let len = bytes.len() / size;
        if (bytes.as_ptr() as usize).is_multiple_of(64) {
            return Some(Self {
                bytes,
                offset: 0,
                len,
                _t: std::marker::PhantomData,
            });
        }
        let mut copy = Self::zeroed(len);
        let (offset, n) = (copy.offset, bytes.len());
        copy.bytes[offset..offset + n].copy_from_slice(&bytes);
        Some(copy)
    }

    /// The values' bytes (machine byte order).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        as_bytes(self.as_slice())
    }

    fn capacity_bytes(&self) -> usize {
        self.bytes.len() - self.offset
    }
}

/// The bytes of plain values (machine byte order).
pub(crate) fn as_bytes<T: Plain>(values: &[T]) -> &[u8] {
    // SAFETY: Plain values have no padding, so all size_of_val bytes are initialised; u8 needs
    // no alignment, and the borrow keeps `values` alive and unchanged.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}

thread_local! {
    /// Each thread's scratch for the inputs it converts; grown, never shrunk.
    static SCRATCH: RefCell<Aligned<u16>> = RefCell::new(Aligned::zeroed(0));
}

/// Runs `f` with an aligned scratch slice of at least `len` values of `T` (contents unspecified:
/// whatever the thread's previous task left, or zeros), reusing the thread's buffer.
pub(crate) fn with_scratch<T: Plain, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    let bytes = len.saturating_mul(std::mem::size_of::<T>());
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.capacity_bytes() < bytes {
                *buf = Aligned::zeroed(bytes.div_ceil(2));
            }
            f(view(&mut buf, len))
        }
        // Re-entered on this thread (a task running another while it waits): a fresh buffer.
        Err(_) => f(view(&mut Aligned::zeroed(bytes.div_ceil(2)), len)),
    })
}

/// The first `len` values of `buf` as `T`s; `buf` must hold at least `len · size_of::<T>()` bytes.
fn view<T: Plain>(buf: &mut Aligned<u16>, len: usize) -> &mut [T] {
    let len = len.min(buf.capacity_bytes() / std::mem::size_of::<T>());
    // SAFETY: from the start of buf's slice (64-byte aligned ≥ align_of::<T>()), capacity_bytes()
    // ≥ len · size_of::<T>() initialised bytes follow (len is clamped to it), and any bit pattern
    // is a valid T (Plain); the &mut borrow makes the view unique.
    unsafe {
        std::slice::from_raw_parts_mut(buf.bytes.as_mut_ptr().add(buf.offset).cast::<T>(), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let a = Aligned::<f32>::zeroed(37);
        assert_eq!(a.as_slice().len(), 37);
        assert_eq!(a.as_slice().as_ptr() as usize % 64, 0);
        assert!(a.as_slice().iter().all(|&v| v == 0.0));
        let e = Aligned::<u16>::zeroed(0);
        assert!(e.as_slice().is_empty());
    }

    #[test]
    fn from_bytes_keeps_values_aligned_or_not() {
        let a = Aligned::<f32>::zeroed(0);
        drop(a);
        let values = [1.5f32, -2.0, f32::NAN, 7.0];
        let mut bytes = vec![0u8; 1];
        bytes.extend_from_slice(as_bytes(&values));
        // An unaligned start (one byte in) is copied to an aligned buffer.
        let unaligned = bytes[1..].to_vec();
        let b = Aligned::<f32>::from_bytes(unaligned).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
        assert_eq!(b.as_bytes(), as_bytes(&values));
        // An aligned Vec is taken as it is.
        let src = Aligned::<f32>::zeroed(16);
        let aligned = src.as_bytes().to_vec();
        let c = Aligned::<f32>::from_bytes(aligned).unwrap();
        assert_eq!(c.as_slice().len(), 16);
        assert_eq!(c.as_slice().as_ptr() as usize % 64, 0);
        assert!(Aligned::<f32>::from_bytes(vec![0u8; 7]).is_none());
    }

    #[test]
    fn scratch_is_reused_and_reentrant() {
        with_scratch::<f32, _>(100, |s| {
            assert_eq!(s.len(), 100);
            assert_eq!(s.as_ptr() as usize % 64, 0);
            s[99] = 1.5;
            with_scratch::<u16, _>(10, |inner| {
                assert_eq!(inner.len(), 10);
                assert_ne!(inner.as_ptr() as usize, s.as_ptr() as usize);
            });
        });
        with_scratch::<f32, _>(100, |s| assert_eq!(s[99], 1.5));
    }
}
