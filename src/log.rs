//! The init's own log lines, on descriptor 2: the console in a VM, the
//! caller's stderr outside one. One line per call, never longer than
//! [`LOG_LINE`], never blocking the loop for more than one write.
//!
//! Lines, refusals and the few strings the init builds (paths, mount
//! options, cgroup files) are [`Text`]s put together from [`Piece`]s, not
//! with `core::fmt`: its machinery, and the `fmt::Arguments` each call site
//! builds, were 8.6 KB of a 51 KB init. A call site is now an array of
//! pointers to its pieces.
//!
//! # Safety
//!
//! A [`Piece`] keeps a string's or a path's pointer without its type; it is
//! made only from a `&str` or a `&CStr` that it borrows for its lifetime,
//! and read back as what it was made from. [`c_str_until_nul`] makes a
//! `CStr` of bytes it has just seen end with a NUL.
#![allow(unsafe_code)]

use core::ffi::CStr;
use core::marker::PhantomData;

use rustix::io::Errno;

use crate::error::{Os, describe_number};

/// Longest log line; longer ones are cut. Log lines are short diagnostics.
pub const LOG_LINE: usize = 192;

/// One piece of a [`Text`]: a string, a number, a path or an errno, in
/// two words. Built at every call site, so its size is code: a tagged enum
/// took three words and a tag store per piece, 750 bytes of the init.
/// `kind` is a string's length, or one of the kinds below, which no length
/// reaches (a slice holds at most `isize::MAX` bytes); `word` is the
/// string's or path's pointer, or the number.
#[derive(Clone, Copy)]
pub struct Piece<'a> {
    word: *const u8,
    kind: usize,
    borrows: PhantomData<&'a [u8]>,
}

const NUM: usize = usize::MAX;
const PATH: usize = usize::MAX - 1;
const OS: usize = usize::MAX - 2;

impl Piece<'_> {
    const fn of(word: *const u8, kind: usize) -> Self {
        Self { word, kind, borrows: PhantomData }
    }
}

impl<'a> From<&'a str> for Piece<'a> {
    fn from(text: &'a str) -> Self {
        Piece::of(text.as_ptr(), text.len())
    }
}

impl From<u64> for Piece<'_> {
    // x86_64: a usize holds a u64.
    #[allow(clippy::cast_possible_truncation)]
    fn from(n: u64) -> Self {
        Piece::of(core::ptr::without_provenance(n as usize), NUM)
    }
}

impl From<u32> for Piece<'_> {
    fn from(n: u32) -> Self {
        Piece::from(u64::from(n))
    }
}

impl From<Os> for Piece<'_> {
    fn from(os: Os) -> Self {
        Piece::of(core::ptr::without_provenance(os.0.raw_os_error().unsigned_abs() as usize), OS)
    }
}

/// Shows a path (or any C string) as text, quoted.
pub struct Path<'a>(pub &'a CStr);

impl<'a> From<Path<'a>> for Piece<'a> {
    fn from(path: Path<'a>) -> Self {
        Piece::of(path.0.as_ptr().cast(), PATH)
    }
}

/// `n` in decimal, then NULs, worked out at compile time: for a constant
/// that is written as text too (a limit in a cgroup file, an argument), so
/// that no formatting runs for it and the number and its text cannot
/// disagree. 20 digits hold any u64; at least one NUL follows.
pub const fn decimal(n: u64) -> [u8; 21] {
    let mut digits = [0u8; 21];
    let (mut len, mut left) = (1, n / 10);
    while left > 0 {
        len += 1;
        left /= 10;
    }
    let (mut rest, mut i) = (n, len);
    while i > 0 {
        i -= 1;
        // A digit: rest % 10 < 10.
        digits[i] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    digits
}

/// Where pieces are written: the free end of a [`Text`]'s buffer.
struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Cursor<'_> {
    /// Appends what fits of `bytes`.
    fn bytes(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            // A digit: n % 10 < 10.
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.bytes(&digits[start..]);
    }

    fn piece(&mut self, piece: Piece<'_>) {
        let number = piece.word.addr() as u64;
        match piece.kind {
            NUM => self.number(number),
            PATH => {
                // SAFETY: a PATH piece is made from a `&CStr` that
                // outlives it (`From<Path>`).
                let path = unsafe { CStr::from_ptr(piece.word.cast()) };
                self.bytes(b"\"");
                self.bytes(path.to_bytes());
                self.bytes(b"\"");
            }
            OS => {
                self.bytes(b"errno ");
                self.number(number);
                self.bytes(b" (");
                // Made from an errno's raw number, which fits an i32.
                #[allow(clippy::cast_possible_truncation)]
                self.bytes(describe_number(number as i32).as_bytes());
                self.bytes(b")");
            }
            len => {
                // SAFETY: any other kind is the length of the string whose
                // pointer `word` is, which outlives the piece (`From<&str>`).
                let text = unsafe { core::slice::from_raw_parts(piece.word, len) };
                self.bytes(text);
            }
        }
    }
}

/// Text in a fixed buffer of `N` bytes, put together piece by piece; what
/// does not fit is cut.
pub struct Text<const N: usize> {
    bytes: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Text<N> {
    pub const fn new() -> Self {
        Self { bytes: [0; N], len: 0 }
    }

    /// The text of `pieces`, one after the other.
    pub fn of(pieces: &[Piece<'_>]) -> Self {
        let mut text = Self::new();
        text.push(pieces);
        text
    }

    /// Appends `pieces`.
    pub fn push(&mut self, pieces: &[Piece<'_>]) -> &mut Self {
        self.len = put_all(&mut self.bytes, self.len, pieces);
        self
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// The text, up to a character that a cut (or a piece) left incomplete.
    pub fn as_str(&self) -> &str {
        let bytes = self.as_bytes();
        core::str::from_utf8(bytes)
            .unwrap_or_else(|e| core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default())
    }

    /// The text as a C string, up to its first NUL: the pieces end with
    /// `"\0"` (a text cut before it gives `None`).
    pub fn as_c_str(&self) -> Option<&CStr> {
        c_str_until_nul(self.as_bytes())
    }
}

/// `CStr::from_bytes_until_nul`, as a plain scan: core's searches a word
/// at a time, fast on long input and 460 bytes of the init, and these
/// strings are short.
pub fn c_str_until_nul(bytes: &[u8]) -> Option<&CStr> {
    let end = bytes.iter().position(|&b| b == 0)?;
    // SAFETY: `bytes[..=end]` ends with a NUL, its first.
    Some(unsafe { CStr::from_bytes_with_nul_unchecked(&bytes[..=end]) })
}

impl<const N: usize> core::ops::Deref for Text<N> {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
impl<const N: usize> core::fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
impl<const N: usize> core::fmt::Display for Text<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Writes `pieces` into `buf` from `len` on; the new length. One copy for
/// every size of [`Text`].
fn put_all(buf: &mut [u8], len: usize, pieces: &[Piece<'_>]) -> usize {
    let mut out = Cursor { buf, len };
    for &piece in pieces {
        out.piece(piece);
    }
    out.len
}

/// Writes `pid1: <pieces>\n` to descriptor 2.
pub fn line(pieces: &[Piece<'_>]) {
    let mut text = Text::<LOG_LINE>::of(&[Piece::from("pid1: ")]);
    text.push(pieces);
    // A line that does not fit is cut; the newline is always kept.
    text.len = text.len.min(LOG_LINE - 1);
    text.push(&[Piece::from("\n")]);
    let _ = rustix::io::write(crate::sys::stdio(2), text.as_bytes());
}

/// `log!("cannot mount ", Path(target), ": ", Os(e))`: one line on the
/// console, its pieces one after the other. The commonest lines, a text
/// alone or a text and an errno, are a call with no pieces to build.
#[macro_export]
macro_rules! log {
    ($text:literal) => { $crate::log::text($text) };
    ($text:literal, Os($e:expr)) => { $crate::log::os($text, $e) };
    ($($piece:expr),+ $(,)?) => { $crate::log::line($crate::pieces![$($piece),+]) };
}

/// `log!(text)`.
#[inline(never)]
pub fn text(text: &str) {
    line(&[Piece::from(text)]);
}

/// `log!(text, Os(e))`.
#[inline(never)]
pub fn os(text: &str, e: Errno) {
    line(&[Piece::from(text), Piece::from(Os(e))]);
}

/// `pieces!["j", seq, "\0"]`: the [`Piece`]s of a [`Text`].
#[macro_export]
macro_rules! pieces {
    ($($piece:expr),+ $(,)?) => { &[$($crate::log::Piece::from($piece)),+] };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_numbers_and_cuts() {
        let text =
            Text::<80>::of(pieces!["n=", 0u32, " ", u64::MAX, " ", Path(c"/a b"), " ", Os(Errno::NOENT)]);
        assert_eq!(text.as_str(), "n=0 18446744073709551615 \"/a b\" errno 2 (no such file or directory)");
        let cut = Text::<4>::of(pieces!["abcdef"]);
        assert_eq!(cut.as_str(), "abcd");
        // A character cut in two is left out.
        assert_eq!(Text::<3>::of(pieces!["aé€"]).as_str(), "aé");
        assert_eq!(Text::<2>::of(pieces!["a€"]).as_str(), "a");
        assert_eq!(Text::<8>::of(pieces!["j", 7u32, "\0"]).as_c_str(), Some(c"j7"));
        assert_eq!(Text::<2>::of(pieces!["j", 7u32, "\0"]).as_c_str(), None);
    }

    #[test]
    fn decimal_at_compile_time() {
        const TEN: [u8; 21] = decimal(10);
        assert_eq!(CStr::from_bytes_until_nul(&TEN), Ok(c"10"));
        for n in [0, 7, 9, 99, 100, 1024, u64::from(u32::MAX), u64::MAX / 10, u64::MAX] {
            let text = Text::<24>::of(pieces![n, "\0"]);
            assert_eq!(CStr::from_bytes_until_nul(&decimal(n)).ok(), text.as_c_str(), "{n}");
        }
    }
}
