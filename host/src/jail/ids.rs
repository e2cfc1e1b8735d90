//! A uid and gid of its own for each jailed QEMU, leased from a range no
//! account uses. Distinct ids keep one QEMU from signalling another,
//! ptracing it or reading its `/proc` files (this host has no Yama to stop
//! a same-uid ptrace). A lease is an `flock` on a file named after the
//! slot, held for as long as the VM lives by the process that started its
//! QEMU; the kernel drops it with that process, SIGKILL included, which
//! also takes the QEMU (its parent-death signal).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::FlockOperation;

/// The first id handed out: 0x7000_0000, above every range systemd's
/// conventions assign (system, regular and dynamic users, and containers'
/// ranges up to 0x6fff_ffff) and below 2^31, where tools that read ids as
/// signed numbers go wrong.
pub const FIRST_ID: u32 = 0x7000_0000;

/// Ids in the range: far more VMs than one host runs at once.
pub const SLOTS: u32 = 65_536;

/// One leased id, for uid and gid alike; free again when dropped.
#[derive(Debug)]
pub struct Lease {
    id: u32,
    /// Held open: closing it releases the lock.
    _lock: File,
}

impl Lease {
    pub fn id(&self) -> u32 {
        self.id
    }
}

/// Leases the lowest free id, keeping its lock file in `dir` (created
/// 0700: only the host's root reads it). Lowest first, so the directory
/// holds as many files as VMs ever ran at once.
pub fn lease(dir: &Path) -> io::Result<Lease> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    for slot in 0..SLOTS {
        let path = dir.join(slot.to_string());
        let lock = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
        // Each open file is its own lock: a slot this process holds is
        // refused to it too.
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(Lease { id: FIRST_ID + slot, _lock: lock }),
            Err(rustix::io::Errno::WOULDBLOCK) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(format!("all {SLOTS} jail ids in {} are leased", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_live_lease_has_its_own_id_and_a_dropped_one_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = lease(dir.path()).unwrap();
        let b = lease(dir.path()).unwrap();
        assert_eq!((a.id(), b.id()), (FIRST_ID, FIRST_ID + 1));
        drop(a);
        let c = lease(dir.path()).unwrap();
        assert_eq!(c.id(), FIRST_ID, "the freed slot is the lowest");
        assert!(c.id() != 0 && c.id() < 1 << 31);
    }
}
