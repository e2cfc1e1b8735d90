//! `vmexec template build|status|clear`: the snapshot templates VMs are
//! restored from, made ahead of time, listed or removed.

use std::process::ExitCode;
use std::time::Instant;

use vmhost::jail::Setting;
use vmhost::template::Template;
use vmhost::{Accel, VmConfig};

use crate::args::TemplateAction;
use crate::failure::EXIT_FAILURE;

/// `vmexec template ...`.
pub fn main(action: TemplateAction) -> ExitCode {
    let config = match &action {
        TemplateAction::Build(vm) | TemplateAction::Status(vm) => vm.config(),
        TemplateAction::Clear => VmConfig::default(),
    };
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
                ExitCode::SUCCESS
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
                ExitCode::SUCCESS
            }
            Err(e) => fail("cannot list the templates", &e),
        },
        TemplateAction::Clear => match vmhost::template::clear(&config.cache_dir) {
            Ok(n) => {
                println!("removed {n} template(s)");
                ExitCode::SUCCESS
            }
            Err(e) => fail("cannot remove the templates", &e),
        },
    }
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
