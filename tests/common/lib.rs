//! What the test groups share: the release init run on this host
//! ([`Init`]), VMs restored from the default template or booted cold, the
//! `vmexec` binary, and the job code several groups run.

mod init;
mod jobs;
pub mod packages;
pub mod service;
mod vm;
mod vmexec;

use std::path::Path;

pub use init::{Init, Mode, Options, Python, ZYGOTE, init_binary, is_root};
pub use jobs::{LEFTOVERS, ZOMBIE_SCAN, double_forks};
pub use vm::{
    accel, cold_vm, ensure_template, fresh_config, restored_vm, run, still_serving, template_ready, vm_config,
};
pub use vmexec::{output_with_stdin, vmexec};

/// Output as text, for assertions and messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The checkout: this crate sits at its top.
fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate is inside the checkout")
}
