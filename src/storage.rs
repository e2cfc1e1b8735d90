//! The init's big buffers, in static memory: the send queue, the frame being
//! received, the read buffers and the job slots' environment blocks. They
//! take the whole life of the process, so they live in `.bss` (zero-filled
//! at exec, no bytes in the binary, no copies on the stack) and are handed
//! out once, as `&'static mut`.
//!
//! # Safety
//!
//! [`TakeOnce`] gives out its value at most once, decided by an atomic swap:
//! one `&mut` ever exists, whichever thread asks.
#![allow(unsafe_code)]

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A value in static memory that one caller may take, mutably, for the rest
/// of the program.
pub struct TakeOnce<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the value is reachable only through `take`, which hands out one
// `&mut` in the whole life of the program; sending that to another thread
// is sound when `T` is `Send`.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    pub const fn new(value: T) -> Self {
        Self { taken: AtomicBool::new(false), value: UnsafeCell::new(value) }
    }

    /// The value, the first time; `None` ever after.
    // A `&mut` from a shared `&'static self` is the point: the swap makes it
    // the only one.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the swap returned false once only: no other reference to
        // the value exists or will ever exist.
        Some(unsafe { &mut *self.value.get() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_once() {
        static CELL: TakeOnce<[u8; 4]> = TakeOnce::new([0; 4]);
        let first = CELL.take().unwrap();
        first[0] = 7;
        assert!(CELL.take().is_none());
        assert_eq!(first[0], 7);
    }
}
