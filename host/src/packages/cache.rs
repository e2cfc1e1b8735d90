//! The packages cache, `<cache>/packages/`: `sets/<key>` records what a
//! set of requirements resolved to (so a second run asks no registry),
//! `layers/<address>.erofs` is a resolved set's image and
//! `layers/<address>.txt` its set and preload list. A layer's templates
//! (`<cache>/templates/*`, whose key names the image) belong to it: the
//! bound counts them with it, eviction takes them with it, least recently
//! used first (a layer's use is its `.txt`'s mtime).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::FlockOperation;

use super::error::PackageError;
use super::layer::{Layer, Steps};
use super::resolve::ResolvedSet;

/// The line between a layer's set and its modules in its `.txt`.
const SEPARATOR: &str = "--";

/// A set's lock, held while the set is resolved and made. Its file goes
/// when it is let go, so that sets asked for once (or refused) leave no
/// file behind. A caller that waited on the removed file and one that
/// makes a new one may then both make the set: wasted work, never a torn
/// cache, since every record and image is renamed into place whole.
pub struct SetLock {
    _file: fs::File,
    path: PathBuf,
}

impl Drop for SetLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One cache's packages directory.
pub struct Store {
    root: PathBuf,
    templates: PathBuf,
}

/// A layer in the cache, with its templates.
#[derive(Debug, Clone)]
pub struct Entry {
    pub address: String,
    pub image: PathBuf,
    pub set: ResolvedSet,
    pub modules: Vec<String>,
    /// The image's bytes on disk.
    pub layer_bytes: u64,
    /// The templates made with it, and their bytes on disk.
    pub templates: Vec<(PathBuf, u64)>,
    pub used: SystemTime,
}

impl Entry {
    pub fn bytes(&self) -> u64 {
        self.layer_bytes + self.templates.iter().map(|(_, b)| b).sum::<u64>()
    }
}

impl Store {
    pub fn new(cache_dir: &Path) -> Store {
        Store { root: cache_dir.join("packages"), templates: cache_dir.join("templates") }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn sets(&self) -> PathBuf {
        self.root.join("sets")
    }

    fn layers(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn create(&self) -> std::io::Result<()> {
        fs::create_dir_all(self.sets())?;
        fs::create_dir_all(self.layers())
    }

    /// Holds `key`'s lock (one process makes a set, the others wait for
    /// it and then find it made), waiting at most `wait`.
    pub fn lock(&self, key: &str, wait: Duration) -> Result<SetLock, PackageError> {
        let path = self.root.join(format!("{key}.lock"));
        let file =
            fs::File::create(&path).map_err(|source| PackageError::Io { path: path.clone(), source })?;
        let deadline = Instant::now() + wait;
        loop {
            match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(SetLock { _file: file, path }),
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Err(PackageError::Busy(wait)),
                Err(e) => return Err(PackageError::Io { path, source: e.into() }),
            }
        }
    }

    /// What the requirements of `key` resolved to, if recorded.
    pub fn set(&self, key: &str) -> Option<ResolvedSet> {
        ResolvedSet::from_text(&fs::read_to_string(self.sets().join(key)).ok()?)
    }

    /// Records what `key`'s requirements resolved to (whole, or not at all).
    pub fn record_set(&self, key: &str, set: &ResolvedSet) -> Result<(), PackageError> {
        let path = self.sets().join(key);
        if self.set(key).as_ref() == Some(set) {
            return Ok(());
        }
        write_whole(&path, set.text().as_bytes())
    }

    fn image(&self, address: &str) -> PathBuf {
        self.layers().join(format!("{address}.erofs"))
    }

    fn sidecar(&self, address: &str) -> PathBuf {
        self.layers().join(format!("{address}.txt"))
    }

    /// The layer at `address`, if whole; marks it used.
    pub fn layer(&self, address: &str, set: &ResolvedSet) -> Option<Layer> {
        let image = self.image(address);
        let (recorded, modules) = read_sidecar(&fs::read_to_string(self.sidecar(address)).ok()?)?;
        if &recorded != set || !image.is_file() {
            return None;
        }
        mark_used(&self.sidecar(address));
        Some(Layer { image, address: address.to_owned(), set: recorded, modules, steps: Steps::default() })
    }

    /// Puts a new layer in place: `make` writes the image to a temporary
    /// name, which is renamed to the layer's once whole; then its `.txt`.
    pub fn add_layer(
        &self,
        address: &str,
        set: &ResolvedSet,
        modules: &[String],
        make: impl FnOnce(&Path) -> Result<(), PackageError>,
    ) -> Result<PathBuf, PackageError> {
        let image = self.image(address);
        let building = self.layers().join(format!(".build-{address}-{}.erofs", std::process::id()));
        remove(&building);
        let made = make(&building).and_then(|()| {
            fs::rename(&building, &image).map_err(|source| PackageError::Io { path: image.clone(), source })
        });
        if let Err(e) = made {
            // mkfs.erofs does not always say why a write failed: a full
            // disk (looked at while the half-made image still fills it) is
            // named as one.
            let full = matches!(e, PackageError::Layer { .. }) && self.is_full();
            remove(&building);
            if full {
                let source = std::io::Error::from(rustix::io::Errno::NOSPC);
                return Err(PackageError::Io { path: self.layers(), source });
            }
            return Err(e);
        }
        let text = format!(
            "{}{SEPARATOR}\n{}",
            set.text(),
            modules.iter().map(|m| format!("{m}\n")).collect::<String>()
        );
        if let Err(e) = write_whole(&self.sidecar(address), text.as_bytes()) {
            remove(&image);
            return Err(e);
        }
        Ok(image)
    }

    /// Whether the cache's filesystem has (next to) no room left: less
    /// than a layer's smallest write.
    fn is_full(&self) -> bool {
        rustix::fs::statvfs(self.layers()).is_ok_and(|v| v.f_bavail.saturating_mul(v.f_frsize) < 1 << 16)
    }

    /// Every layer in the cache, least recently used first.
    pub fn list(&self) -> Vec<Entry> {
        let mut all = Vec::new();
        let templates = self.template_keys();
        for entry in fs::read_dir(self.layers()).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(address) = name.strip_suffix(".txt") else { continue };
            let sidecar = entry.path();
            let Some((set, modules)) = fs::read_to_string(&sidecar).ok().and_then(|t| read_sidecar(&t))
            else {
                continue;
            };
            let image = self.image(address);
            let file = format!("{address}.erofs");
            all.push(Entry {
                address: address.to_owned(),
                layer_bytes: disk_bytes(&image),
                templates: templates
                    .iter()
                    .filter(|(_, key)| key.contains(&file))
                    .map(|(dir, _)| (dir.clone(), dir_bytes(dir)))
                    .collect(),
                used: fs::metadata(&sidecar).and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH),
                image,
                set,
                modules,
            });
        }
        all.sort_by(|a, b| a.used.cmp(&b.used).then(a.address.cmp(&b.address)));
        all
    }

    /// Each template directory with its meta's text.
    fn template_keys(&self) -> Vec<(PathBuf, String)> {
        let entries = fs::read_dir(&self.templates).into_iter().flatten().flatten();
        entries.filter_map(|e| Some((e.path(), fs::read_to_string(e.path().join("meta")).ok()?))).collect()
    }

    /// Removes the least recently used layers, with their templates, until
    /// the rest fit in `bound` bytes; never `keep`. What was removed.
    pub fn evict(&self, bound: u64, keep: &str) -> Vec<String> {
        let all = self.list();
        let mut total: u64 = all.iter().map(Entry::bytes).sum();
        let mut removed = Vec::new();
        for entry in all {
            if total <= bound {
                break;
            }
            if entry.address == keep {
                continue;
            }
            total -= entry.bytes();
            remove_entry(&entry);
            removed.push(entry.address);
        }
        removed
    }
}

/// Removes a layer, its templates and its record.
fn remove_entry(entry: &Entry) {
    for (dir, _) in &entry.templates {
        let _ = fs::remove_dir_all(dir);
    }
    // The record first: a layer without it is not found, so nothing
    // attaches an image about to go.
    remove(&entry.image.with_extension("txt"));
    remove(&entry.image);
}

/// Removes every layer, record and template of a layer in `cache_dir`; how
/// many layers there were.
pub fn clear(cache_dir: &Path) -> std::io::Result<usize> {
    let store = Store::new(cache_dir);
    let all = store.list();
    for entry in &all {
        remove_entry(entry);
    }
    match fs::remove_dir_all(&store.root) {
        Ok(()) => Ok(all.len()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(all.len()),
        Err(e) => Err(e),
    }
}

/// A layer's `.txt`: its set, then its modules.
fn read_sidecar(text: &str) -> Option<(ResolvedSet, Vec<String>)> {
    let (set, modules) = text.split_once(&format!("{SEPARATOR}\n"))?;
    Some((ResolvedSet::from_text(set)?, modules.lines().map(str::to_owned).collect()))
}

/// Writes `path` under a temporary name and renames it into place.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let temp = path.with_file_name(format!(
        ".{}.{}",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let written = fs::write(&temp, bytes).and_then(|()| fs::rename(&temp, path));
    written.map_err(|source| {
        remove(&temp);
        PackageError::Io { path: path.to_owned(), source }
    })
}

fn mark_used(path: &Path) {
    if let Ok(file) = fs::File::options().append(true).open(path) {
        let _ = file.set_modified(SystemTime::now());
    }
}

fn disk_bytes(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir).into_iter().flatten().flatten().map(|e| disk_bytes(&e.path())).sum()
}

/// Removes a file, ignoring that it is gone.
fn remove(path: &Path) {
    let _ = fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::resolve::Resolved;

    fn set(name: &str) -> ResolvedSet {
        ResolvedSet(vec![Resolved { name: name.into(), version: "1.0".into(), sha256: "b".repeat(64) }])
    }

    fn add(store: &Store, address: &str, bytes: usize) -> PathBuf {
        store
            .add_layer(address, &set(address), &[address.to_owned()], |out| {
                fs::write(out, vec![1u8; bytes])
                    .map_err(|source| PackageError::Io { path: out.into(), source })
            })
            .unwrap()
    }

    #[test]
    fn a_recorded_set_and_a_layer_are_found_again() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::new(cache.path());
        store.create().unwrap();
        assert_eq!(store.set("k"), None);
        store.record_set("k", &set("six")).unwrap();
        assert_eq!(store.set("k"), Some(set("six")));
        assert!(store.layer("a1", &set("a1")).is_none());
        let image = add(&store, "a1", 10);
        let layer = store.layer("a1", &set("a1")).unwrap();
        assert_eq!((layer.image, layer.modules), (image, vec!["a1".to_owned()]));
        assert!(store.layer("a1", &set("other")).is_none(), "a layer is found only for its own set");
    }

    #[test]
    fn a_set_lock_excludes_and_leaves_no_file() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::new(cache.path());
        store.create().unwrap();
        let held = store.lock("k", Duration::ZERO).unwrap();
        assert!(matches!(store.lock("k", Duration::ZERO), Err(PackageError::Busy(_))));
        drop(held);
        assert!(!store.root().join("k.lock").exists(), "the lock's file goes with it");
        drop(store.lock("k", Duration::ZERO).unwrap());
    }

    #[test]
    fn a_failed_build_leaves_nothing_in_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::new(cache.path());
        store.create().unwrap();
        let failed = store.add_layer("a1", &set("a1"), &[], |out| {
            fs::write(out, b"half").unwrap();
            Err(PackageError::Layer {
                step: "make the erofs image",
                detail: "No space left on device".into(),
            })
        });
        assert!(matches!(failed, Err(PackageError::Layer { .. })));
        let left: Vec<_> = fs::read_dir(store.layers()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(store.layer("a1", &set("a1")).is_none());
    }

    #[test]
    fn eviction_takes_the_least_recently_used_with_their_templates() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::new(cache.path());
        store.create().unwrap();
        for (i, address) in ["old", "mid", "new"].iter().enumerate() {
            add(&store, address, 64 * 1024);
            let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 * (i as u64 + 1));
            fs::File::options()
                .append(true)
                .open(store.sidecar(address))
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        let template = cache.path().join("templates/t1");
        fs::create_dir_all(&template).unwrap();
        fs::write(template.join("meta"), format!("key\nfile={}\n", store.image("old").display())).unwrap();
        fs::write(template.join("ram"), vec![1u8; 64 * 1024]).unwrap();
        let all = store.list();
        assert_eq!(all.iter().map(|e| e.address.as_str()).collect::<Vec<_>>(), ["old", "mid", "new"]);
        assert_eq!(all[0].templates.len(), 1, "the template is counted with its layer");
        assert!(all[0].bytes() > all[1].bytes());
        // Room for two plain layers: the old one (and its template) goes.
        let removed = store.evict(all[1].bytes() + all[2].bytes(), "new");
        assert_eq!(removed, ["old"]);
        assert!(!template.exists() && !store.image("old").exists());
        // Room for none: all but the one kept go.
        assert_eq!(store.evict(0, "new"), ["mid"]);
        assert!(store.layer("new", &set("new")).is_some());
        assert_eq!(clear(cache.path()).unwrap(), 1);
        assert!(!store.root().exists());
    }
}
