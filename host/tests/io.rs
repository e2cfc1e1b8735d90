//! Data into and out of a VM's jobs, as a user moves it with `vmexec`:
//! stdin streamed from a file or a pipe, files uploaded and downloaded.
//! Needs the guest image (`just image`).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{template_ready, text};
use sha2::{Digest, Sha256};

fn vmexec() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmexec"))
}

const SHA256_OF_STDIN: &str = "import sys, hashlib\nh = hashlib.sha256()\nn = 0\n\
                               while b := sys.stdin.buffer.read(1 << 20):\n    h.update(b)\n    n += len(b)\n\
                               print(n, h.hexdigest())";

#[test]
fn sixty_four_mib_of_stdin_arrive_byte_exact() {
    template_ready();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.bin");
    // Not compressible, every byte value.
    let mut data = vec![0u8; 64 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut data {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x.to_le_bytes()[4];
    }
    std::fs::write(&path, &data).unwrap();
    let out = vmexec()
        .args(["run", "--timeout", "600", "--stdin", path.to_str().unwrap(), "-c", SHA256_OF_STDIN])
        .output()
        .unwrap();
    let want = format!("{} {:x}\n", data.len(), Sha256::digest(&data));
    assert_eq!(text(&out.stdout), want, "{}", text(&out.stderr));
    assert!(out.status.success());
}

#[test]
fn stdin_from_a_pipe_and_its_misuse() {
    template_ready();
    // `--stdin -`: vmexec's own stdin, here a pipe, read as the job reads.
    let mut child = vmexec()
        .args(["run", "-l", "sh", "--stdin", "-", "-c", "while read -r line; do echo \"got $line\"; done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(b"a\nb c\n").unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "got a\ngot b c\n");

    // The code is already what vmexec's stdin holds.
    let out = vmexec().args(["run", "--stdin", "-", "-"]).stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("stdin already holds the code"), "{}", text(&out.stderr));
    // A missing file: a clear error before any VM starts.
    let out = vmexec().args(["run", "--stdin", "/nonexistent/in", "-c", "print(1)"]).output().unwrap();
    assert_eq!(out.status.code(), Some(66));
    assert!(
        text(&out.stderr).contains("cannot open the stdin file /nonexistent/in"),
        "{}",
        text(&out.stderr)
    );
}

/// 10 MiB of every byte value up, transformed by a job, down again; the
/// library's calls between jobs; every way out of the home refused; a full
/// filesystem said so.
#[test]
fn files_go_in_and_out_byte_exact() {
    let mut vm = common::restored_vm();
    let data: Vec<u8> = (0..10u32 << 20).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2]).collect();
    vm.write_file("work/in.bin", &data, 0o640).unwrap();
    let job = vmhost::Job::python(
        "import os\nd = open('work/in.bin', 'rb').read()\nopen('work/out.bin', 'wb').write(bytes(255 - b for b in d))\n\
         st = os.stat('work/in.bin')\nprint(oct(st.st_mode & 0o777), st.st_uid)",
    );
    let out = vm.agent().run(&job, |_, _| {}).unwrap();
    assert_eq!(text(&out.stdout), "0o640 1000\n", "{}", text(&out.stderr));
    let back = vm.read_file("/home/user/work/out.bin").unwrap();
    let want: Vec<u8> = data.iter().map(|b| 255 - b).collect();
    assert_eq!(format!("{:x}", Sha256::digest(&back)), format!("{:x}", Sha256::digest(&want)));

    let names: Vec<(String, String, u64)> =
        vm.list_files("work").unwrap().into_iter().map(|e| (e.name, e.kind, e.size)).collect();
    let size = data.len() as u64;
    assert_eq!(names, [("in.bin".into(), "file".into(), size), ("out.bin".into(), "file".into(), size)]);

    // A link out of the home, made by a job.
    let out = vm
        .agent()
        .run(&vmhost::Job::shell("ln -s /etc work/etc && ln -s /etc/passwd pw"), |_, _| {})
        .unwrap();
    assert_eq!(out.code(), 0);
    for (path, why) in [
        ("../../etc/passwd", "'..' is not allowed"),
        ("/etc/passwd", "outside /home/user"),
        ("work/etc/passwd", "etc is a symbolic link"),
        ("pw", "a symbolic link"),
        ("work/missing", "no such file or directory"),
    ] {
        let err = vm.read_file(path).unwrap_err().to_string();
        assert_eq!(err, why, "{path}");
    }
    let err = vm.write_file("/tmp/x", b"x", 0o644).unwrap_err().to_string();
    assert_eq!(err, "outside /home/user");
    // A full filesystem: the home (a tmpfs) filled up to its last MiB.
    let fill = "import os\nst = os.statvfs('.')\nfd = os.open('filler', os.O_WRONLY | os.O_CREAT)\n\
                os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - (1 << 20))";
    let out = vm.agent().run(&vmhost::Job::python(fill), |_, _| {}).unwrap();
    assert_eq!(out.code(), 0, "{}", text(&out.stderr));
    let err = vm.write_file("work/in.bin", &data[..4 << 20], 0o644).unwrap_err().to_string();
    assert_eq!(err, "no space left on device");
    // The file it was to replace is as it was, and nothing is left over.
    let out = vm.agent().run(&vmhost::Job::shell("rm filler && ls -A work"), |_, _| {}).unwrap();
    assert_eq!(text(&out.stdout), "etc\nin.bin\nout.bin\n", "{}", text(&out.stderr));
    // The VM is fine after all that.
    assert!(vm.read_file("work/in.bin").unwrap() == data);
    vm.shutdown();
}

#[test]
fn vmexec_uploads_and_downloads() {
    template_ready();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "abc\n").unwrap();
    let out = vmexec()
        .current_dir(dir.path())
        .args(["run", "--upload", "in.txt:in.txt", "--download", "out.txt", "--download", "in.txt:copy.txt"])
        .args(["--cwd", "/home/user/sub", "-l", "sh", "-c", "tr a-z A-Z < in.txt > out.txt && pwd"])
        .output()
        .unwrap();
    // Relative paths are the job's: in its working directory, made for it.
    assert_eq!(text(&out.stdout), "/home/user/sub\n", "{}", text(&out.stderr));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(dir.path().join("out.txt")).unwrap(), "ABC\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("copy.txt")).unwrap(), "abc\n");

    let out = vmexec()
        .current_dir(dir.path())
        .args(["run", "--download", "nothere", "-c", "pass"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot download nothere: no such file or directory"),
        "{}",
        text(&out.stderr)
    );
}
