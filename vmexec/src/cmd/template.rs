//! `vmexec template build|status|clear`: the snapshot templates VMs are
//! restored from, made ahead of time, listed or removed; with them the
//! package layers (`--package`) and their templates.

use std::process::ExitCode;
use std::time::Instant;

use vmhost::jail::Setting;
use vmhost::packages::{self, Fault, Layer, PackageError, PackageOptions};
use vmhost::template::Template;
use vmhost::{Accel, VmConfig};

use crate::args::{TemplateAction, VmArgs};
use crate::failure::{EXIT_FAILURE, EXIT_REFUSED};

/// `vmexec template ...`.
pub fn main(action: TemplateAction) -> ExitCode {
    let mut config = match &action {
        TemplateAction::Build(vm) | TemplateAction::Status(vm) => vm.config(),
        TemplateAction::Clear => VmConfig::default(),
    };
    if let TemplateAction::Build(vm) | TemplateAction::Status(vm) = &action
        && let Err(e) = attach_packages(vm, &mut config)
    {
        eprintln!("vmexec: {}", vmhost::error::chain(&e));
        return ExitCode::from(package_exit_code(&e));
    }
    let config = &config;
    if let TemplateAction::Status(_) = action {
        println!("{}", jail_line(config));
    }
    // Before any VM ran here, KVM's verdict is not known: its template
    // would be the TCG one if the probe fails, as it does where KVM hangs.
    let accel = vmhost::accel::resolved(config.accel, &config.cache_dir).unwrap_or(Accel::Tcg);
    let fail = |what: &str, e: &dyn std::error::Error| {
        eprintln!("vmexec: {what}: {}", vmhost::error::chain(e));
        ExitCode::from(EXIT_FAILURE)
    };
    match action {
        TemplateAction::Build(_) => {
            let template = match Template::locate(config, accel) {
                Ok(template) => template,
                Err(e) => return fail("cannot make the template", &e),
            };
            if template.check(config).is_ok() {
                println!("{} (already made)", template.dir().display());
                return ExitCode::SUCCESS;
            }
            let started = Instant::now();
            match template.build(config, accel) {
                Ok(true) => {
                    println!(
                        "{} (made in {:.1} s)",
                        template.dir().display(),
                        started.elapsed().as_secs_f64()
                    );
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    eprintln!("vmexec: another process is making this template now");
                    ExitCode::from(EXIT_FAILURE)
                }
                Err(e) => fail("cannot make the template", &e),
            }
        }
        TemplateAction::Status(_) => match vmhost::template::list(config, accel) {
            Ok(all) if all.is_empty() => {
                println!("no templates in {}", config.cache_dir.join("templates").display());
                show_layers(config)
            }
            Ok(all) => {
                for t in all {
                    let age = t.created.and_then(|c| c.elapsed().ok()).map_or(0, |a| a.as_secs());
                    println!(
                        "{}  {:.1} MiB on disk, {} MiB guest RAM, made {age} s ago{}",
                        t.dir.display(),
                        t.disk_bytes as f64 / (1 << 20) as f64,
                        t.ram_bytes >> 20,
                        if t.current { "  (used by these settings)" } else { "" }
                    );
                }
                show_layers(config)
            }
            Err(e) => fail("cannot list the templates", &e),
        },
        TemplateAction::Clear => match packages::cache::clear(&config.cache_dir)
            .and_then(|layers| Ok((layers, vmhost::template::clear(&config.cache_dir)?)))
        {
            Ok((layers, n)) => {
                println!("removed {n} template(s) and {layers} package layer(s)");
                ExitCode::SUCCESS
            }
            Err(e) => fail("cannot remove the templates", &e),
        },
    }
}

/// `--package`: the set's layer, made now if the cache does not hold it,
/// attached to `config`; one line on stderr when it was made.
pub fn attach_packages(vm: &VmArgs, config: &mut VmConfig) -> Result<Option<Layer>, PackageError> {
    let options = PackageOptions {
        offline: vm.offline,
        preload: !vm.no_preload,
        ..PackageOptions::new(&config.cache_dir)
    };
    let Some(layer) = packages::prepare(&vm.packages, &options)? else { return Ok(None) };
    let s = layer.steps;
    if !s.layer_cached {
        eprintln!(
            "vmexec: packages {} (resolved in {:.1} s, installed in {:.1} s, layer made in {:.1} s)",
            layer.set,
            s.resolve_ms / 1000.0,
            s.install_ms / 1000.0,
            s.layer_ms / 1000.0
        );
    }
    config.packages = Some(layer.image.clone());
    Ok(Some(layer))
}

/// vmexec's exit code for a set that cannot be had: 2 for a request that
/// is at fault (as a refused job), 1 for the host (no registry, no pip).
pub fn package_exit_code(e: &PackageError) -> u8 {
    match e.fault() {
        Fault::Written | Fault::Index => EXIT_REFUSED,
        Fault::Unavailable | Fault::Host => EXIT_FAILURE,
    }
}

/// The package layers after the templates: set, modules, sizes.
fn show_layers(config: &VmConfig) -> ExitCode {
    let layers = packages::cache::Store::new(&config.cache_dir).list();
    if layers.is_empty() {
        return ExitCode::SUCCESS;
    }
    println!("package layers, least recently used first:");
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    for layer in layers {
        let age = layer.used.elapsed().map_or(0, |a| a.as_secs());
        println!(
            "{}  {:.1} MiB, {} template(s) {:.1} MiB, used {age} s ago{}\n  {}\n  preloaded: {}",
            layer.image.display(),
            mib(layer.layer_bytes),
            layer.templates.len(),
            mib(layer.bytes() - layer.layer_bytes),
            if config.packages.as_ref() == Some(&layer.image) { "  (used by these settings)" } else { "" },
            layer.set,
            if layer.modules.is_empty() { "nothing".to_owned() } else { layer.modules.join(", ") },
        );
    }
    ExitCode::SUCCESS
}

/// Which of the jail's measures confine this configuration's QEMUs here.
fn jail_line(config: &VmConfig) -> String {
    match vmhost::jail::status(&config.jail) {
        Ok(status) => {
            let measures: Vec<String> = status
                .measures()
                .iter()
                .map(|(name, setting)| match setting {
                    Setting::On => format!("{name} on"),
                    Setting::Off(why) => format!("{name} off ({why})"),
                })
                .collect();
            format!("jail: {}", measures.join(", "))
        }
        Err(e) => format!("jail: {}", vmhost::error::chain(&e)),
    }
}
