//! The records on the pipes between the init and the Python zygote
//! (`rootfs/zygote.py`), as `proto/ZYGOTE.md` writes them down: a
//! [`Request`] for a job's leader, a [`Reply`] saying the zygote is ready
//! or which process it forked. Words are u32 in native byte order (both
//! ends run on one machine). No I/O here: the golden tests pin the bytes.

use rustix::process::Pid;

/// Most bytes one request may take: `PIPE_BUF`, so that it is written
/// whole or not at all. A job whose environment does not fit takes the
/// exec path.
pub const PIPE_BUF: usize = 4096;

/// A request's header: nine words, before the environment block.
pub const HEADER: usize = 9 * 4;

/// A reply: kind, job, pid.
pub const REPLY: usize = 3 * 4;

/// A reply's first word: what it says.
pub mod kind {
    /// Initialised, taking requests; job and pid are 0.
    pub const READY: u32 = 0;
    /// Forked the job's leader, whose pid follows.
    pub const SPAWNED: u32 = 1;
    /// Could not open the job's descriptors or fork; pid is 0.
    pub const FAILED: u32 = 2;
}

/// What the zygote needs to fork a job's leader. The descriptors are the
/// init's, which the leader opens through `/proc/<init>/fd/N`.
pub struct Request<'a> {
    pub job: u32,
    pub code: u32,
    pub stdout: u32,
    pub stderr: u32,
    /// The block's last string is the working directory.
    pub has_cwd: bool,
    /// The job user, which the leader drops to.
    pub uid: u32,
    /// The read end of the stdin pipe; 0: /dev/null (the init's own
    /// descriptor 0 is never a job's).
    pub stdin: u32,
    /// The job's cgroup directory, which the leader starts in; 0: none.
    pub cgroup: u32,
    /// NUL-terminated `NAME=value` strings (then the cwd), back to back.
    pub env: &'a [u8],
}

impl Request<'_> {
    /// The record, in `out`: its length, or `None` if it would not fit in
    /// one `PIPE_BUF` write.
    pub fn encode(&self, out: &mut [u8; PIPE_BUF]) -> Option<usize> {
        let size = HEADER + self.env.len();
        out.get_mut(HEADER..size)?.copy_from_slice(self.env);
        // At most PIPE_BUF: the length fits a u32.
        let length = u32::try_from(self.env.len()).ok()?;
        let header = [
            length,
            self.job,
            self.code,
            self.stdout,
            self.stderr,
            u32::from(self.has_cwd),
            self.uid,
            self.stdin,
            self.cgroup,
        ];
        for (slot, value) in out.chunks_exact_mut(4).zip(header) {
            slot.copy_from_slice(&value.to_ne_bytes());
        }
        Some(size)
    }
}

/// What the zygote said.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// It is initialised and takes requests.
    Ready,
    /// It forked `pid` as the leader of `job`, now the init's child.
    Spawned { job: u32, pid: Pid },
    /// It could not fork for `job` (also what a kind it never sends, or a
    /// `SPAWNED` without a valid pid, is taken for).
    Failed { job: u32 },
}

impl Reply {
    pub fn decode(record: &[u8; REPLY]) -> Reply {
        let word = |i: usize| u32::from_ne_bytes([record[i], record[i + 1], record[i + 2], record[i + 3]]);
        let (job, pid) = (word(4), i32::try_from(word(8)).ok().and_then(Pid::from_raw));
        match (word(0), pid) {
            (kind::READY, _) => Reply::Ready,
            (kind::SPAWNED, Some(pid)) => Reply::Spawned { job, pid },
            _ => Reply::Failed { job },
        }
    }
}

// The examples of proto/ZYGOTE.md, as bytes on this (little-endian)
// machine; rootfs/test_zygote_wire.py holds the zygote's side to them.
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[rustfmt::skip]
    const REQUEST: [u8; HEADER + 9] = [
        0x09, 0, 0, 0, // length
        0x01, 0, 0, 0, // job
        0x0a, 0, 0, 0, // code fd
        0x0c, 0, 0, 0, // stdout fd
        0x0e, 0, 0, 0, // stderr fd
        0x01, 0, 0, 0, // has_cwd
        0xe8, 0x03, 0, 0, // uid 1000
        0x00, 0, 0, 0, // stdin fd: none
        0x0f, 0, 0, 0, // cgroup fd
        b'A', b'=', b'1', 0, b'/', b't', b'm', b'p', 0,
    ];

    #[test]
    fn a_request_is_its_golden_bytes() {
        let request = Request {
            job: 1,
            code: 10,
            stdout: 12,
            stderr: 14,
            has_cwd: true,
            uid: 1000,
            stdin: 0,
            cgroup: 15,
            env: b"A=1\0/tmp\0",
        };
        let mut out = [0xffu8; PIPE_BUF];
        assert_eq!(request.encode(&mut out), Some(REQUEST.len()));
        assert_eq!(out[..REQUEST.len()], REQUEST);
    }

    #[test]
    fn a_request_past_pipe_buf_is_not_encoded() {
        let env = [b'x'; PIPE_BUF - HEADER + 1];
        let request = Request {
            job: 1,
            code: 3,
            stdout: 4,
            stderr: 5,
            has_cwd: false,
            uid: 0,
            stdin: 0,
            cgroup: 0,
            env: &env,
        };
        assert_eq!(request.encode(&mut [0; PIPE_BUF]), None);
        let fits = Request { env: &env[1..], ..request };
        assert_eq!(fits.encode(&mut [0; PIPE_BUF]), Some(PIPE_BUF));
    }

    fn pid(raw: i32) -> Pid {
        Pid::from_raw(raw).unwrap()
    }

    #[test]
    fn replies_decode_from_their_golden_bytes() {
        let decode = |bytes: [u8; REPLY]| Reply::decode(&bytes);
        assert_eq!(decode([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Reply::Ready);
        assert_eq!(decode([1, 0, 0, 0, 1, 0, 0, 0, 0x2a, 0, 0, 0]), Reply::Spawned { job: 1, pid: pid(42) });
        assert_eq!(decode([2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), Reply::Failed { job: 1 });
        // What the zygote never sends is a failure of the job it names.
        assert_eq!(decode([1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]), Reply::Failed { job: 3 });
        assert_eq!(decode([1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0x80]), Reply::Failed { job: 5 });
        assert_eq!(decode([9, 0, 0, 0, 4, 0, 0, 0, 0x2a, 0, 0, 0]), Reply::Failed { job: 4 });
    }
}
