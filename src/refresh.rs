//! What a VM restored from a snapshot must not share with its template or
//! its siblings, set from the host's `Refresh`: the wall clock, and the
//! kernel's random state (fresh entropy credited, CRNG reseeded) so that no
//! two restored VMs draw the same random numbers.

use rustix::fd::AsFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::time::{ClockId, Timespec};

use crate::sys;

/// Sets CLOCK_REALTIME to `realtime_ns` since the epoch and feeds `entropy`
/// to the kernel; the step that failed, if one did.
pub fn apply(realtime_ns: u64, entropy: &[u8]) -> Result<(), (&'static str, Errno)> {
    let secs = i64::try_from(realtime_ns / 1_000_000_000).map_err(|_| ("clock", Errno::INVAL))?;
    // Below 10^9: the conversion is exact.
    let nanos = i64::try_from(realtime_ns % 1_000_000_000).unwrap_or(0);
    rustix::time::clock_settime(ClockId::Realtime, Timespec { tv_sec: secs, tv_nsec: nanos })
        .map_err(|e| ("clock", e))?;
    if entropy.is_empty() {
        return Err(("entropy", Errno::INVAL));
    }
    let random = rustix::fs::open(c"/dev/random", OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| ("/dev/random", e))?;
    sys::add_entropy(random.as_fd(), entropy).map_err(|e| ("entropy", e))?;
    sys::reseed_crng(random.as_fd()).map_err(|e| ("reseed", e))
}
