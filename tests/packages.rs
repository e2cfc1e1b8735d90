//! Packages without a network, as a user and a client meet them: a
//! pure-Python and a C-extension package import and work; a set once made
//! needs no registry again; each run sees its own set only; a job cannot
//! install anything itself; every bad request is refused before any VM,
//! with its cause named and nothing written to the cache; a layer is the
//! same bytes however often it is made; a session keeps its packages; the
//! service runs, refuses and keeps a set warm; a full disk leaves nothing.
//! Needs `vmexec` (`just build`), the guest image (`just image`) and the
//! package index: for each shared set's first run, and every time for the
//! refusals only the index can tell and for the layers made from nothing.
//!
//! The CLI tests use the default cache, as a user's runs do; the two sets
//! they share are made there once, before any test looks at what the
//! cache holds (see [`sets_cached`]). The layer's own tests make theirs in
//! private caches.

use std::process::Output;
use std::sync::OnceLock;

use common::packages::{SmallDisk, UNREACHABLE_INDEX, cache_files, default_cache};
use common::service::Service;
use common::{is_root, output_with_stdin, template_ready, text, vmexec};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use vmhost::packages::{PackageOptions, prepare};

/// A pure-Python package.
const SIX: &[&str] = &["six==1.17.0"];

/// The same with a C-extension package (numpy has no dependencies, so the
/// resolved set is these two pins).
const SIX_AND_NUMPY: &[&str] = &["six==1.17.0", "numpy==2.1.3"];

/// Uses six.
const SIX_JOB: &str = "import six\nprint(six.__version__)";

/// Uses both: numpy's compiled code runs, not only its Python.
const BOTH_JOB: &str = "import numpy, six\nprint(six.__version__, int(numpy.arange(10).sum()))";

/// `-p SPEC` for each of `set`.
fn package_args(set: &[&str]) -> Vec<String> {
    set.iter().flat_map(|spec| ["-p".to_owned(), (*spec).to_owned()]).collect()
}

/// `vmexec run` with `set`'s packages, then `args`.
fn run_with(set: &[&str], args: &[&str]) -> Output {
    vmexec().arg("run").args(package_args(set)).args(args).output().expect("run vmexec")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)))
}

/// Makes sure the shared sets are in the default cache, once per test
/// process. A set being made adds files to the cache; every test waits for
/// this first, so that a refusal's check that it added none sees only its
/// own doing.
fn sets_cached() {
    static MADE: OnceLock<()> = OnceLock::new();
    MADE.get_or_init(|| {
        template_ready();
        for set in [SIX, SIX_AND_NUMPY] {
            // A job that uses nothing: what the packages do is for the
            // tests to show, each its own part. --timeout 0: numpy's first
            // install, layer and template take minutes under TCG, which is
            // no fault of the job.
            let out = run_with(set, &["--timeout", "0", "-c", "pass"]);
            assert!(out.status.success(), "{set:?}: {}", text(&out.stderr));
        }
    });
}

/// A run with six works (after a refusal: nothing was broken by it).
fn six_still_runs() {
    let out = run_with(SIX, &["-c", SIX_JOB]);
    assert_eq!((text(&out.stdout), out.status.code()), ("1.17.0\n".into(), Some(0)), "{}", text(&out.stderr));
}

// ---- packages in a run -----------------------------------------------------

#[test]
fn a_pure_python_and_a_c_extension_package_work_in_one_run() {
    sets_cached();
    let out = run_with(SIX_AND_NUMPY, &["--json", "-c", BOTH_JOB]);
    let v = json(&out);
    assert_eq!((v["stdout"].as_str(), out.status.code()), (Some("1.17.0 45\n"), Some(0)), "{v}");
    assert_eq!(v["packages"], json!(["numpy==2.1.3", "six==1.17.0"]), "the resolved set, by name");
}

#[test]
fn a_cached_set_asks_no_registry() {
    sets_cached();
    let out = vmexec()
        .arg("run")
        .args(package_args(SIX_AND_NUMPY))
        .args(["-c", BOTH_JOB])
        .envs(UNREACHABLE_INDEX)
        .output()
        .expect("run vmexec");
    assert_eq!(
        (text(&out.stdout), out.status.code()),
        ("1.17.0 45\n".into(), Some(0)),
        "{}",
        text(&out.stderr)
    );
    // The same environment does keep pip from the index: a set no cache
    // can hold (the version does not exist) is refused as unreachable,
    // not as a missing version, which only the index could tell.
    refused(&Refusal {
        what: "an uncached set with the index unreachable",
        args: &["-p", "six==99.0"],
        index: Index::Unreachable,
        code: 1,
        says: "the package index cannot be reached, and the cache does not hold what this set needs",
    });
}

/// Prints whether each of six and numpy imports.
const WHICH_IMPORT: &str = "def imports(name):\n\
                            \x20   try:\n\
                            \x20       __import__(name)\n\
                            \x20       return 'yes'\n\
                            \x20   except ImportError:\n\
                            \x20       return 'no'\n\
                            print('six', imports('six'), 'numpy', imports('numpy'))";

#[test]
fn each_run_sees_only_its_own_set() {
    sets_cached();
    for (set, sees) in
        [(SIX, "six yes numpy no\n"), (SIX_AND_NUMPY, "six yes numpy yes\n"), (&[][..], "six no numpy no\n")]
    {
        let out = run_with(set, &["-c", WHICH_IMPORT]);
        assert_eq!(text(&out.stdout), sees, "{set:?}: {}", text(&out.stderr));
    }
}

/// What a job could try to get packages of its own: pip, the network, a
/// write into the layer.
const SELF_SERVICE: &str = r#"
import importlib.util, socket, subprocess, sys
import six
print('six', six.__version__)
print('pip module:', importlib.util.find_spec('pip') is not None)
r = subprocess.run([sys.executable, '-m', 'pip', 'install', 'requests'], capture_output=True, text=True)
print('pip install:', r.returncode, 'No module named pip' in r.stderr)
s = socket.socket()
s.settimeout(10)
try:
    s.connect(('1.1.1.1', 443))
    print('connect: made')
except OSError:
    print('connect: failed')
try:
    socket.getaddrinfo('pypi.org', 443)
    print('dns: answered')
except OSError:
    print('dns: failed')
try:
    open('/opt/pid1/packages/mine.py', 'w')
    print('layer: written')
except OSError:
    print('layer: read-only')
"#;

#[test]
fn a_job_cannot_install_packages_itself() {
    sets_cached();
    let out = run_with(SIX, &["-c", SELF_SERVICE]);
    assert_eq!(
        text(&out.stdout),
        "six 1.17.0\npip module: False\npip install: 1 True\nconnect: failed\ndns: failed\nlayer: read-only\n",
        "{}",
        text(&out.stderr)
    );
}

// ---- refusals --------------------------------------------------------------

/// The index as a refused run finds it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Index {
    Reachable,
    Unreachable,
}

/// A run `vmexec` must refuse for its packages: its arguments, the exit
/// code (2: the request is at fault, 1: the host) and words the message
/// must hold.
struct Refusal {
    what: &'static str,
    args: &'static [&'static str],
    index: Index,
    code: i32,
    says: &'static str,
}

/// Runs `case` and checks the refusal: its code and message, no VM
/// started, nothing written to the cache; then a run works.
fn refused(case: &Refusal) {
    sets_cached();
    let cache = default_cache();
    let before = cache_files(&cache);
    let mut command = vmexec();
    command.args(["run", "--json"]).args(case.args).args(["-c", "print('ran')"]);
    if case.index == Index::Unreachable {
        command.envs(UNREACHABLE_INDEX);
    }
    let out = command.output().expect("run vmexec");
    let what = format!("{}: {}{}", case.what, text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(case.code), "{what}");
    let v = json(&out);
    // The packages' error alone, none of a run's fields: the set is made
    // before any VM boots, and its error returns from there.
    assert_eq!(v["error"]["kind"], "Packages", "{what}");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains(case.says)), "{what}");
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{what}");
    assert_eq!(cache_files(&cache), before, "{what}: the cache changed");
    six_still_runs();
}

#[test]
fn every_bad_request_is_refused_before_any_vm_and_leaves_the_cache_as_it_was() {
    // The premise of the no-wheel case, checked with pip alone: the index
    // has pycrypto 2.6.1, but only as a source archive.
    let scratch = tempfile::tempdir().expect("a temp dir");
    let pip = std::process::Command::new(std::env::var_os("PID1_PYTHON").unwrap_or("python3".into()))
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d"])
        .arg(scratch.path())
        .arg("pycrypto==2.6.1")
        .output()
        .expect("run pip");
    assert!(!pip.status.success(), "pycrypto 2.6.1 has a wheel now: choose another sdist-only package");
    assert!(text(&pip.stderr).contains("No matching distribution"), "{}", text(&pip.stderr));

    let cases = [
        Refusal {
            what: "an unknown package",
            args: &["-p", "pid1-no-such-package-3e9d1c"],
            index: Index::Reachable,
            code: 2,
            says: "no package `pid1-no-such-package-3e9d1c` in the package index",
        },
        Refusal {
            what: "a version that does not exist",
            args: &["-p", "six==99.0"],
            index: Index::Reachable,
            code: 2,
            says: "no version of `six==99.0` in the package index for the guest (it has: ",
        },
        Refusal {
            what: "conflicting pins",
            args: &["-p", "six==1.16.0", "-p", "six==1.17.0"],
            index: Index::Reachable,
            code: 2,
            says: "conflicting pins: six==1.16.0 and six==1.17.0",
        },
        Refusal {
            what: "a package with no wheel for the guest",
            args: &["-p", "pycrypto==2.6.1"],
            index: Index::Reachable,
            code: 2,
            says: "`pycrypto` has no binary wheel for the guest",
        },
        Refusal {
            what: "a path",
            args: &["-p", "../evil"],
            index: Index::Reachable,
            code: 2,
            says: "`../evil` is not a requirement: only names from the package index",
        },
        Refusal {
            what: "an option",
            // `=`: clap takes the value as it is, leading dashes and all.
            args: &["--package=--index-url=x"],
            index: Index::Reachable,
            code: 2,
            says: "`--index-url=x` is not a requirement: options are not requirements",
        },
        Refusal {
            what: "an environment marker",
            args: &["-p", "six; os_name==\"nt\""],
            index: Index::Reachable,
            code: 2,
            says: "environment markers are not taken",
        },
        Refusal {
            what: "an unreachable index and no cache entry",
            args: &["-p", "pid1-no-such-package-3e9d1c"],
            index: Index::Unreachable,
            code: 1,
            says: "the package index cannot be reached, and the cache does not hold what this set needs",
        },
        Refusal {
            what: "offline and not cached",
            args: &["--offline", "-p", "pid1-no-such-package-3e9d1c"],
            index: Index::Reachable,
            code: 1,
            says: "offline, and the cache does not hold: pid1-no-such-package-3e9d1c",
        },
    ];
    for case in &cases {
        refused(case);
    }
}

// ---- the layer -------------------------------------------------------------

#[test]
fn a_layer_is_the_same_bytes_when_made_twice() {
    // Two private caches, so that both are made from nothing: each its own
    // resolve, install, compile and image, in its own temporary paths.
    let made: Vec<(String, String)> = (0..2)
        .map(|_| {
            let cache = tempfile::tempdir().expect("a temp dir");
            let layer = prepare(SIX, &PackageOptions::new(cache.path()))
                .unwrap_or_else(|e| panic!("{}", vmhost::error::chain(&e)))
                .expect("a layer for a package");
            assert!(!layer.steps.set_cached && !layer.steps.layer_cached, "made, not found");
            let bytes = std::fs::read(&layer.image).expect("read the image");
            (layer.address, format!("{:x}", Sha256::digest(&bytes)))
        })
        .collect();
    assert_eq!(made[0], made[1], "the address and the image's SHA-256");
}

#[test]
fn a_full_disk_while_the_layer_is_made_leaves_nothing() {
    if !is_root() {
        eprintln!("skipped: a disk that fills (a tmpfs mount) needs root");
        return;
    }
    // six's image is 88 KiB: the disk fills while it is written.
    let disk = match SmallDisk::mount(64 << 10) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: a disk that fills cannot be mounted here ({why})");
            return;
        }
    };
    let failed = prepare(SIX, &PackageOptions::new(disk.path()));
    let message =
        failed.map(|_| ()).map_err(|e| vmhost::error::chain(&e)).expect_err("the layer fits in 64 KiB");
    // Named as a full disk, whatever mkfs.erofs said of its failed write.
    assert!(message.contains("No space left on device"), "{message}");
    assert_eq!(cache_files(disk.path()), Vec::<String>::new(), "left in the cache");
    drop(disk);
    let cache = tempfile::tempdir().expect("a temp dir");
    let layer = prepare(SIX, &PackageOptions::new(cache.path()))
        .unwrap_or_else(|e| panic!("{}", vmhost::error::chain(&e)))
        .expect("a layer for a package");
    assert!(layer.image.is_file(), "{}", layer.image.display());
}

// ---- sessions --------------------------------------------------------------

#[test]
fn a_session_keeps_its_packages_across_steps() {
    sets_cached();
    let out = output_with_stdin(
        vmexec().arg("repl").args(package_args(SIX)),
        b"import six\nx = six.__version__\nprint(x)\n",
    );
    assert_eq!((text(&out.stdout), out.status.code()), ("1.17.0\n".into(), Some(0)), "{}", text(&out.stderr));

    // Through the service: on demand, so that the session's VM is its own.
    let service = Service::unix(&["--pool", "0"]);
    let opened = service.post("/v1/sessions", &json!({ "language": "python", "packages": SIX }));
    assert_eq!(opened.status, 201, "{}", opened.text());
    let info = opened.json();
    assert_eq!(info["packages"], json!(SIX), "{info}");
    let id = info["id"].as_str().expect("a session id");
    let step = |code: &str| {
        let response = service.post(&format!("/v1/sessions/{id}/exec"), &json!({ "code": code }));
        assert_eq!(response.status, 200, "{code}: {}", response.text());
        let result = response.json();
        assert_eq!(result["exit_code"], 0, "{code}: {result}");
        result
    };
    step("import six");
    let result = step("print(six.__version__)");
    assert_eq!((result["stdout"].as_str(), &result["packages"]), (Some("1.17.0\n"), &json!(SIX)), "{result}");
    let closed = service.send("DELETE", &format!("/v1/sessions/{id}"), b"");
    assert_eq!(closed.status, 204, "{}", closed.text());
}

// ---- the service -----------------------------------------------------------

/// VMs the service has started, however each start ended.
fn vm_starts(service: &Service) -> f64 {
    service.metric("pid1_restores_total")
        + service.metric("pid1_cold_boots_total")
        + service.metric("pid1_restore_failures_total")
}

#[test]
fn the_service_runs_refuses_and_keeps_a_set_warm() {
    sets_cached();
    // No default VMs: the only warm one is the kept set's.
    let service = Service::unix(&["--pool", "0", "--pool-packages", "six==1.17.0"]);
    // The kept set's layer is found in the background; until then the
    // pool's target has no VM of it.
    service.wait_for("the kept set in the pool", || service.health()["pool"]["target"] == 1);
    service.settle();
    let result = service.run(&json!({ "code": SIX_JOB, "packages": SIX }));
    assert_eq!(
        (result["stdout"].as_str(), result["start"].as_str(), &result["packages"]),
        (Some("1.17.0\n"), Some("pooled"), &json!(SIX)),
        "{result}"
    );
    let result = service.run(&json!({ "code": BOTH_JOB, "packages": SIX_AND_NUMPY }));
    assert_eq!(
        (result["stdout"].as_str(), &result["packages"]),
        (Some("1.17.0 45\n"), &json!(["numpy==2.1.3", "six==1.17.0"])),
        "{result}"
    );

    // The refill after the pooled run is done, so any start now would be
    // the refused run's.
    service.settle();
    let starts = vm_starts(&service);
    let answer =
        service.post("/v1/runs", &json!({ "code": SIX_JOB, "packages": ["pid1-no-such-package-3e9d1c"] }));
    let error = &answer.json()["error"];
    assert_eq!(
        (answer.status, error["kind"].as_str(), error["field"].as_str()),
        (422, Some("packages"), Some("packages")),
        "{}",
        answer.text()
    );
    assert!(error["message"].as_str().is_some_and(|m| m.contains("pid1-no-such-package-3e9d1c")), "{error}");
    assert_eq!(vm_starts(&service), starts, "a VM was started for a refused set");
    let result = service.run(&json!({ "code": SIX_JOB, "packages": SIX }));
    assert_eq!((result["stdout"].as_str(), &result["packages"]), (Some("1.17.0\n"), &json!(SIX)), "{result}");

    // The CLI as the service's client sends its `-p` with the run.
    let server = service.address().to_string();
    let out = run_with(SIX, &["--server", &server, "-c", SIX_JOB]);
    assert_eq!((text(&out.stdout), out.status.code()), ("1.17.0\n".into(), Some(0)), "{}", text(&out.stderr));
    let out = run_with(&["pid1-no-such-package-3e9d1c"], &["--server", &server, "-c", SIX_JOB]);
    assert_eq!(out.status.code(), Some(2), "refused as a local run's: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains("pid1-no-such-package-3e9d1c"), "{}", text(&out.stderr));
}
