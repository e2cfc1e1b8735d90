//! What a job may not do: keep root, gain privileges, read its input from
//! the host, or keep the init's descriptors.

mod common;

use common::{Init, Mode, Python, is_root, text};

fn jobs_run_unprivileged_with_no_new_privs(py: Python) {
    assert!(is_root(), "run as root: the init drops to uid 1000 only when it has root to drop");
    let mut init = Init::start_on(py, Mode::Subreaper);
    let out = init.python(
        "import os, resource\n\
         print(os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n\
         print([l for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0].split())\n\
         print(resource.getrlimit(resource.RLIMIT_NPROC), resource.getrlimit(resource.RLIMIT_CORE))",
    );
    assert_eq!(text(&out.stdout), "1000 1000 1000 []\n['NoNewPrivs:', '1']\n(1024, 1024) (0, 0)\n");
    // Root's files stay root's.
    let out = init.shell("echo x > /etc/pid1-test");
    assert_ne!(out.code(), 0);
    assert!(!std::path::Path::new("/etc/pid1-test").exists());
}

fn jobs_see_only_their_standard_descriptors_and_the_code(py: Python) {
    let mut init = Init::start_on(py, Mode::Subreaper);
    let out = init.python("import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))");
    // 0-2, the code on 3, and the descriptor listdir itself opened.
    assert_eq!(text(&out.stdout), "[0, 1, 2, 3, 4]\n");
    let out = init.shell("readlink /proc/self/fd/0");
    assert_eq!(text(&out.stdout), "/dev/null\n");
}

fn jobs_get_default_signal_handling(py: Python) {
    let mut init = Init::start_on(py, Mode::Subreaper);
    // Neither the init's blocked mask nor an ignored disposition leaks in.
    let out = init.shell("grep -E '^Sig(Blk|Ign)' /proc/self/status");
    assert_eq!(text(&out.stdout), "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
}

fn each_job_is_its_own_session(py: Python) {
    let mut init = Init::start_on(py, Mode::Subreaper);
    let out = init.python("import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())");
    assert_eq!(text(&out.stdout), "True True\n");
}

both_paths!(
    jobs_run_unprivileged_with_no_new_privs,
    jobs_see_only_their_standard_descriptors_and_the_code,
    jobs_get_default_signal_handling,
    each_job_is_its_own_session,
);
