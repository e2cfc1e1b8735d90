//! Snapshot templates: a VM that booted, served a warm-up job (so its page
//! cache holds the interpreter, its modules and their `.pyc`) and was paused,
//! kept as its RAM (a file) and its device state. Every later VM of the same
//! configuration maps that RAM copy-on-write and loads the device state in
//! tens of milliseconds instead of booting.
//!
//! A template lives in `<cache>/templates/<key hash>/` as `ram`, `state`
//! and `meta`. It is made in a `.build-*` directory and renamed into place,
//! so no one ever reads half of one; a lock file lets one process make it
//! while the others boot cold rather than wait or make it twice.

use std::fs;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::FlockOperation;

use crate::accel::Accel;
use crate::agent::Job;
use crate::cleanup;
use crate::error::{AgentError, StartError};
use crate::qmp::QmpError;
use crate::vm::{Console, Launch, Ram, Vm, VmConfig, qemu_args, shell_quote};

/// First line of every key; bumped when what a template holds changes.
const FORMAT: &str = "pid1 template 4";

/// How long the Python zygote may take to be ready after the init's
/// Ready (about a second under TCG).
const ZYGOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long saving the device state may take (it took 13 ms in a probe).
const SAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// The warm-up job: the modules most Python jobs import, so that their
/// `.pyc` files are in the template's page cache.
const WARM_UP: &str = "import os, sys, re, json, math, random, time, datetime, collections, itertools, \
                       functools, pathlib, subprocess, typing, dataclasses, io, string, struct, hashlib, \
                       base64, uuid, secrets, textwrap, statistics, decimal, fractions, csv\nprint('warm')";

/// Making, finding or checking a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot read {}", path.display())]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU is not on PATH ({})", .0.display())]
    NoQemu(PathBuf),
    #[error("cannot write the template directory {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the template VM did not start")]
    Boot(#[source] Box<StartError>),
    #[error("the warm-up job failed")]
    WarmUp(#[source] AgentError),
    #[error("the warm-up job exited with {0}")]
    WarmUpExit(i32),
    #[error("the Python zygote was not ready in time")]
    NoZygote,
    #[error("QEMU's monitor failed to {step}")]
    Qmp {
        step: &'static str,
        #[source]
        source: QmpError,
    },
}

/// One configuration's template, whether it exists yet or not.
pub struct Template {
    /// `<cache>/templates`.
    root: PathBuf,
    /// The key's hash: the directory's name.
    name: String,
    /// Everything the template depends on, as text.
    key: String,
}

impl Template {
    /// The template of VMs started from `config` with `accel`.
    pub fn locate(config: &VmConfig, accel: Accel) -> Result<Template, TemplateError> {
        let key = key(config, accel)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let name = format!("{:016x}", hasher.finish());
        Ok(Template { root: config.cache_dir.join("templates"), name, key })
    }

    pub fn dir(&self) -> PathBuf {
        self.root.join(&self.name)
    }

    pub fn ram(&self) -> PathBuf {
        self.dir().join("ram")
    }

    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }

    /// Whether a whole, matching template is there; why not otherwise.
    pub fn check(&self, config: &VmConfig) -> Result<(), String> {
        let meta = fs::read_to_string(self.dir().join("meta")).map_err(|e| format!("no template ({e})"))?;
        let (key, sizes) = meta.split_once("\n--\n").ok_or("its meta file is damaged")?;
        if key != self.key {
            return Err("it was made for other inputs".into());
        }
        let size = |path: PathBuf| fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let want = format!("ram {}\nstate {}\n", size(self.ram()), size(self.state()));
        if sizes != want || size(self.ram()) != u64::from(config.memory_mb) << 20 || size(self.state()) == 0 {
            return Err("its files are truncated or damaged".into());
        }
        Ok(())
    }

    /// Makes the template unless another process is making it (then
    /// `Ok(false)`: the caller should not wait for it).
    pub fn build(&self, config: &VmConfig, accel: Accel) -> Result<bool, TemplateError> {
        let write = |path: &Path| {
            let path = path.to_owned();
            move |source| TemplateError::Write { path, source }
        };
        fs::create_dir_all(&self.root).map_err(write(&self.root))?;
        let lock_path = self.root.join(format!("{}.lock", self.name));
        let lock = fs::File::create(&lock_path).map_err(write(&lock_path))?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(TemplateError::Lock { path: lock_path, source: e.into() }),
        }
        if self.check(config).is_ok() {
            // Made by another process while this one waited for the lock.
            return Ok(true);
        }
        sweep_abandoned_builds(&self.root);
        sweep_stale_templates(&self.root);
        let _ = fs::remove_dir_all(self.dir());
        let building = self.root.join(format!(".build-{}-{}", self.name, std::process::id()));
        fs::create_dir(&building).map_err(write(&building))?;
        let _cleanup = cleanup::path(building.clone());
        let result = self.make(config, accel, &building);
        if result.is_ok() {
            fs::rename(&building, self.dir()).map_err(write(&self.dir()))?;
        } else {
            let _ = fs::remove_dir_all(&building);
        }
        result.map(|()| true)
    }

    /// Boots, warms up, pauses and saves into `building`.
    fn make(&self, config: &VmConfig, accel: Accel, building: &Path) -> Result<(), TemplateError> {
        let ram = building.join("ram");
        let state = building.join("state");
        let ram_file = Ram::File { path: &ram, shared: true };
        let mut vm = Vm::launch(config, accel, config.boot_timeout, ram_file)
            .map_err(|e| TemplateError::Boot(Box::new(e)))?;
        let warm = vm.agent().run(&Job::python(WARM_UP), |_, _| {}).map_err(TemplateError::WarmUp)?;
        if warm.code() != 0 {
            return Err(TemplateError::WarmUpExit(warm.code()));
        }
        let shell = vm.agent().run(&Job::shell(":"), |_, _| {}).map_err(TemplateError::WarmUp)?;
        if shell.code() != 0 {
            return Err(TemplateError::WarmUpExit(shell.code()));
        }
        // The zygote is up (a template without one would restore VMs
        // whose first Python jobs pay for a fresh interpreter), and the
        // guest is idle: every job reaped, every event read.
        let deadline = Instant::now() + ZYGOTE_TIMEOUT;
        while !vm.agent().ping().map_err(TemplateError::WarmUp)?.zygote {
            if Instant::now() > deadline {
                return Err(TemplateError::NoZygote);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let qmp = vm.qmp.as_mut().expect("a template VM has QMP");
        let step = |step| move |source| TemplateError::Qmp { step, source };
        qmp.execute("stop", serde_json::json!({})).map_err(step("pause the VM"))?;
        qmp.ignore_shared_ram().map_err(step("set x-ignore-shared"))?;
        let uri = format!("exec:cat > {}", shell_quote(&state));
        qmp.execute("migrate", serde_json::json!({ "uri": uri })).map_err(step("start saving"))?;
        qmp.wait_migration(Instant::now() + SAVE_TIMEOUT).map_err(step("save the device state"))?;
        vm.kill();
        let size = |path: &Path| fs::metadata(path).map(|m| m.len()).map_err(write_error(path));
        let meta = format!("{}\n--\nram {}\nstate {}\n", self.key, size(&ram)?, size(&state)?);
        let meta_path = building.join("meta");
        fs::write(&meta_path, meta).map_err(write_error(&meta_path))
    }
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_owned();
    move |source| TemplateError::Write { path, source }
}

/// Removes the `.build-*` directories of processes that died mid-build
/// (killed without a chance to clean up).
fn sweep_abandoned_builds(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(".build-").and_then(|rest| rest.rsplit('-').next()) else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The key: every input that makes a template valid. Files are named by
/// their real path and identified by size, times and inode: any write to a
/// file changes its ctime, so a changed kernel, rootfs (which holds the
/// init) or QEMU never matches an old key, without hashing 60 MB per VM.
fn key(config: &VmConfig, accel: Accel) -> Result<String, TemplateError> {
    let qemu = find_in_path(&config.qemu).ok_or_else(|| TemplateError::NoQemu(config.qemu.clone()))?;
    let mut key = format!("{FORMAT}\n");
    for (what, path) in [("qemu", &qemu), ("kernel", &config.kernel), ("rootfs", &config.rootfs)] {
        let input = |source| TemplateError::Input { path: path.clone(), source };
        let real = fs::canonicalize(path).map_err(input)?;
        let identity = file_identity(&real).map_err(input)?;
        key.push_str(&format!("{what} {} {identity}\n", real.display()));
    }
    // The machine exactly as QEMU is told, with per-VM paths left out.
    let cmdline = crate::vm::kernel_cmdline_for(config, accel);
    let launch = Launch {
        cmdline: &cmdline,
        agent: Path::new("AGENT"),
        console: Console::File(Path::new("CONSOLE")),
        ram: Ram::File { path: Path::new("RAM"), shared: true },
        qmp: Some(Path::new("QMP")),
        incoming: false,
    };
    for arg in qemu_args(config, accel, &launch) {
        key.push_str(&arg);
        key.push('\n');
    }
    Ok(key)
}

/// What identifies a file's content without reading it: any write changes
/// its ctime.
fn file_identity(path: &Path) -> std::io::Result<String> {
    let m = fs::metadata(path)?;
    Ok(format!(
        "size={} mtime={}.{} ctime={}.{} ino={}",
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
        m.ino()
    ))
}

/// Removes the templates whose input files changed or are gone, or that an
/// older vmhost made: no configuration can restore them again (a rootfs
/// rebuilt, a kernel upgraded), and each holds tens of MiB.
fn sweep_stale_templates(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let Ok(meta) = fs::read_to_string(entry.path().join("meta")) else { continue };
        // `WHAT PATH size=… mtime=… ctime=… ino=…`, the path possibly with
        // spaces: split from both ends.
        let made_by_another_format = meta.lines().next() != Some(FORMAT);
        let stale = made_by_another_format
            || meta.lines().skip(1).take(3).any(|line| {
                let fields: Vec<&str> = line.rsplitn(5, ' ').collect();
                let [ino, ctime, mtime, size, named] = fields[..] else { return true };
                let Some((_, path)) = named.split_once(' ') else { return true };
                let identity = format!("{size} {mtime} {ctime} {ino}");
                file_identity(Path::new(path)).map_or(true, |now| now != identity)
            });
        if stale {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// `program` as the shell would find it.
fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// Restores a VM from `config`'s template, making the template first if
/// there is none; why not, in one line, when that cannot be done.
pub(crate) fn restore_or_build(config: &VmConfig, accel: Accel) -> Result<Vm, String> {
    let template =
        Template::locate(config, accel).map_err(|e| format!("no snapshot template: {}", chain(&e)))?;
    if let Err(why) = template.check(config) {
        if template.dir().join("meta").exists() {
            // Damaged (or made by other inputs under a colliding name): not
            // to be trusted, nor to be rebuilt while this caller waits.
            let _ = fs::remove_dir_all(template.dir());
            return Err(format!(
                "the snapshot template was unusable ({why}); removed, made again on the next run"
            ));
        }
        match template.build(config, accel) {
            Ok(true) => {}
            Ok(false) => return Err("another process is making the snapshot template".into()),
            Err(e) => return Err(format!("cannot make the snapshot template: {}", chain(&e))),
        }
    }
    Vm::restore(config, accel, &template.ram(), &template.state()).map_err(|e| {
        // A template that does not restore is made again on the next run.
        let _ = fs::remove_dir_all(template.dir());
        format!("cannot restore the snapshot template ({}); removed, made again on the next run", chain(&e))
    })
}

/// An error and its causes on one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let line = e.to_string();
        // A cause's first line only: console tails stay in the full error.
        let first = line.lines().next().unwrap_or_default();
        if !text.ends_with(first) {
            text = format!("{text}: {first}");
        }
        cause = e.source();
    }
    text.lines().next().unwrap_or_default().to_owned()
}

/// A template on disk.
#[derive(Debug, Clone)]
pub struct Status {
    pub dir: PathBuf,
    /// Bytes the files take on disk (the RAM file is sparse).
    pub disk_bytes: u64,
    /// Guest RAM size.
    pub ram_bytes: u64,
    pub created: Option<SystemTime>,
    /// Made for the configuration asked about, and whole.
    pub current: bool,
}

/// Every template in `config`'s cache; `current` marks the one `config`
/// with `accel` would restore.
pub fn list(config: &VmConfig, accel: Accel) -> std::io::Result<Vec<Status>> {
    let current = Template::locate(config, accel).ok().filter(|t| t.check(config).is_ok()).map(|t| t.dir());
    let root = config.cache_dir.join("templates");
    let mut all = Vec::new();
    let entries = match fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(all),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.is_dir() || entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let disk_bytes = ["ram", "state", "meta"]
            .iter()
            .filter_map(|f| fs::metadata(dir.join(f)).ok())
            .map(|m| m.blocks() * 512)
            .sum();
        let ram = fs::metadata(dir.join("ram")).ok();
        all.push(Status {
            current: current.as_ref() == Some(&dir),
            disk_bytes,
            ram_bytes: ram.as_ref().map_or(0, |m| m.len()),
            created: fs::metadata(dir.join("meta")).and_then(|m| m.modified()).ok(),
            dir,
        });
    }
    all.sort_by(|a, b| b.current.cmp(&a.current).then(a.dir.cmp(&b.dir)));
    Ok(all)
}

/// Removes every template (and build leftover) in `cache`; how many
/// templates there were.
pub fn clear(cache: &Path) -> std::io::Result<usize> {
    let root = cache.join("templates");
    let count = match fs::read_dir(&root) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
            .count(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    fs::remove_dir_all(&root)?;
    Ok(count)
}
