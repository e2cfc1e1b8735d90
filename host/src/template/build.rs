//! Making a template: boot a VM whose RAM is a shared file, warm it up,
//! pause it and save its device state, in a `.build-*` directory renamed
//! into place; and sweeping what earlier builds left.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::FlockOperation;

use super::key;
use super::store::{Template, meta_text};
use crate::accel::Accel;
use crate::agent::Job;
use crate::cleanup;
use crate::config::VmConfig;
use crate::error::TemplateError;
use crate::qemu::Ram;
use crate::vm::Vm;

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

impl Template {
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
        vm.save_state(&state, Instant::now() + SAVE_TIMEOUT)?;
        vm.kill();
        let size = |path: &Path| fs::metadata(path).map(|m| m.len()).map_err(write_error(path));
        let meta = meta_text(&self.key, size(&ram)?, size(&state)?);
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

/// Removes the templates whose input files changed or are gone, or that an
/// older vmhost made: no configuration can restore them again (a rootfs
/// rebuilt, a kernel upgraded), and each holds tens of MiB.
fn sweep_stale_templates(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let Ok(meta) = fs::read_to_string(entry.path().join("meta")) else { continue };
        if key::is_stale(&meta, |path| key::file_identity(path).ok()) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
