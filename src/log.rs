//! The init's own log lines, on descriptor 2: the console in a VM, the
//! caller's stderr outside one. One line per call, never longer than
//! [`LOG_LINE`], never blocking the loop for more than one write.

use core::fmt::{self, Write};

/// Longest log line; longer ones are cut. Log lines are short diagnostics.
pub const LOG_LINE: usize = 192;

/// Writes `pid1: <args>\n` to descriptor 2.
pub fn line(args: fmt::Arguments<'_>) {
    let mut text = heapless::String::<LOG_LINE>::new();
    let _ = text.push_str("pid1: ");
    // A line that does not fit is cut; the newline is always kept.
    let _ = text.write_fmt(args);
    if text.len() == LOG_LINE {
        text.pop();
    }
    let _ = text.push('\n');
    let _ = rustix::io::write(crate::sys::stdio(2), text.as_bytes());
}

/// Shows a string as it is. `{}` of a `&str` links the formatter's padding
/// and alignment code (a kilobyte); the init never pads.
pub struct Text<'a>(pub &'a str);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Shows a path (or any C string) as text, quoted.
pub struct Path<'a>(pub &'a core::ffi::CStr);

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = core::str::from_utf8(self.0.to_bytes()).unwrap_or("<not UTF-8>");
        f.write_str("\"")?;
        f.write_str(text)?;
        f.write_str("\"")
    }
}

/// `log!("...", args)`: one line on the console.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}
