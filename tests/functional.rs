//! What jobs do, end to end: through the real init on this host, on both
//! Python paths, and in VMs under QEMU (TCG here) through the host library.
//! The VM tests need the guest image (`just image`).

// A target's root looks for its modules beside it, not in functional/.
#[path = "functional/files.rs"]
mod files;
#[path = "functional/jobs.rs"]
mod jobs;
#[path = "functional/scripts.rs"]
mod scripts;
#[path = "functional/sessions.rs"]
mod sessions;
#[path = "functional/vm.rs"]
mod vm;
