//! What /proc says of a process (proc(5)): its figures, its children, and
//! the processes that name a path.

use std::fs;

/// Clock ticks per second in /proc's CPU times: USER_HZ, which the kernel
/// fixes at 100 for user space on x86.
pub const USER_HZ: u64 = 100;

/// What one process's /proc/PID/stat says, times in clock ticks.
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    /// utime + stime: its own threads.
    pub cpu: u64,
    /// cutime + cstime: its children that it has waited for.
    pub reaped: u64,
    /// When it started, in ticks since boot.
    pub start: u64,
}

pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// One thread's figures, from /proc/PID/task/TID/stat (the same fields).
pub fn stat_of(pid: i32, tid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted from after its last ')', where field 3 is.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        cpu: field(14)? + field(15)?,
        reaped: field(16)? + field(17)?,
        start: field(22)?,
    })
}

fn pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()).collect()
}

/// The live children of `parent`.
pub fn children(parent: i32) -> Vec<i32> {
    pids().into_iter().filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent)).collect()
}

/// Processes whose command line mentions `text`: a QEMU started for a VM
/// names its directory under the service's TMPDIR.
pub fn processes_naming(text: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| String::from_utf8_lossy(&line).contains(text))
        })
        .collect()
}
