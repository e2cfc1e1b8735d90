//! The job users ([`Users`]), in a VM: every job runs as a user of its
//! own, one of [`USERS`] uids from the configured one up, unless it names
//! the key of a user (`Run.user`): jobs with one key share one user. A
//! user has a home, a `/tmp` and a `/dev/shm` of its own ([`PRIVATE`]):
//! tmpfs mounts under [`DIR`]`<uid>`, mounted afresh (so empty) whenever
//! the user goes to a new key or to a job without one, and bound over
//! those paths in a mount namespace of each of its jobs. `DIR` is root's
//! alone (0700 in the image), so a job reaches no other user's files by it.
//!
//! Which user a new key gets: one no job has, the one used longest ago,
//! users last held by a job without a key first (no one can name them
//! again). So a key keeps its user, and its files, between its jobs until
//! [`USERS`] `- MAX_JOBS` other users were needed meanwhile, or the host
//! restores the VM (`Refresh` forgets every key: a restored VM has a new
//! host, whose keys mean nothing here).

use rustix::mount::{MountFlags, UnmountFlags};

use crate::boot;
use crate::log::{Text, c_str_until_nul};
use crate::pieces;
use crate::sys::Child;

/// Users jobs run as: twice the job slots, so that a key's user is kept
/// while at least as many others come and go.
pub const USERS: usize = 32;

/// Where each user's mounts are, as `DIR<uid><path>`.
pub const DIR: &str = "/usr/lib/pid1/users/";

/// The paths a job has to itself, with the other jobs of its user; each
/// ends with its NUL, so that it is a C string and a path's last piece.
pub const PRIVATE: [&str; 3] = ["/home/user\0", "/tmp\0", "/dev/shm\0"];

/// Which key each user serves, and when it was last given out.
#[derive(Default)]
pub struct Users {
    keys: [Option<u32>; USERS],
    used: [u32; USERS],
    clock: u32,
}

/// A path or mount option, NUL-terminated.
pub type Path = Text<64>;

/// `DIR<uid><path>`: where `path` (which ends with a NUL) of user `uid`
/// is in the init's view.
pub fn path(uid: u32, path: &str) -> Path {
    Path::of(pieces![DIR, uid, path])
}

impl Users {
    // Const, for the table's static memory (`Default` is not).
    pub const fn new() -> Self {
        Self { keys: [None; USERS], used: [0; USERS], clock: 0 }
    }

    /// The uid of a job naming `key`: the key's user, or one that no job
    /// holds (bit `uid - base` of `held` says which are held), then true:
    /// its mounts are to be [`renew`]ed.
    pub fn choose(&mut self, key: Option<u32>, base: u32, held: u64) -> (u32, bool) {
        self.clock += 1;
        let mine = key.and_then(|key| self.keys.iter().position(|&k| k == Some(key)));
        // USERS exceeds the jobs there can be: one is always free.
        let i = mine
            .or_else(|| (0..USERS).filter(|&i| held >> i & 1 == 0).min_by_key(|&i| self.used[i]))
            .unwrap_or(0)
            % USERS;
        // A user without a key is the first to go again.
        self.used[i] = if key.is_some() { self.clock } else { 0 };
        if mine.is_none() {
            self.keys[i] = key;
        }
        // Less than USERS: the conversion is exact.
        #[allow(clippy::cast_possible_truncation)]
        let index = i as u32;
        (base + index, mine.is_none())
    }

    /// Forgets every key: the next job naming one gets a fresh user.
    pub fn forget(&mut self) {
        self.keys = [None; USERS];
    }
}

/// Empty mounts for user `uid`: what the last ones held is gone (lazily,
/// once no process uses it).
pub fn renew(uid: u32) {
    let options = Path::of(pieces!["mode=0700,uid=", uid, ",gid=", uid, "\0"]);
    for private in PRIVATE {
        let at = path(uid, private);
        let (Some(at), Some(options)) = (at.as_c_str(), options.as_c_str()) else { continue };
        let _ = rustix::mount::unmount(at, UnmountFlags::DETACH);
        boot::mount(c"tmpfs", at, c"tmpfs", MountFlags::NOSUID | MountFlags::NODEV, Some(options));
    }
}

/// In a job's child, as root: a mount namespace of its own in which user
/// `uid`'s mounts are bound over the [`PRIVATE`] paths.
pub fn enter(child: &Child, uid: u32) -> rustix::io::Result<()> {
    child.unshare_mounts()?;
    for private in PRIVATE {
        let from = path(uid, private);
        let too_long = rustix::io::Errno::NAMETOOLONG;
        let to = c_str_until_nul(private.as_bytes()).ok_or(too_long)?;
        rustix::mount::mount_bind(from.as_c_str().ok_or(too_long)?, to)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_keeps_its_user_and_new_ones_take_the_least_recent() {
        let mut users = Users::new();
        let free = 0;
        // Anonymous jobs: one user after another is renewed, the first
        // free one each time (nothing is held here).
        assert_eq!(users.choose(None, 1000, free), (1000, true));
        assert_eq!(users.choose(Some(7), 1000, free), (1000, true));
        assert_eq!(users.choose(Some(7), 1000, free), (1000, false), "the key keeps its user");
        // Another key: the least recently used user, which is not key 7's.
        assert_eq!(users.choose(Some(8), 1000, free), (1001, true));
        // A held user is never taken, whatever its age.
        let held = 1 << 2;
        assert_eq!(users.choose(None, 1000, held), (1003, true));
        // Anonymous users go first; then the oldest key.
        assert_eq!(users.choose(Some(9), 1000, free), (1002, true));
        assert_eq!(users.choose(Some(7), 1000, free), (1000, false));
        let mut taken = Vec::new();
        for key in 100..132 {
            taken.push(users.choose(Some(key), 1000, free).0);
        }
        assert_eq!(taken[..4], [1003, 1004, 1005, 1006], "unused and keyless users first");
        assert!(taken.contains(&1001) && taken.contains(&1000), "then keys 8, 9 and 7, the oldest first");
        assert_eq!(users.choose(Some(100), 1000, free), (taken[0], false));
        users.forget();
        assert!(users.choose(Some(100), 1000, free).1, "a forgotten key gets a fresh user");
    }

    #[test]
    fn paths_of_a_user() {
        assert_eq!(path(1003, "/tmp\0").as_c_str(), Some(c"/usr/lib/pid1/users/1003/tmp"));
    }
}
