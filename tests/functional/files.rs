//! Files into and out of a VM's jobs through the library, between jobs.

use common::{restored_vm, text};
use sha2::{Digest, Sha256};

/// 10 MiB of every byte value up, transformed by a job, down again; the
/// library's calls between jobs; every way out of the home refused; a full
/// filesystem said so.
#[test]
fn files_go_in_and_out_byte_exact() {
    let mut vm = restored_vm();
    // Every job here works on the files' user: a job of its own would
    // find an empty home.
    let user = vm.agent().new_user();
    let mine = |mut job: vmhost::Job| {
        job.user = Some(user);
        job
    };
    let data: Vec<u8> = (0..10u32 << 20).map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[2]).collect();
    vm.write_file("work/in.bin", &data, 0o640).unwrap();
    let job = mine(vmhost::Job::python(
        "import os\nd = open('work/in.bin', 'rb').read()\nopen('work/out.bin', 'wb').write(bytes(255 - b for b in d))\n\
         st = os.stat('work/in.bin')\nprint(oct(st.st_mode & 0o777), st.st_uid == os.getuid())",
    ));
    let out = vm.agent().run(&job, |_, _| {}).unwrap();
    assert_eq!(text(&out.stdout), "0o640 True\n", "{}", text(&out.stderr));
    let back = vm.read_file("/home/user/work/out.bin").unwrap();
    let want: Vec<u8> = data.iter().map(|b| 255 - b).collect();
    assert_eq!(format!("{:x}", Sha256::digest(&back)), format!("{:x}", Sha256::digest(&want)));

    let names: Vec<(String, vmhost::FileKind, u64)> =
        vm.list_files("work").unwrap().into_iter().map(|e| (e.name, e.kind, e.size)).collect();
    let size = data.len() as u64;
    let file = vmhost::FileKind::File;
    assert_eq!(names, [("in.bin".into(), file, size), ("out.bin".into(), file, size)]);

    // A link out of the home, made by a job.
    let out = vm
        .agent()
        .run(&mine(vmhost::Job::shell("ln -s /etc work/etc && ln -s /etc/passwd pw")), |_, _| {})
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
    let out = vm.agent().run(&mine(vmhost::Job::python(fill)), |_, _| {}).unwrap();
    assert_eq!(out.code(), 0, "{}", text(&out.stderr));
    let err = vm.write_file("work/in.bin", &data[..4 << 20], 0o644).unwrap_err().to_string();
    assert_eq!(err, "no space left on device");
    // The file it was to replace is as it was, and nothing is left over.
    let out = vm.agent().run(&mine(vmhost::Job::shell("rm filler && ls -A work")), |_, _| {}).unwrap();
    assert_eq!(text(&out.stdout), "etc\nin.bin\nout.bin\n", "{}", text(&out.stderr));
    // The VM is fine after all that.
    assert!(vm.read_file("work/in.bin").unwrap() == data);
    vm.shutdown();
}
