//! The template store: where a configuration's template lives, whether it
//! is whole and current, and listing or clearing the cache.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::key;
use crate::accel::Accel;
use crate::config::VmConfig;
use crate::error::{TemplateError, Unusable};

/// One configuration's template, whether it exists yet or not.
pub struct Template {
    /// `<cache>/templates`.
    pub(super) root: PathBuf,
    /// The key's hash: the directory's name.
    pub(super) name: String,
    /// Everything the template depends on, as text.
    pub(super) key: String,
}

impl Template {
    /// The template of VMs started from `config` with `accel`.
    pub fn locate(config: &VmConfig, accel: Accel) -> Result<Template, TemplateError> {
        let key = key::key(config, accel)?;
        Ok(Template { root: config.cache_dir.join("templates"), name: key::name(&key), key })
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
    pub fn check(&self, config: &VmConfig) -> Result<(), Unusable> {
        let Ok(meta) = fs::read_to_string(self.dir().join("meta")) else { return Err(Unusable::Missing) };
        let size = |path: PathBuf| fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        check_meta(&meta, &self.key, size(self.ram()), size(self.state()), u64::from(config.memory_mb) << 20)
    }
}

/// The meta file's text for a template of `key` whose files have these sizes.
pub(crate) fn meta_text(key: &str, ram: u64, state: u64) -> String {
    format!("{key}\n--\nram {ram}\nstate {state}\n")
}

/// Whether `meta` describes a whole template of `key` with files of these
/// sizes, for a guest of `ram_bytes`.
fn check_meta(meta: &str, key: &str, ram: u64, state: u64, ram_bytes: u64) -> Result<(), Unusable> {
    let (made_for, sizes) = meta.split_once("\n--\n").ok_or(Unusable::DamagedMeta)?;
    if made_for != key {
        return Err(Unusable::OtherInputs);
    }
    if sizes != format!("ram {ram}\nstate {state}\n") || ram != ram_bytes || state == 0 {
        return Err(Unusable::Truncated);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_whole_template_of_these_inputs_checks() {
        let meta = meta_text("KEY", 256 * MIB, 4000);
        assert_eq!(check_meta(&meta, "KEY", 256 * MIB, 4000, 256 * MIB), Ok(()));
    }

    #[test]
    fn each_way_a_template_is_unusable_is_named() {
        let meta = meta_text("KEY", 256 * MIB, 4000);
        assert_eq!(check_meta("garbage", "KEY", 1, 1, 1), Err(Unusable::DamagedMeta));
        assert_eq!(check_meta(&meta, "OTHER", 256 * MIB, 4000, 256 * MIB), Err(Unusable::OtherInputs));
        assert_eq!(check_meta(&meta, "KEY", 256 * MIB, 3999, 256 * MIB), Err(Unusable::Truncated));
        assert_eq!(check_meta(&meta, "KEY", 256 * MIB, 4000, 512 * MIB), Err(Unusable::Truncated));
        let empty_state = meta_text("KEY", 256 * MIB, 0);
        assert_eq!(check_meta(&empty_state, "KEY", 256 * MIB, 0, 256 * MIB), Err(Unusable::Truncated));
    }

    #[test]
    fn a_cache_without_templates_lists_none_and_clears_none() {
        let cache = tempfile::tempdir().unwrap();
        let config = VmConfig { cache_dir: cache.path().to_owned(), ..VmConfig::default() };
        assert!(list(&config, Accel::Tcg).unwrap().is_empty());
        assert_eq!(clear(cache.path()).unwrap(), 0);
        fs::create_dir_all(cache.path().join("templates/abc")).unwrap();
        fs::create_dir_all(cache.path().join("templates/.build-abc-1")).unwrap();
        assert_eq!(list(&config, Accel::Tcg).unwrap().len(), 1, "build leftovers are not templates");
        assert_eq!(clear(cache.path()).unwrap(), 1);
        assert!(!cache.path().join("templates").exists());
    }
}
