//! What a C runtime would give a static binary, and the init has no libc for:
//! the entry point `_start`, the arguments and environment on the initial
//! stack, and the memory functions the compiler emits calls to.
//!
//! # Safety
//!
//! This module reads the initial process stack through raw pointers and
//! defines the `mem*` symbols in assembly; each block states what it relies
//! on.
#![allow(unsafe_code)]

#[cfg(not(any(test, fuzzing)))]
use core::arch::asm;
#[cfg(not(any(test, fuzzing)))]
use core::arch::naked_asm;
use core::ffi::CStr;

/// The kernel jumps here with the stack pointer at `argc`.
///
/// # Safety
///
/// Only the kernel calls this, once, with the initial process stack.
#[cfg(not(any(test, fuzzing)))]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _start() -> ! {
    naked_asm!(
        "xor ebp, ebp",  // no caller frame: the outermost frame pointer is 0
        "mov rdi, rsp",  // first argument: the address of argc
        "and rsp, -16",  // the ABI wants a 16-byte aligned stack at a call
        "call {entry}",  // never returns
        "ud2",
        entry = sym entry,
    )
}

/// Turns the initial stack into the argument list and runs the init.
#[cfg(not(any(test, fuzzing)))]
extern "C" fn entry(stack: *const usize) -> ! {
    debug_assert!(!stack.is_null());
    // SAFETY: the kernel puts argc at the initial stack pointer, followed by
    // argc pointers to NUL-terminated strings that live as long as the process.
    let args = unsafe {
        let argc = *stack;
        let argv = stack.add(1).cast::<*const core::ffi::c_char>();
        Args { argv, argc, next: 1 }
    };
    crate::main(args)
}

/// The command-line arguments, program name skipped.
pub struct Args {
    argv: *const *const core::ffi::c_char,
    argc: usize,
    next: usize,
}

impl Args {
    /// The environment strings (`NAME=value`) that follow the arguments on
    /// the initial stack. The kernel puts its command line's `name=value`
    /// parameters there, which is how a VM passes settings to its init.
    pub fn environ(&self) -> Environ {
        // SAFETY: envp starts right after argv's terminating null pointer,
        // at argv + argc + 1 (see `entry`).
        Environ { next: unsafe { self.argv.add(self.argc + 1) } }
    }
}

impl Iterator for Args {
    type Item = &'static CStr;

    fn next(&mut self) -> Option<&'static CStr> {
        if self.next >= self.argc {
            return None;
        }
        // SAFETY: `next < argc`, and argv[0..argc] are valid C strings that
        // live for the whole process (see `entry`).
        let arg = unsafe { CStr::from_ptr(*self.argv.add(self.next)) };
        self.next += 1;
        Some(arg)
    }
}

/// Iterator over the initial environment.
pub struct Environ {
    next: *const *const core::ffi::c_char,
}

impl Iterator for Environ {
    type Item = &'static CStr;

    fn next(&mut self) -> Option<&'static CStr> {
        // SAFETY: envp is an array of C string pointers ended by a null
        // pointer; `next` never moves past that null.
        unsafe {
            let ptr = *self.next;
            if ptr.is_null() {
                return None;
            }
            self.next = self.next.add(1);
            Some(CStr::from_ptr(ptr))
        }
    }
}

// The compiler lowers copies, fills and comparisons to these symbols, which a
// libc would provide. String instructions are short and fast on every x86_64
// with ERMS; the comparisons use volatile loads so that the optimiser cannot
// turn the loops back into calls to the functions being defined.

/// # Safety
///
/// `dst` and `src` valid for `n` bytes and not overlapping.
#[cfg(not(any(test, fuzzing)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller gives valid, disjoint ranges; the direction flag is
    // clear as the ABI requires, so movsb copies forwards.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
///
/// `dst` and `src` valid for `n` bytes; they may overlap.
#[cfg(not(any(test, fuzzing)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: dst is before src or past its end: a forward copy never
        // reads a byte it already overwrote.
        unsafe { memcpy(dst, src, n) };
    } else {
        // SAFETY: dst overlaps the tail of src: copy backwards from the last
        // byte with the direction flag set, then clear it as the ABI requires.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rcx") n => _, inout("rdi") dst.add(n - 1) => _,
                 inout("rsi") src.add(n - 1) => _, options(nostack));
        }
    }
    dst
}

/// # Safety
///
/// `dst` valid for `n` bytes. As in C, the fill is `c` converted to a byte.
#[cfg(not(any(test, fuzzing)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller gives a valid range; the direction flag is clear.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c.to_le_bytes()[0],
             options(nostack, preserves_flags));
    }
    dst
}

/// # Safety
///
/// `a` and `b` valid for `n` bytes.
#[cfg(not(any(test, fuzzing)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n` and both ranges are valid for `n` bytes.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
///
/// `a` and `b` valid for `n` bytes.
#[cfg(not(any(test, fuzzing)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// # Safety
///
/// `s` points to a NUL-terminated string.
#[cfg(not(any(test, fuzzing)))]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the string is terminated, so every byte up to the NUL is valid.
    while unsafe { s.add(n).read_volatile() } != 0 {
        n += 1;
    }
    n
}
