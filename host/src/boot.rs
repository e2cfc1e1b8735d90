//! The boot policy, above [`crate::vm`] and [`crate::template`]: restore a
//! VM from its configuration's template (made on first use), or boot cold
//! when there is none to be had, saying why as a [`Fallback`]; and the
//! accelerator probe, which decides once per machine whether KVM works.

use std::fs;
use std::time::Duration;

use crate::accel::{self, Accel};
use crate::config::VmConfig;
use crate::error::{Fallback, StartError, Unusable};
use crate::qemu::Ram;
use crate::template::Template;
use crate::vm::{self, Vm};

/// How long a KVM boot may take before KVM is declared not to work on this
/// machine (where /dev/kvm opens but guests hang).
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

impl Vm {
    /// Starts a VM: restored from this configuration's snapshot template
    /// (made on first use) unless `config.cold`; a cold boot when there is
    /// no template to be had, saying why in [`Vm::fallback`].
    pub fn boot(config: &VmConfig) -> Result<Vm, StartError> {
        vm::check_inputs(config)?;
        let Some(accel) = accel::resolved(config.accel, &config.cache_dir) else {
            // The probe is a cold boot; templates start with the next VM.
            return probe_accel(config);
        };
        if config.cold {
            return Vm::cold(config, accel);
        }
        let fallback = match restore_or_build(config, accel) {
            Ok(vm) => return Ok(vm),
            Err(why) => why,
        };
        let mut vm = Vm::cold(config, accel)?;
        vm.fallback = Some(fallback);
        Ok(vm)
    }
}

/// Boots cold with KVM if it works here (a boot with a short deadline),
/// else with TCG, and remembers which.
fn probe_accel(config: &VmConfig) -> Result<Vm, StartError> {
    match Vm::launch(config, Accel::Kvm, KVM_PROBE_TIMEOUT, Ram::Anonymous) {
        Ok(vm) => {
            accel::remember(&config.cache_dir, Accel::Kvm);
            Ok(vm)
        }
        Err(StartError::NotReady { .. } | StartError::QemuExited { .. } | StartError::Panic { .. }) => {
            accel::remember(&config.cache_dir, Accel::Tcg);
            Vm::cold(config, Accel::Tcg)
        }
        Err(e) => Err(e),
    }
}

/// Restores a VM from `config`'s template, making the template first if
/// there is none; why not, when that cannot be done.
pub fn restore_or_build(config: &VmConfig, accel: Accel) -> Result<Vm, Fallback> {
    let template = Template::locate(config, accel).map_err(Fallback::NoTemplate)?;
    match template.check(config) {
        Ok(()) => {}
        Err(Unusable::Missing) => match template.build(config, accel) {
            Ok(true) => {}
            Ok(false) => return Err(Fallback::Busy),
            Err(e) => return Err(Fallback::Build(e)),
        },
        Err(why) => {
            // Damaged (or made by other inputs under a colliding name): not
            // to be trusted, nor to be rebuilt while this caller waits.
            let _ = fs::remove_dir_all(template.dir());
            return Err(Fallback::Unusable(why));
        }
    }
    Vm::restore(config, accel, &template.ram(), &template.state()).map_err(|e| {
        // A template that does not restore is made again on the next run.
        let _ = fs::remove_dir_all(template.dir());
        Fallback::Restore(e)
    })
}
