//! Job code that checks what PID 1 leaves behind, run on the init outside
//! a VM and in VMs alike.

/// A Python job that counts zombies whose parent is PID 1, polling until
/// there are none (or 5 s pass), and prints `ZOMBIE_COUNT:<n>`.
pub const ZOMBIE_SCAN: &str = r#"
import os, time
def zombies():
    n = 0
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            fields = dict(l.split(':', 1) for l in open(f'/proc/{p}/status') if ':' in l)
        except OSError:
            continue
        if fields['State'].strip().startswith('Z') and fields['PPid'].strip() == '1':
            n += 1
    return n
for _ in range(50):
    n = zombies()
    if n == 0:
        break
    time.sleep(0.1)
print(f'ZOMBIE_COUNT:{n}')
"#;

/// A Python job that lists the processes of the job user other than
/// itself (by `comm`), polling until there are none (or 5 s pass): a killed
/// process may still be on its way out when the next job starts.
pub const LEFTOVERS: &str = r#"
import os, time
def left():
    found = []
    for p in os.listdir('/proc'):
        try:
            if p.isdigit() and int(p) != os.getpid() and os.stat(f'/proc/{p}').st_uid == os.getuid():
                found.append(open(f'/proc/{p}/comm').read().strip())
        except OSError:
            pass
    return found
for _ in range(50):
    if not left():
        break
    time.sleep(0.1)
print(left())
"#;

/// A Python job that double-forks `n` orphans as fast as it can.
pub fn double_forks(n: usize) -> String {
    format!(
        r#"
import os
for _ in range({n}):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            os._exit(0)
        os._exit(0)
    os.waitpid(pid, 0)
print('SPAWNED:{n}')
"#
    )
}
