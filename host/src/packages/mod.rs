//! Packages without a network: a run names pip requirements, the host
//! resolves and installs them for the guest's interpreter ([`resolve`]),
//! makes the installed tree a read-only erofs layer ([`layer`]) kept in
//! the cache under its address ([`cache`]), and the VM gets it as a second
//! disk (`VmConfig::packages`), which the init mounts at [`layer::MOUNT`]
//! and a `.pth` in the root filesystem puts on `sys.path`. The template of
//! a VM with a layer is its own (the disk is in the template's key), and
//! its zygote has the set's modules imported.
//!
//! ```text
//! specs ─parse─► Requirements ─(sets cache | pip resolve)─► ResolvedSet
//!       ─(layers cache | pip install + compile + mkfs.erofs)─► Layer
//! ```
//!
//! Nothing half-made is ever found in the cache: the tree is built in a
//! temporary directory, the image written under a temporary name and
//! renamed into place, the set's record renamed into place after it.

pub mod cache;
pub mod error;
pub mod layer;
pub mod resolve;
pub mod spec;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use self::error::{Fault, PackageError};
pub use self::layer::{Layer, Steps};
pub use self::resolve::{Resolved, ResolvedSet};
pub use self::spec::{Requirement, Requirements};

/// First line of what a set's key and a layer's address hash; bumped when
/// what a layer holds for a given set changes.
pub const FORMAT: &str = "pid1 packages 1";

/// Hex digits of a key or address: 128 bits, as templates' names.
const ADDRESS_DIGITS: usize = 32;

/// The default bound on the cache's layers and their templates, together.
pub const DEFAULT_CACHE_BOUND: u64 = 4 << 30;

/// How long one caller waits for another making the same set.
const BUILD_WAIT: Duration = Duration::from_secs(600);

/// How sets are resolved and where they are kept.
#[derive(Debug, Clone)]
pub struct PackageOptions {
    /// The cache directory (`VmConfig::cache_dir`): `packages/` in it.
    pub cache_dir: PathBuf,
    /// The Python 3.11 whose pip resolves and installs, and which compiles
    /// the bytecode (`$PID1_PYTHON`, else `python3`).
    pub python: PathBuf,
    /// Use only the cache: never ask a registry.
    pub offline: bool,
    /// Have the template's zygote import the set's modules.
    pub preload: bool,
    /// Bytes the cache's layers and their templates may take together;
    /// the least recently used go first.
    pub cache_bound: u64,
}

impl PackageOptions {
    /// The options for the cache in `cache_dir`: `$PID1_PYTHON` (else
    /// `python3`), and `$PID1_PACKAGES_CACHE_MB` as the bound (else 4 GiB).
    pub fn new(cache_dir: &Path) -> PackageOptions {
        let bound = std::env::var("PID1_PACKAGES_CACHE_MB").ok().and_then(|mb| mb.parse::<u64>().ok());
        PackageOptions {
            cache_dir: cache_dir.to_owned(),
            python: std::env::var_os("PID1_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from),
            offline: false,
            preload: true,
            cache_bound: bound.map_or(DEFAULT_CACHE_BOUND, |mb| mb << 20),
        }
    }
}

/// The layer of `specs`: from the cache, or resolved, installed and made
/// now. `Ok(None)` for no packages.
pub fn prepare<S: AsRef<str>>(specs: &[S], options: &PackageOptions) -> Result<Option<Layer>, PackageError> {
    let requirements = Requirements::parse(specs)?;
    if requirements.is_empty() {
        return Ok(None);
    }
    let store = cache::Store::new(&options.cache_dir);
    store.create().map_err(|source| PackageError::Io { path: store.root().to_owned(), source })?;
    let set_key = hash(&format!("{FORMAT}\nrequirements\n{}", requirements.text()));
    // Offline, a set never recorded cannot be had: said without a lock.
    if options.offline && store.set(&set_key).is_none() {
        return Err(PackageError::Offline { missing: requirements.args() });
    }
    let _lock = store.lock(&set_key, BUILD_WAIT)?;
    let mut steps = Steps::default();
    let set = match store.set(&set_key) {
        Some(set) => {
            steps.set_cached = true;
            set
        }
        None if options.offline => return Err(PackageError::Offline { missing: requirements.args() }),
        None => {
            let started = Instant::now();
            let work = work_dir()?;
            let set = pip(options).resolve(&requirements, work.path())?;
            steps.resolve_ms = ms(started);
            set
        }
    };
    let address = hash(&format!("{FORMAT}\nlayer\npreload {}\n{}", options.preload, set.text()));
    if let Some(layer) = store.layer(&address, &set) {
        store.record_set(&set_key, &set)?;
        return Ok(Some(Layer { steps: Steps { layer_cached: true, ..steps }, ..layer }));
    }
    if options.offline {
        let missing = set.0.iter().map(|r| format!("{}=={}", r.name, r.version)).collect();
        return Err(PackageError::Offline { missing });
    }
    let layer = build(&store, &set, &address, options, &mut steps)?;
    store.record_set(&set_key, &set)?;
    store.evict(options.cache_bound, &address);
    Ok(Some(layer))
}

/// Installs `set`, compiles it, writes its preload list and makes its image.
fn build(
    store: &cache::Store,
    set: &ResolvedSet,
    address: &str,
    options: &PackageOptions,
    steps: &mut Steps,
) -> Result<Layer, PackageError> {
    layer::check_python(&options.python)?;
    let work = work_dir()?;
    let site = work.path().join("site");
    let started = Instant::now();
    pip(options).install(set, &site, work.path())?;
    steps.install_ms = ms(started);
    let started = Instant::now();
    layer::prepare_tree(&options.python, &site)?;
    let modules = layer::write_meta(&site, set, options.preload)?;
    let image = store.add_layer(address, set, &modules, |out| layer::make_image(&site, out, address))?;
    steps.layer_ms = ms(started);
    Ok(Layer { image, address: address.to_owned(), set: set.clone(), modules, steps: *steps })
}

fn pip(options: &PackageOptions) -> resolve::Pip<'_> {
    resolve::Pip { python: &options.python }
}

/// A temporary directory for pip's work and the tree, outside the cache
/// (only finished layers go there).
fn work_dir() -> Result<tempfile::TempDir, PackageError> {
    tempfile::Builder::new()
        .prefix("pid1-packages-")
        .tempdir()
        .map_err(|source| PackageError::Io { path: std::env::temp_dir(), source })
}

/// The first 32 hex digits (128 bits) of `text`'s SHA-256.
pub fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    hex[..ADDRESS_DIGITS].to_owned()
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Whether `path` is a layer image in some cache (its templates are
/// counted with it).
pub fn is_layer(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "erofs")
        && path.parent().is_some_and(|p| p.ends_with("packages/layers"))
}
