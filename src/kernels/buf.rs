//! Cache-line-aligned buffers of plain numbers: packed weights, and per-thread scratch for the
//! converted inputs.

// Used by the x86 kernels only; tested everywhere.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use std::cell::RefCell;

/// One 64-byte cache line; a `Vec<Line>` is 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

const ZERO_LINE: Line = Line([0; 64]);

/// Types whose every bit pattern is a valid value and that have no padding, aligned to at most 64.
///
/// # Safety
/// Implementors must be plain numbers: all bit patterns valid, `size_of` dividing 64.
pub(crate) unsafe trait Plain: Copy {}
// SAFETY: plain numbers.
unsafe impl Plain for f32 {}
// SAFETY: plain numbers.
unsafe impl Plain for u16 {}

/// A zero-initialised `[T]` starting on a cache line.
pub(crate) struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Plain> Aligned<T> {
    pub(crate) fn zeroed(len: usize) -> Self {
        let bytes = len.saturating_mul(std::mem::size_of::<T>());
        Self {
            lines: vec![ZERO_LINE; bytes.div_ceil(64)],
            len,
            _t: std::marker::PhantomData,
        }
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: `lines` holds at least len · size_of::<T>() initialised bytes (zeroed() sized
        // it so), aligned to 64 ≥ align_of::<T>(), and every bit pattern is a valid T (Plain).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in as_slice; the &mut self borrow makes it unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }

    fn capacity_bytes(&self) -> usize {
        self.lines.len() * 64
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
    // SAFETY: the buffer holds capacity_bytes() ≥ len · size_of::<T>() initialised bytes (len is
    // clamped to it), 64-byte aligned ≥ align_of::<T>(), and any bit pattern is a valid T (Plain);
    // the &mut borrow makes the view unique.
    unsafe { std::slice::from_raw_parts_mut(buf.lines.as_mut_ptr().cast::<T>(), len) }
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
