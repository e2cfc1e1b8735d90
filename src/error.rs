//! Errors as the init reports them: an errno as text, for log lines and for
//! the `Error` events a host reads.

use rustix::io::Errno;

/// The text of errnos 1 to 40, one per line in errno order, as `strerror`
/// gives them; an empty line is an errno the init never meets. One string
/// and a scan cost less binary than a `match` with a string per arm.
const TEXT: &str = "operation not permitted
no such file or directory
no such process
interrupted system call
input/output error

argument list too long
exec format error
bad file descriptor
no child processes
resource temporarily unavailable
cannot allocate memory
permission denied


device or resource busy
file exists

no such device
not a directory
is a directory
invalid argument
too many open files in system
too many open files
inappropriate ioctl for device
text file busy

no space left on device

read-only file system

broken pipe



file name too long

function not implemented
directory not empty
too many levels of symbolic links";

/// A short description of an errno.
pub fn describe(e: Errno) -> &'static str {
    describe_number(e.raw_os_error())
}

/// [`describe`] by number.
pub fn describe_number(wanted: i32) -> &'static str {
    let mut number = 1;
    let mut start = 0;
    for (i, byte) in TEXT.bytes().chain(core::iter::once(b'\n')).enumerate() {
        if byte != b'\n' {
            continue;
        }
        if number == wanted && i > start {
            return TEXT.get(start..i).unwrap_or("system error");
        }
        number += 1;
        start = i + 1;
    }
    "system error"
}

/// Shows an errno as `errno N (description)` in a log line (a
/// piece of text).
pub struct Os(pub Errno);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_text_in_errno_order() {
        assert_eq!(describe(Errno::PERM), "operation not permitted");
        assert_eq!(describe(Errno::NOENT), "no such file or directory");
        assert_eq!(describe(Errno::INVAL), "invalid argument");
        assert_eq!(describe(Errno::MFILE), "too many open files");
        assert_eq!(describe(Errno::NOSPC), "no space left on device");
        assert_eq!(describe(Errno::PIPE), "broken pipe");
        assert_eq!(describe(Errno::LOOP), "too many levels of symbolic links");
        assert_eq!(describe(Errno::NXIO), "system error");
        assert_eq!(describe(Errno::NOTSUP), "system error");
    }
}
