//! VMs for the tests: the guest image checked, the default snapshot
//! template made once per test process, VMs restored from it or booted
//! cold, and jobs run in them.

use std::path::Path;
use std::time::Duration;

use vmhost::{Job, Outcome, Vm, VmConfig};

use crate::text;

/// The default VM configuration, after checking that the guest image exists.
pub fn vm_config() -> VmConfig {
    let config = VmConfig::default();
    assert!(
        config.kernel.is_file() && config.rootfs.is_file(),
        "no guest image at {} / {}: run `just image`",
        config.kernel.display(),
        config.rootfs.display()
    );
    config
}

/// Makes sure `config`'s snapshot template exists (making it, or waiting
/// while another test process makes it), so that `Vm::boot` restores.
pub fn ensure_template(config: &VmConfig) {
    let accel = match vmhost::accel::resolved(config.accel, &config.cache_dir) {
        Some(accel) => accel,
        None => {
            // The first VM here probes KVM (a cold boot) and remembers.
            Vm::boot(config).expect("probe boot").shutdown();
            vmhost::accel::resolved(config.accel, &config.cache_dir).expect("a verdict after the probe")
        }
    };
    let template = vmhost::template::Template::locate(config, accel).expect("template key");
    for _ in 0..1200 {
        if template.check(config).is_ok() {
            return;
        }
        match template.build(config, accel) {
            Ok(true) => return,
            Ok(false) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("cannot make the template: {}", vmhost::error::chain(&e)),
        }
    }
    panic!("the template was not made within 2 minutes");
}

/// Makes sure the default template exists, once per test process: then
/// every VM (and `vmexec run` without `--cold`) restores.
pub fn template_ready() {
    static TEMPLATE: std::sync::Once = std::sync::Once::new();
    TEMPLATE.call_once(|| ensure_template(&vm_config()));
}

/// The accelerator VMs use here (so that fresh caches need no KVM probe).
pub fn accel() -> vmhost::Accel {
    template_ready();
    let config = vm_config();
    vmhost::accel::resolved(config.accel, &config.cache_dir).expect("a verdict once a VM ran")
}

/// The default configuration with its own, empty cache.
pub fn fresh_config(cache: &Path) -> VmConfig {
    VmConfig { cache_dir: cache.to_owned(), accel: accel(), ..vm_config() }
}

/// A VM restored from the default template (made if need be).
pub fn restored_vm() -> Vm {
    template_ready();
    let config = vm_config();
    let vm = Vm::boot(&config).unwrap_or_else(|e| panic!("restore failed: {e}"));
    assert_eq!(vm.start(), vmhost::Start::Restored, "fallback: {:?}", vm.fallback());
    vm
}

/// A VM that booted its kernel.
pub fn cold_vm() -> Vm {
    let config = VmConfig { cold: true, ..vm_config() };
    let vm = Vm::boot(&config).unwrap_or_else(|e| panic!("boot failed: {e}"));
    assert_eq!(vm.start(), vmhost::Start::Cold);
    vm
}

/// Runs a job in a VM to its end; panics with the job if the VM refuses it.
pub fn run(vm: &mut Vm, job: &Job) -> Outcome {
    vm.agent().run(job, |_, _| {}).unwrap_or_else(|e| panic!("{job:?}: {e}"))
}

/// After a hostile case: the next job is byte-exact and the init's job
/// table is empty.
pub fn still_serving(vm: &mut Vm) {
    let out = run(vm, &Job::python("print('still serving')"));
    assert_eq!(text(&out.stdout), "still serving\n");
    assert_eq!(vm.agent().ping().unwrap().jobs_active, 0);
}
